"""Config validation: every mistake is one sentence naming the key, the line and the fix."""

from pathlib import Path

import pytest

from gpteval.config import (
    DEFAULT_VARIANTS,
    apply_overrides,
    default_config,
    load_config,
    parse_config,
)
from gpteval.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def _err(text: str) -> str:
    with pytest.raises(UserError) as info:
        parse_config(text, "study.toml")
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_embedded_default_is_configs_default():
    shipped = (ROOT / "configs" / "default.toml").read_text()
    embedded = (ROOT / "gpteval" / "data" / "default.toml").read_text()
    assert shipped == embedded
    assert default_config().variants == DEFAULT_VARIANTS


@pytest.mark.parametrize("name", ["default", "cpu", "gpu", "ci"])
def test_shipped_configs_validate(name):
    path = ROOT / "configs" / f"{name}.toml"
    if not path.exists():
        pytest.fail(f"configs/{name}.toml is missing")
    cfg, _ = load_config(path)
    assert cfg.variants


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="no such config file"):
        load_config(tmp_path / "nope.toml")


def test_toml_syntax_error_names_line():
    msg = _err('name = "x"\nvariants = [\n')
    assert "TOML syntax error" in msg and "line" in msg


def test_unknown_key_did_you_mean_with_line():
    msg = _err('name = "x"\n[latency]\nbatch_size = 2\n')
    assert "unknown key 'latency.batch_size'" in msg
    assert "Did you mean: batch" in msg and "line 3" in msg


def test_wrong_type():
    msg = _err('[latency]\nbatch = "two"\n')
    assert "latency.batch" in msg and "integer" in msg


@pytest.mark.parametrize("text,key", [
    ("[latency]\nmin_repeats = -1\n", "latency.min_repeats"),
    ("[latency]\nbatch = 0\n", "latency.batch"),
    ("[quality]\ncontext = 64\nstride = 128\n", "stride"),
    ("timeout_s = 0\n", "timeout_s"),
])
def test_out_of_range(text, key):
    assert key in _err(text)


def test_empty_variant_list():
    assert "variants is empty" in _err("variants = []\n")


def test_duplicate_variant():
    assert "twice" in _err('variants = ["eager", "eager"]\n')


def test_unknown_device_lists_allowed():
    msg = _err('devices = ["tpu"]\n')
    assert "'cpu'" in msg and "'cuda'" in msg


def test_flags_override_file():
    cfg = parse_config('variants = ["eager"]\n[quality]\ntext = "a.txt"\n')
    cfg = apply_overrides(cfg, variants="bf16, int8-dynamic", device="all", text="b.txt",
                          model="tiny", timeout=5)
    assert cfg.variants == ["bf16", "int8-dynamic"]
    assert cfg.devices == ["cpu", "cuda"]
    assert cfg.quality.text == "b.txt" and cfg.models == ["tiny"] and cfg.timeout_s == 5


@pytest.mark.parametrize("text,batches", [
    ("[latency]\nbatch = 8\n", [8]),
    ("[latency]\nbatch = [1, 8]\n", [1, 8]),
    ("[latency]\nbatch = [8, 1]\n", [8, 1]),  # the first is the primary one, whatever its size
    ("", [1]),
])
def test_batch_is_an_int_or_a_list(text, batches):
    cfg = parse_config(text)
    assert cfg.latency.batches == batches
    assert parse_config(text).model_dump() == cfg.model_dump()  # saved config reloads the same


@pytest.mark.parametrize("value,words", [
    ("[1, 8, 8]", "lists 8 twice; keep one"),
    ("[]", "empty list"),
    ("0", "must be ≥ 1 (got 0)"),
    ("[1, 0]", "lists 0; every batch size must be ≥ 1"),
    ("[1, 2.5]", "lists 2.5, not an integer"),
    ("true", "integer"),
    ('"8"', "integer"),
])
def test_bad_batch_is_one_line_naming_key_and_line(value, words):
    msg = _err(f'name = "x"\n[latency]\nbatch = {value}\n')
    assert msg.startswith("study.toml, line 3: latency.batch: ") and words in msg
