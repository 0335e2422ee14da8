"""Time to first image: run.json's phase record, warm caches on a second run, lazy imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from runtime_fixtures import make_engine_dir, one_torch_thread  # noqa: F401

from pndm.cli import run_cli
from pndm.runtime.phases import Phases

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory):
    return make_engine_dir(tmp_path_factory.mktemp("engine"))


def _sample(engine, out, *extra):
    result = CliRunner().invoke(
        run_cli,
        ["sample", "--engine", str(engine), "--steps", "5", "-n", "2", "--out", str(out), "--no-progress",
         "--threads", "1", *extra],
    )
    assert result.exit_code == 0, result.output
    return json.loads((out / "run.json").read_text())


def test_run_json_phases_and_a_warm_cache_on_the_second_run(engine_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PNDM_CACHE_DIR", str(tmp_path / "cache"))
    first = _sample(engine_dir / "unet.onnx", tmp_path / "a")
    second = _sample(engine_dir / "unet.onnx", tmp_path / "b")
    assert [e["status"] for e in first["cache"]] == ["built"]
    assert [e["status"] for e in second["cache"]] == ["hit"]
    phases = second["phases"]
    assert list(phases) == ["import", "load", "warm_up", "sampling", "writing", "total"]
    assert all(v >= 0 for v in phases.values())
    assert phases["load"] > 0 and phases["warm_up"] > 0 and phases["sampling"] > 0 and phases["writing"] > 0
    assert sum(v for k, v in phases.items() if k != "total") <= phases["total"]
    assert second["batch"] == 2 and second["threads"] == 1  # default batch: all images in one call


def test_phases_record():
    phases = Phases(start=0.0)
    with phases.phase("load"):
        pass
    phases.add("sampling", 1.5)
    phases.add("sampling", 0.5)
    record = phases.to_dict()
    assert record["sampling"] == 2.0 and record["warm_up"] == 0.0 and record["total"] >= record["import"]


HEAVY = ("onnx", "onnxscript", "torchdiffeq", "scipy", "diffusers", "torch._inductor", "sympy")


def test_an_onnx_run_imports_only_what_it_needs(engine_dir, tmp_path):
    """onnxruntime yes; the onnx package, torchdiffeq/scipy (pf only), diffusers and inductor no."""
    code = (
        "import sys, json\n"
        "from pndm.cli import run_cli\n"
        f"run_cli.main(['sample', '--engine', {str(engine_dir / 'unet.onnx')!r}, '--steps', '4', '-n', '1',"
        f" '--out', {str(tmp_path / 'out')!r}, '--no-progress', '--threads', '1', '--format', 'npz'],"
        " standalone_mode=False)\n"
        f"print(json.dumps([m for m in {HEAVY!r} + ('onnxruntime',) if m in sys.modules]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "PNDM_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == ["onnxruntime"]
