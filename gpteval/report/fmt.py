"""Number and config formatting shared by the Markdown report, the terminal table and the gate.

Every function is a pure mapping from value to text, so a report rendered twice from the
same results.json is byte-for-byte the same.
"""

from __future__ import annotations

import json
import math
import re

DASH = "—"


def num(value, digits: int = 2) -> str:
    """A float with `digits` decimals, thousands grouped; '—' for None / NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def sig(value, figures: int = 4) -> str:
    """A float with `figures` significant figures (for values spanning many magnitudes: KL)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    return f"{value:.{figures}g}"


def pct(value, digits: int = 1, signed: bool = True) -> str:
    """'+5.1 %' (signed) or '5.1 %'; '—' for None."""
    if value is None:
        return DASH
    return f"{value:+.{digits}f} %" if signed else f"{value:.{digits}f} %"


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell (no pipes, no newlines)."""
    return str(text).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def md_table(header: list[str], rows: list[list[str]], align: str | None = None) -> str:
    """A GitHub Markdown table; `align` is one of 'l'/'r' per column (default: first left, rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(key) -> str:
    key = str(key)
    return key if _BARE_KEY.match(key) else json.dumps(key, ensure_ascii=False)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value if v is not None) + "]"
    if isinstance(value, dict):
        items = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items() if v is not None]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    return json.dumps(str(value), ensure_ascii=False)


def _is_table_array(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def to_toml(data: dict, _prefix: str = "") -> str:
    """TOML text for a config dict (keys in the order given).  TOML has no null: a None value is
    written as a comment `# key = (unset)` so the reader still sees the key."""
    scalars, tables = [], []
    for k, v in data.items():
        if isinstance(v, dict) or _is_table_array(v):
            tables.append((k, v))
        elif v is None:
            scalars.append(f"# {_toml_key(k)} = (unset)")
        else:
            scalars.append(f"{_toml_key(k)} = {_toml_value(v)}")
    blocks = ["\n".join(scalars)] if scalars else []
    for k, v in tables:
        name = f"{_prefix}.{_toml_key(k)}" if _prefix else _toml_key(k)
        if isinstance(v, dict):
            body = to_toml(v, name)
            blocks.append(f"[{name}]" + ("\n" + body if body else ""))
        else:
            for item in v:
                body = to_toml(item, name)
                blocks.append(f"[[{name}]]" + ("\n" + body if body else ""))
    return "\n\n".join(b.rstrip("\n") for b in blocks)
