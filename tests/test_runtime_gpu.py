"""GPU backends (skipped without a CUDA device): TensorRT plans with CUDA graphs, ONNX Runtime CUDA."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from runtime_fixtures import make_engine_dir

from pndm.images import to_uint8
from pndm.runtime import load_engine
from pndm.runtime.sampling import sample_seeds

BIN = Path(sys.executable).parent


@pytest.mark.cuda
def test_onnxruntime_cuda_matches_cpu(tmp_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu not installed")
    folder = make_engine_dir(tmp_path / "e")
    gpu = load_engine(folder / "unet.onnx", device="cuda")
    cpu = load_engine(folder / "unet.onnx", device="cpu")
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([1.0, 500.0, 999.0])
    assert gpu.device.type == "cuda"
    assert torch.allclose(gpu(x, t).cpu(), cpu(x, t), atol=1e-4)


@pytest.mark.trt
@pytest.mark.parametrize("cuda_graph", [True, False])
def test_tensorrt_plan_samples_like_the_reference(tmp_path, cuda_graph):
    out = tmp_path / "engines"
    built = subprocess.run(
        [
            str(BIN / "pndm-export"),
            "build",
            "--precision",
            "fp16",
            "--batch",
            "1:4:8",
            "--trt",
            "on",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    plan = load_engine(out / "unet.fp16.plan", device="cuda", cuda_graph=cuda_graph)
    reference = load_engine(out / "unet.onnx", device="cpu")
    assert plan.backend == "tensorrt" and plan.batch_range == (1, 8)
    seeds = [0, 1, 2, 3, 4]
    a = sample_seeds(plan, seeds, method="f-pndm", steps=20, batch=4, progress=False)  # batches of 4 and 1
    b = sample_seeds(reference, seeds, method="f-pndm", steps=20, batch=4, progress=False)
    diff = (to_uint8(a.images).int() - to_uint8(b.images).int()).abs().float()
    assert diff.mean() < 1.0
    t = torch.full((4,), 10.0, device="cuda")
    x1, x2 = torch.randn(2, 4, *plan.image_shape, device="cuda")
    out1 = plan(x1, t).clone()
    out2 = plan(x2, t).clone()
    assert not torch.allclose(out1, out2)  # a graph replay reads the new inputs, not stale ones
    assert torch.equal(plan(x1, t), out1)
    checked = subprocess.run(
        [str(BIN / "pndm-run"), "check", "--engine", str(out / "unet.fp16.plan"), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert checked.returncode == 0, checked.stdout[-3000:]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_pt2_export_sample_with_the_graph_loop_and_check(tmp_path):
    """pndm-export --pt2-device cuda -> unet.fp16.cuda.pt2, verified on the GPU; pndm-run samples it with the
    whole loop as one CUDA graph, close to the fp32 ONNX engine on the CPU; the checker passes it."""
    import json

    out = tmp_path / "engines"
    built = subprocess.run(
        [str(BIN / "pndm-export"), "build", "--precision", "fp16", "--pt2-device", "cuda", "--trt", "off",
         "--out", str(out)],
        capture_output=True, text=True, timeout=1800,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["engines"]["unet.fp16.cuda.pt2"]["device"] == "cuda"
    assert "unet.fp16.cuda.pt2" in manifest["verification"]
    runs = {}
    for name, device in (("unet.fp16.cuda.pt2", "cuda"), ("unet.onnx", "cpu")):
        folder = tmp_path / name
        ran = subprocess.run(
            [str(BIN / "pndm-run"), "sample", "--engine", str(out / name), "--device", device, "-n", "6",
             "--batch", "4", "--steps", "10", "--format", "npz", "--no-progress", "--out", str(folder)],
            capture_output=True, text=True, timeout=600,
        )
        assert ran.returncode == 0, ran.stderr[-3000:]
        runs[name] = (json.loads((folder / "run.json").read_text()), folder / "samples.npz")
    assert runs["unet.fp16.cuda.pt2"][0]["graph_loop"] is True
    import numpy as np

    gpu, cpu = (np.load(path)["images"].astype(np.int32) for _, path in runs.values())
    assert np.abs(gpu - cpu).mean() < 1.0
    checked = subprocess.run(
        [str(BIN / "pndm-run"), "check", "--engine", str(out / "unet.fp16.cuda.pt2"), "--no-progress"],
        capture_output=True, text=True, timeout=600,
    )
    assert checked.returncode == 0, checked.stdout[-3000:]
