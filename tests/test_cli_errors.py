"""Every mistake a user can make at the command line: one line naming the problem and the
fix, exit code 2, no traceback.  Run in-process (fast); one subprocess test checks the
real entry point."""

import json
import subprocess
import sys

import pytest

from gpteval.cli import main
from tests.helpers import study_toml, tiny_checkpoint


@pytest.fixture
def ck(tmp_path):
    return tiny_checkpoint(tmp_path / "ck")


def _fails(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


def _run_args(tmp_path, ck, variants=("eager",), **kw):
    cfg = tmp_path / "s.toml"
    cfg.write_text(study_toml(ck, list(variants), **kw))
    return ["run", str(cfg), "--out", str(tmp_path / "out"), "--quiet"]


@pytest.mark.parametrize("variants,needle", [
    ("eagr", "Did you mean: eager"),
    ("int8-dynamc", "Did you mean: int8-dynamic"),
    ("prune-magnitude:1.5", "between 0"),
    ("int4-weight-only:abc", "int4-weight-only:abc"),
    ("ort-int8", "put 'onnx' before it"),
    ("onnx+int8-dynamic", "cannot follow"),
    ("int8-dynamic+onnx", "quantize after the export instead, e.g. 'onnx+ort-int8'"),
    ("int8-weight-only+prune-2to4+onnx+ort-int4", "'int8-weight-only' before it quantizes"),
    ("int8-dynamic+fused-decode", "leave the quantizer out"),
    ("fused-decode+compile", "takes no further passes"),
    ("onnx+int8-dynamic", "quantize the exported model with 'onnx+ort-int8'"),
    ("eager,eager", "twice"),
    ("bf16+bf16", "twice"),
])
def test_bad_variants(capsys, tmp_path, ck, variants, needle):
    msg = _fails(capsys, _run_args(tmp_path, ck) + ["--variants", variants])
    assert needle in msg


def test_missing_config(capsys, tmp_path):
    assert "no such config file" in _fails(capsys, ["run", str(tmp_path / "x.toml")])


def test_bad_flag_value(capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", "--device", "tpu"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'tpu'" in err and len(err.strip().splitlines()) == 1


def test_cuda_without_gpu(capsys, tmp_path, ck):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the no-GPU error cannot happen here")
    msg = _fails(capsys, _run_args(tmp_path, ck) + ["--device", "cuda"])
    assert "no GPU" in msg and "--device cpu" in msg


def test_missing_model_dir(capsys, tmp_path, ck):
    msg = _fails(capsys, _run_args(tmp_path, ck) + ["--model", str(tmp_path / "none")])
    assert "no such model directory" in msg


def test_missing_text(capsys, tmp_path, ck):
    msg = _fails(capsys, _run_args(tmp_path, ck) + ["--text", str(tmp_path / "none.txt")])
    assert "evaluation text not found" in msg


def test_empty_text(capsys, tmp_path, ck):
    (tmp_path / "e.txt").write_text("  \n")
    assert "is empty" in _fails(capsys, _run_args(tmp_path, ck) + ["--text", str(tmp_path / "e.txt")])


def test_text_shorter_than_one_window(capsys, tmp_path, ck):
    (tmp_path / "short.txt").write_text("only a few words")
    msg = _fails(capsys, _run_args(tmp_path, ck) + ["--text", str(tmp_path / "short.txt")])
    assert "fewer than" in msg and "window" in msg


def test_text_not_utf8_names_offset(capsys, tmp_path, ck):
    (tmp_path / "bad.txt").write_bytes(b"hello world " * 20 + b"\xff\xfe tail")
    msg = _fails(capsys, _run_args(tmp_path, ck) + ["--text", str(tmp_path / "bad.txt")])
    assert "byte offset 240" in msg


def test_task_with_bad_line(capsys, tmp_path, ck):
    tasks = tmp_path / "t.jsonl"
    tasks.write_text('{"text": "a b c"}\n{not json}\n')
    msg = _fails(capsys, _run_args(tmp_path, ck) + ["--tasks", str(tasks)])
    assert "t.jsonl" in msg and "line 2" in msg


def test_task_label_out_of_range(capsys, tmp_path, ck):
    tasks = tmp_path / "mc.jsonl"
    tasks.write_text(json.dumps({"context": "x", "choices": ["a", "b"], "label": 5}) + "\n")
    msg = _fails(capsys, _run_args(tmp_path, ck) + ["--tasks", str(tasks)])
    assert "mc.jsonl" in msg and "label" in msg


def test_output_dir_not_writable(capsys, tmp_path, ck):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    args = _run_args(tmp_path, ck)
    args[args.index("--out") + 1] = str(blocker / "sub")
    assert "cannot write" in _fails(capsys, args)


def test_prompt_longer_than_model(capsys, tmp_path, ck):
    cfg = tmp_path / "s.toml"
    cfg.write_text(study_toml(ck, ["eager"]).replace("prompt_len = 16", "prompt_len = 125"))
    msg = _fails(capsys, ["run", str(cfg), "--out", str(tmp_path / "o")])
    assert "prompt_len" in msg


def test_compare_missing_file(capsys, tmp_path):
    msg = _fails(capsys, ["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    assert "a.json" in msg


def test_entry_point_prints_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "gpteval.cli", "run", "--variants", "eagr",
                           "--out", str(tmp_path / "o")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("gpteval: error:") and "Traceback" not in proc.stderr


def test_passes_prints_its_table_without_library_noise():
    """torchao's import logs each native library it cannot load and makes torch warn about
    an Enum: `gpteval passes` imports it quietly (optimizers/quantize.py).  A fresh process,
    since the noise comes only with the first import."""
    proc = subprocess.run([sys.executable, "-m", "gpteval.cli", "passes"], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0 and "fused-decode" in proc.stdout
    assert "Failed to load" not in proc.stderr and "register_constant" not in proc.stderr


# ---- output paths checked before the work, and where `report` writes ------------------------
def _results_file(tmp_path, name="r.json"):
    from tests.test_report_fixtures import make_results

    path = tmp_path / name
    path.write_text(json.dumps(make_results()))
    return path


def _blocked(tmp_path):
    """A path under a regular file: no directory can be made there."""
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    return blocker / "sub"


def test_compare_out_not_writable_is_not_a_regression(capsys, tmp_path):
    r = _results_file(tmp_path)
    msg = _fails(capsys, ["compare", str(r), str(r), "--out", str(_blocked(tmp_path) / "c.md")])
    assert "cannot write the comparison" in msg and "--out" in msg


def test_report_out_not_writable(capsys, tmp_path):
    msg = _fails(capsys, ["report", str(_results_file(tmp_path)), "--out", str(_blocked(tmp_path))])
    assert "cannot write the report" in msg


def test_report_of_a_run_directory_writes_into_it(capsys, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    _results_file(run, "results.json")
    assert main(["report", str(run)]) == 0
    assert (run / "report.md").is_file() and not (tmp_path / "report.md").exists()
    assert capsys.readouterr().out.strip() == f"report: {run / 'report.md'}"
    # shared files keep the user's umask (mkstemp alone makes them 0600)
    assert (run / "report.md").stat().st_mode & 0o044 == 0o044


def test_train_checks_its_output_before_training(capsys, tmp_path):
    assert "cannot write the checkpoint" in _fails(capsys, ["train", "--out", str(_blocked(tmp_path)),
                                                            "--steps", "1"])


@pytest.mark.parametrize("argv", [["train", "--out", "t", "--steps", "0"],
                                  ["train", "--out", "t", "--threads", "-1"],
                                  ["run", "--rounds", "0"]])
def test_counts_below_one_are_refused_by_the_flag(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and "must be at least 1" in err and len(err.splitlines()) == 1


def test_config_that_is_a_directory(capsys, tmp_path):
    assert "is a directory" in _fails(capsys, ["run", str(tmp_path)])


def test_tensorboard_missing_is_said_before_the_run(capsys, tmp_path, ck, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    args = _run_args(tmp_path, ck) + ["--tensorboard", str(tmp_path / "tb")]
    assert "pip install tensorboard" in _fails(capsys, args)
    assert not (tmp_path / "out" / "results.json").exists()


def test_skip_reasons_keep_their_brackets_on_the_console():
    import io

    from rich.console import Console

    from gpteval.progress import RunProgress

    buf = io.StringIO()
    progress = RunProgress(Console(file=buf, width=200))
    progress.start(1, 0)
    progress.end("bundled · onnx · cpu", {"status": "skipped",
                                          "reason": "onnx is not installed (pip install 'gpteval[onnx]')"})
    progress.stop()
    assert "pip install 'gpteval[onnx]'" in buf.getvalue()
