"""The installed package: the bundled model, corpus and tasks travel inside the wheel, and
`import gpteval` / `gpteval --help` stay light (no heavy backends imported)."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("onnxruntime", "torchao", "torch_tensorrt", "transformers", "matplotlib", "pandas")


def test_import_and_help_stay_light():
    code = ("import sys, gpteval, gpteval.cli, optimizers\n"
            "from gpteval.cli import build_parser\n"
            "build_parser().format_help()\n"
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_bundled_model_loads_from_an_installed_wheel(tmp_path):
    if not (ROOT / "gpteval" / "data" / "bundled" / "model.safetensors").exists():
        pytest.fail("the bundled model is missing from the source tree")
    wheel_dir = tmp_path / "wheel"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                            "--no-build-isolation", "-q", "-w", str(wheel_dir), str(ROOT)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    wheel = next(wheel_dir.glob("gpteval-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("gpteval/data/bundled/model.safetensors", "gpteval/data/corpus.txt.xz",
                   "gpteval/data/cloze.jsonl", "gpteval/data/default.toml",
                   # fused-decode's kernel is compiled from these at its first use
                   "optimizers/fused_decode.c", "optimizers/fused_prefill.c",
                   "optimizers/fused_math.h"):
        assert needed in names
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    code = ("import gpteval, json; from gpteval.weights import load_model\n"
            "m = load_model('bundled')\n"
            "print(json.dumps([gpteval.__file__, m.trained, m.model.config.n_layer]))")
    # run from an empty directory with only the unpacked wheel on the path
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
                         timeout=120)
    assert out.returncode == 0, out.stderr
    import json

    where, trained, n_layer = json.loads(out.stdout)
    assert where.startswith(str(target)) and trained is True and n_layer >= 1
