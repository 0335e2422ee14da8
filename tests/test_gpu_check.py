"""``make gpu-check`` on a machine without a CUDA device: one clear line, exit 0, a JSON saying so."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from bench_scripts import load_bench_script


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_stops_cleanly_without_a_cuda_device(tmp_path, capsys):
    assert load_bench_script("gpu_check").main(["--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("gpu-check: no CUDA device")
    assert json.loads((tmp_path / "gpu_check.json").read_text())["skipped"] == "no CUDA device"


def test_markdown_table_compares_with_diffusers_fp32():
    rows = [
        {"runner": "diffusers PNDMPipeline fp32 eager", "batch": 64, "nfe": 29, "median_s": 2.0, "min_s": 1.9,
         "max_s": 2.1, "images_per_s": 32.0, "tflops": 11.5},
        {"runner": "pndm .pt2 fp16, whole-loop CUDA graph", "batch": 64, "nfe": 29, "median_s": 0.5,
         "min_s": 0.5, "max_s": 0.6, "images_per_s": 128.0, "tflops": 46.2},
    ]
    found = {"cuda": "GPU", "torch": "2", "torch_cuda": "13", "tensorrt": False, "onnxruntime_cuda": False}
    commands = [
        {"runner": "diffusers PNDMPipeline script, fp32 eager", "batch": 4, "nfe": 29, "median_s": 3.0,
         "min_s": 2.9, "max_s": 3.1, "images_per_s": 1.3, "cold_s": 4.0, "phases": {"import": 2.0}},
        {"runner": "pndm-run sample, .pt2 fp16 + whole-loop CUDA graph", "batch": 4, "nfe": 29,
         "median_s": 1.5,
         "min_s": 1.4, "max_s": 1.6, "images_per_s": 2.7, "cold_s": 9.0, "phases": {"import": 0.5}},
    ]
    table = load_bench_script("gpu_check").markdown(found, {"returncode": 0}, rows, commands)
    loop_part, command_part = table.split("Whole commands")
    assert "| pndm .pt2 fp16, whole-loop CUDA graph | 64 | 29 | 0.500 |" in loop_part
    assert loop_part.rstrip().endswith("| 4.00x |")
    assert "| pndm-run sample, .pt2 fp16 + whole-loop CUDA graph | 4 | 29 | 1.500 |" in command_part
    assert "| 2.00x |" in command_part and "cold 9.00 s; phases (s): import 0.50" in command_part


def test_a_failed_command_is_a_row_that_says_so(monkeypatch, tmp_path):
    """A whole command that crashes is reported in its row and not run again; the others are timed."""
    gpu_check = load_bench_script("gpu_check")
    calls = []

    def fake_run_once(argv, folder, env):
        calls.append(argv[0])
        if argv[0].endswith("pndm-run"):
            raise RuntimeError("['pndm-run', 'sample'] failed: Segmentation fault")
        return {"wall": 2.0, "phases": {"import": 1.0}, "cache": []}

    monkeypatch.setattr(gpu_check, "run_once", fake_run_once)
    args = SimpleNamespace(steps=20, command_images="4", rounds=2)
    after_rounds = []
    rows = gpu_check.command_timings(args, tmp_path / "unet.fp16.cuda.pt2", tmp_path / "unet", tmp_path, {},
                                     after_rounds.append)
    assert sum(c.endswith("pndm-run") for c in calls) == 1 and len(calls) == 1 + 2 * 3
    # after the cold round only the failure has a row; each timed round after it reports all three
    assert [len(r) for r in after_rounds] == [1, 3, 3] and after_rounds[-1] == rows
    (failed,) = [r for r in rows if "error" in r]
    assert failed["error"] == "['pndm-run', 'sample'] failed: Segmentation fault"
    found = {"cuda": "GPU", "torch": "2", "torch_cuda": "13", "tensorrt": False, "onnxruntime_cuda": False}
    table = gpu_check.markdown(found, {}, [], rows)
    assert "| 4 | 29 | failed: ['pndm-run', 'sample'] failed: Segmentation fault |" in table
    assert "| diffusers PNDMPipeline script, fp16 eager | 4 | 29 | 2.000 |" in table


def test_reuse_engines_keeps_a_built_package(tmp_path, monkeypatch):
    gpu_check = load_bench_script("gpu_check")
    folder = tmp_path / "engines-fp16"
    folder.mkdir()
    (folder / "unet.fp16.cuda.pt2").write_bytes(b"package")
    (folder / "manifest.json").write_text("{}")
    monkeypatch.setattr(gpu_check.subprocess, "run", lambda *a, **k: pytest.fail("exported again"))
    engines = gpu_check.build_engines(tmp_path, ["fp16"], 64, {}, reuse=True)
    assert engines == {"fp16": folder / "unet.fp16.cuda.pt2"}
