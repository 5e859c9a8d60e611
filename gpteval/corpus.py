"""The bundled corpus and its one train / validation / test split.

Text: the Python reference manual's topics (`pydoc_data.topics`, PSF license), English
technical prose that every Python installation carries.  The topics differ between
Python versions, so a fixed snapshot (taken from Python 3.11.7) ships inside the
package as `data/corpus.txt.xz`; `snapshot_text()` shows how it was made.

Split (the only place it is defined): the snapshot is cut by bytes into contiguous
pieces, train = [0, 90 %), validation = [90 %, 95 %), test = [95 %, 100 %), each cut
moved forward to the next newline so no line straddles two splits.
"""

from __future__ import annotations

import hashlib
import lzma
from functools import lru_cache
from importlib import resources

SPLITS = {"train": (0.0, 0.90), "validation": (0.90, 0.95), "test": (0.95, 1.0)}
CORPUS_FILE = "corpus.txt.xz"


def snapshot_text() -> str:
    """The text of pydoc_data.topics as the snapshot stores it (sorted topic order)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k].strip() for k in sorted(topics)) + "\n"


@lru_cache(maxsize=1)
def corpus_text() -> str:
    data = resources.files("gpteval.data").joinpath(CORPUS_FILE).read_bytes()
    return lzma.decompress(data).decode("utf-8")


def _cut(text: str, frac: float) -> int:
    if frac <= 0.0:
        return 0
    if frac >= 1.0:
        return len(text)
    i = int(len(text) * frac)
    j = text.find("\n", i)
    return len(text) if j < 0 else j + 1


def split_text(name: str) -> str:
    """One split of the bundled corpus: 'train', 'validation' or 'test'."""
    if name not in SPLITS:
        raise KeyError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
    lo, hi = SPLITS[name]
    text = corpus_text()
    return text[_cut(text, lo):_cut(text, hi)]


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
