"""The harness contains faults: a variant that raises, kills itself, hangs or produces NaN
is recorded `failed` with its reason while the others complete; Ctrl-C loses nothing and
--resume finishes the run."""

import json
import math
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import plugin_env, study_toml, tiny_checkpoint


def _run(args, env, cwd, timeout=300):
    return subprocess.run([sys.executable, "-m", "gpteval.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def study(tmp_path):
    ck = tiny_checkpoint(tmp_path / "ck")

    def make(variants, **kw):
        path = tmp_path / "study.toml"
        path.write_text(study_toml(ck, variants, **kw))
        return path
    return make


@pytest.mark.slow
def test_faults_are_contained(study, tmp_path):
    cfg = study(["eager", "test-raise", "test-kill", "test-hang", "test-nan", "bf16"], timeout_s=20)
    # a context beyond the model's 128 positions: scored at 128, and recorded so
    cfg.write_text(cfg.read_text().replace("context = 64", "context = 1000"))
    out = tmp_path / "out"
    proc = _run(["run", str(cfg), "--out", str(out), "--quiet"], plugin_env(), tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    by = {r["variant"]: r for r in results["results"]}
    assert by["eager"]["status"] == "ok" and by["bf16"]["status"] == "ok"
    assert by["test-raise"]["status"] == "failed"
    assert "broken on purpose" in by["test-raise"]["reason"]
    assert by["test-kill"]["status"] == "failed" and "SIGKILL" in by["test-kill"]["reason"]
    assert by["test-hang"]["status"] == "failed" and "timed out" in by["test-hang"]["reason"]
    assert by["test-nan"]["status"] == "failed" and "NaN" in by["test-nan"]["reason"]
    assert by["test-nan"]["metrics"] == {}
    # the report is still written, failures and all, and rebuilds byte for byte
    report = (out / "report.md").read_text()
    assert "broken on purpose" in report
    again = _run(["report", str(out / "results.json"), "--out", str(tmp_path / "again")],
                 plugin_env(), tmp_path)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again" / "report.md").read_text() == report
    # eager's numbers are complete and traceable to raw samples
    m = by["eager"]["metrics"]
    assert m["top1_agree"] == 1.0 and m["kl_mean"] == pytest.approx(0.0, abs=1e-6)
    assert len(by["eager"]["samples"]["tpot_ms"]) >= 2
    assert m["ppl"] > 1.0 and results["env"]["ceilings"]["cpu"]["memory_bandwidth_gbs"] > 0
    # bits per byte over the bytes scored: max_tokens 512 byte tokens, the first unscored
    qp = by["eager"]["quality_protocol"]
    assert (qp["context"], qp["stride"], qp["n_tokens"], qp["n_bytes"]) == (128, 32, 512, 512)
    assert m["bpb"] == pytest.approx(math.log2(m["ppl"]) * 511 / 512, rel=1e-9)


@pytest.mark.slow
def test_interrupt_then_resume(study, tmp_path):
    cfg = study(["eager", "test-slow", "bf16"])
    out = tmp_path / "out"
    env = plugin_env(GPTEVAL_TEST_SLOW_S="60")
    proc = subprocess.Popen([sys.executable, "-m", "gpteval.cli", "run", str(cfg), "--out",
                             str(out), "--quiet"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results_path = out / "results.json"
    deadline = time.time() + 120
    # wait until eager is finished and test-slow is running
    while time.time() < deadline:
        if results_path.exists():
            data = json.loads(results_path.read_text())
            if len(data["results"]) == 1:
                break
        time.sleep(0.2)
    time.sleep(2.0)
    proc.send_signal(signal.SIGINT)
    _stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    data = json.loads(results_path.read_text())
    assert data["run"]["interrupted"] is True
    assert [r["variant"] for r in data["results"]] == ["eager"]
    assert (out / "report.md").exists()

    env = plugin_env(GPTEVAL_TEST_SLOW_S="0")
    done = _run(["run", str(cfg), "--out", str(out), "--quiet", "--resume"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    data = json.loads(results_path.read_text())
    assert [r["variant"] for r in data["results"]] == ["eager", "test-slow", "bf16"]
    assert all(r["status"] == "ok" for r in data["results"])
    assert data["run"]["interrupted"] is False
    assert "bf16" in (out / "report.md").read_text()


def test_resume_refuses_a_different_config(study, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text(json.dumps(
        {"schema_version": 1, "run": {"config": {"name": "other"}}, "env": {}, "results": []}))
    cfg = study(["eager"])
    proc = _run(["run", str(cfg), "--out", str(out), "--resume"], plugin_env(), tmp_path)
    assert proc.returncode == 2
    assert "different config" in proc.stderr and "Traceback" not in proc.stderr


def test_resume_refuses_a_directory_without_a_run(study, tmp_path):
    cfg = study(["eager"])
    proc = _run(["run", str(cfg), "--out", str(tmp_path / "empty"), "--resume"], plugin_env(),
                tmp_path)
    assert proc.returncode == 2 and "holds no gpteval run" in proc.stderr


def test_results_json_write_is_atomic(tmp_path, monkeypatch):
    from gpteval.worker import write_json_atomic

    path = tmp_path / "results.json"
    write_json_atomic(path, {"a": 1})

    class Boom(Exception):
        pass

    def broken_write(f, data):
        f.write(data[:5])  # half a file, then the crash
        raise Boom()

    import gpteval.report.results as rr

    real_fdopen = rr.os.fdopen

    class HalfFile:
        def __init__(self, *a, **k):
            self.f = real_fdopen(*a, **k)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            broken_write(self.f, data)

    monkeypatch.setattr(rr.os, "fdopen", HalfFile)
    with pytest.raises(Boom):
        write_json_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1}
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_a_run_that_measured_nothing_fails(study, tmp_path):
    """Every variant failed: the report still says why, and the exit code tells a CI job."""
    out = tmp_path / "out"
    proc = _run(["run", str(study(["test-raise"])), "--out", str(out), "--quiet"], plugin_env(),
                tmp_path)
    assert proc.returncode == 1
    assert "no variant was measured" in proc.stderr and "Traceback" not in proc.stderr
    assert "broken on purpose" in (out / "report.md").read_text()
