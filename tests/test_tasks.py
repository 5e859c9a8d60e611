"""Task files: both formats load, each user mistake names the file, the line and the fix, and
the bundled cloze task is exactly what make_cloze builds from the test split."""

import json
import re

import pytest

from gpteval.corpus import split_text
from gpteval.errors import UserError
from gpteval.tasks import (
    CLOZE_CONTEXT_CHARS,
    CLOZE_ITEMS,
    bundled_cloze_items,
    bundled_cloze_path,
    dumps_jsonl,
    load_tasks,
    make_cloze,
)


def write(tmp_path, lines, name="task.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_loads_cloze_and_skips_blank_lines(tmp_path):
    path = write(tmp_path, ['{"text": "the cat sat"}', "", '{"text": "a b", "id": 3}'])
    assert load_tasks(path) == ("cloze", [{"text": "the cat sat"}, {"text": "a b"}])


def test_loads_multiple_choice(tmp_path):
    item = {"context": "2 + 2 =", "choices": ["4", "5", "22"], "label": 0}
    assert load_tasks(write(tmp_path, [json.dumps(item)])) == ("mc", [item])


@pytest.mark.parametrize("lines,line_no,fix", [
    (['{"text": "a b"}', '{"text": "a b"'], 2, "one JSON object per line"),
    (['{"context": "c", "choices": ["x", "y"]}'], 1, "missing key 'label'"),
    (['{"context": "c", "choices": ["x", "y"], "label": 0}', "",
      '{"context": "c", "choices": ["x", "y"], "label": 2}'], 3, "from 0 to 1"),
    (['{"context": "c", "choices": ["x", "y"], "label": -1}'], 1, "out of range"),
    (['{"context": "c", "choices": ["x", "y"], "label": true}'], 1, "integer index"),
    (['{"context": "c", "choices": ["x"], "label": 0}'], 1, "at least two"),
    (['{"text": "a b"}', '{"context": "c", "choices": ["x", "y"], "label": 0}'], 2,
     "missing key 'text'"),
    (['{"text": "single"}'], 1, "at least two words"),
    (['[1, 2]'], 1, "expected a JSON object"),
])
def test_user_mistakes_name_file_and_line(tmp_path, lines, line_no, fix):
    path = write(tmp_path, lines)
    with pytest.raises(UserError) as err:
        load_tasks(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}, line {line_no}: "), msg
    assert fix in msg
    assert "\n" not in msg


def test_empty_and_missing_files(tmp_path):
    empty = write(tmp_path, ["", "  "])
    with pytest.raises(UserError, match=re.escape(f"{empty}: the task file is empty")):
        load_tasks(empty)
    with pytest.raises(UserError, match="no such task file"):
        load_tasks(tmp_path / "nope.jsonl")


def test_make_cloze_is_lambada_shaped():
    text = ("Alpha beta gamma delta.  The model reads every word\n"
            "and then predicts the last one of each line.\n")
    items = make_cloze(text, n=2, context_chars=30)
    # candidates: 'delta' (sentence end), 'word' (line end), 'line' (sentence end)
    assert items == [{"text": "Alpha beta gamma delta"},
                     {"text": "the last one of each line"}]  # 30 chars end mid-word


def test_bundled_cloze_file_is_what_make_cloze_generates():
    expected = dumps_jsonl(make_cloze(split_text("test")))
    assert bundled_cloze_path().read_text(encoding="utf-8") == expected
    items = bundled_cloze_items()
    assert len(items) == CLOZE_ITEMS
    for item in items:
        assert re.search(r" [A-Za-z]{4,}\Z", item["text"]), item
        assert len(item["text"]) <= CLOZE_CONTEXT_CHARS
    assert len({item["text"] for item in items}) == CLOZE_ITEMS
