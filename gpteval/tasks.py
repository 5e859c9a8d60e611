"""Evaluation tasks from local JSONL files, and the bundled cloze task.

Two formats, one JSON object per line (blank lines are skipped):
- cloze (LAMBADA): {"text": "... context ... last"}; the model must produce the last word.
- multiple choice: {"context": "...", "choices": ["...", "..."], "label": 0}; label is the
  0-based index of the right choice.
The kind is read from the first item; every item must then have that kind.

The bundled cloze task, data/cloze.jsonl, is made from the bundled corpus's test split
by `make_cloze`; regenerate it with `python -m gpteval.tasks`.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

from .errors import UserError

CLOZE_FILE = "cloze.jsonl"
CLOZE_ITEMS = 80
CLOZE_CONTEXT_CHARS = 200

_MC_KEYS = ("context", "choices", "label")


def load_tasks(path: str | Path) -> tuple[str, list[dict]]:
    """('cloze' | 'mc', items) from a JSONL file, validated; a mistake in the file raises
    UserError naming the file, the line and the fix."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"{p}: no such task file; check the path in the config") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: cannot read the task file ({e}); save it as UTF-8 text") from None
    kind = None
    items = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{p}, line {lineno}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: not valid JSON ({e.msg}); write one JSON object per "
                            "line") from None
        if not isinstance(item, dict):
            raise UserError(f"{where}: expected a JSON object, got {type(item).__name__}; "
                            'write {"text": ...} or {"context": ..., "choices": ..., '
                            '"label": ...}')
        if kind is None:
            kind = "cloze" if "text" in item else "mc"
        items.append(_check_cloze(item, where) if kind == "cloze" else _check_mc(item, where))
    if not items:
        raise UserError(f"{p}: the task file is empty; add one JSON object per line")
    return kind, items



def _check_cloze(item: dict, where: str) -> dict:
    if "text" not in item:
        raise UserError(f"{where}: missing key 'text'; the file's first item is a cloze item, "
                        'so every item needs "text" (one kind of task per file)')
    text = item["text"]
    if not isinstance(text, str) or len(text.split()) < 2:
        raise UserError(f"{where}: \"text\" must be a string of at least two words (a context "
                        "and the last word to predict); fix the item")
    return {"text": text}


def _check_mc(item: dict, where: str) -> dict:
    missing = [k for k in _MC_KEYS if k not in item]
    if missing:
        raise UserError(f"{where}: missing key {missing[0]!r}; a multiple-choice item needs "
                        '"context", "choices" and "label" (one kind of task per file)')
    context, choices, label = item["context"], item["choices"], item["label"]
    if not isinstance(context, str) or not context:
        raise UserError(f'{where}: "context" must be a non-empty string; fix the item')
    if (not isinstance(choices, list) or len(choices) < 2
            or not all(isinstance(c, str) and c for c in choices)):
        raise UserError(f'{where}: "choices" must be a list of at least two non-empty strings;'
                        " fix the item")
    if not isinstance(label, int) or isinstance(label, bool):
        raise UserError(f'{where}: "label" must be an integer index into "choices", got '
                        f"{label!r}; fix the item")
    if not 0 <= label < len(choices):
        raise UserError(f"{where}: label {label} is out of range for {len(choices)} choices; "
                        f"use an index from 0 to {len(choices) - 1}")
    return {"context": context, "choices": list(choices), "label": label}


# ---- the bundled cloze task ---------------------------------------------------------------
# a word of 4+ ASCII letters after a space (not at a line start), that ends a line or a
# sentence: the LAMBADA shape, a passage whose last word is to be predicted
_TARGET = re.compile(r"(?<= )([A-Za-z]{4,})(?=\.?(?:\n|\Z)|\.\s)")
_SPACE = re.compile(r"\s")


def make_cloze(text: str, n: int = CLOZE_ITEMS,
               context_chars: int = CLOZE_CONTEXT_CHARS) -> list[dict]:
    """n cloze items from `text`, deterministically.  A candidate is a word that `_TARGET`
    matches; its item is the text ending in that word (no trailing period), starting at the
    first word that begins within `context_chars` characters before the word's end.  Items
    whose text repeats an earlier one are dropped (the manual repeats some paragraphs), and
    n of the rest are taken evenly spaced through the text."""
    texts: list[str] = []
    for m in _TARGET.finditer(text):
        start = max(0, m.end() - context_chars)
        if start > 0 and not text[start - 1].isspace():
            nxt = _SPACE.search(text, start)
            start = nxt.end() if nxt is not None else start
        item = text[start:m.end()].lstrip()
        if len(item.split()) >= 2 and item not in texts:
            texts.append(item)
    if len(texts) < n:
        raise ValueError(f"only {len(texts)} cloze items in the text, {n} asked for")
    picks = [round(i * (len(texts) - 1) / max(n - 1, 1)) for i in range(n)]
    return [{"text": texts[i]} for i in picks]


def dumps_jsonl(items: list[dict]) -> str:
    """One JSON object per line, keys in order, non-ASCII kept as is; ends with a newline."""
    return "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items)


def bundled_cloze_path() -> Path:
    return Path(str(resources.files("gpteval.data").joinpath(CLOZE_FILE)))


def bundled_cloze_items() -> list[dict]:
    """The bundled cloze task (data/cloze.jsonl), made from the corpus's test split."""
    return load_tasks(bundled_cloze_path())[1]


def write_bundled_cloze() -> Path:
    """Regenerate data/cloze.jsonl from the bundled test split."""
    from .corpus import split_text

    path = bundled_cloze_path()
    path.write_text(dumps_jsonl(make_cloze(split_text("test"))), encoding="utf-8")
    return path


if __name__ == "__main__":
    write_bundled_cloze()
