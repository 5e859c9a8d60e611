"""Evaluation text and task files: resolved from config strings, validated, tokenized.

`bundled:test` (or `bundled:validation`) names a split of the bundled corpus; anything
else is a path to a UTF-8 text file.  Tasks are `bundled:cloze` or JSONL files.
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import corpus
from .errors import UserError

BUNDLED_PREFIX = "bundled:"


def read_text(spec: str) -> str:
    """The evaluation text a config names; errors say which file and what is wrong."""
    if spec.startswith(BUNDLED_PREFIX):
        split = spec[len(BUNDLED_PREFIX):]
        if split not in corpus.SPLITS:
            raise UserError(f"unknown bundled text '{spec}'; use one of "
                            + ", ".join(BUNDLED_PREFIX + s for s in corpus.SPLITS))
        return corpus.split_text(split)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise UserError(f"{path}: evaluation text not found; pass an existing UTF-8 text file "
                        "with --text (or quality.text in the config)")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not valid UTF-8 at byte offset {e.start}; re-save the file as "
                        "UTF-8") from None
    if not text.strip():
        raise UserError(f"{path}: the evaluation text is empty; give a file with text in it")
    return text


def eval_ids(spec: str, tokenizer) -> tuple[torch.Tensor, int, str]:
    """(token ids, UTF-8 byte count, sha256) of the evaluation text."""
    text = read_text(spec)
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    return ids, len(text.encode("utf-8")), corpus.text_sha256(text)


def check_text_length(spec: str, n_tokens: int, needed: int, what: str) -> None:
    if n_tokens < needed:
        raise UserError(f"{spec}: the evaluation text has {n_tokens} tokens, fewer than the "
                        f"{needed} that {what} needs; give a longer text or lower that setting")


def load_task_items(specs: list[str]) -> dict[str, tuple[str, list[dict]]]:
    """{task name: (kind, items)} for each task spec ('bundled:cloze' or a JSONL path)."""
    from . import tasks

    out: dict[str, tuple[str, list[dict]]] = {}
    for spec in specs:
        if spec == "bundled:cloze":
            out["cloze"] = ("cloze", tasks.bundled_cloze_items())
            continue
        if spec.startswith(BUNDLED_PREFIX):
            raise UserError(f"unknown bundled task '{spec}'; the bundled task is 'bundled:cloze'")
        path = Path(spec).expanduser()
        kind, items = tasks.load_tasks(path)
        name = "".join(ch if ch.isalnum() else "_" for ch in path.stem)
        out[name] = (kind, items)
    return out
