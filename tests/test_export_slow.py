"""Slow exports: the bf16 AOTInductor package (compile ~1 min even for a tiny UNet) and the one
full-size CIFAR-10 export of the suite."""

from __future__ import annotations

import warnings

import onnxruntime as ort
import pytest
import torch

from pndm.export.batch import parse_batch
from pndm.export.build import ExportOptions, build_engines
from pndm.export.verify import FP32_REL_L2_LIMIT
from pndm.models.ddpm_unet import DDPMUNet, DDPMUNetConfig
from pndm.models.spec import ModelSpec
from pndm.runtime import load_engine


@pytest.mark.slow
def test_bf16_package_runs_any_batch_in_range(tmp_path):
    config = DDPMUNetConfig(ch=32, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(8,), resolution=8)
    torch.manual_seed(0)
    model = DDPMUNet(config).eval()
    spec = ModelSpec("ddpm", config.to_dict(), (3, 8, 8), "linear", 1000, "tiny", "random")
    options = ExportOptions(out=tmp_path, precision="bf16", batch=parse_batch("1:2:4"), calibration_steps=5,
                            calibration_count=1)
    result = build_engines(model, spec, options, log=lambda s: None)
    entry = result.manifest.engines["unet.bf16.pt2"].to_dict()
    assert entry["kind"] == "aoti" and entry["precision"] == "bf16" and entry["device"] == "cpu"
    stats = result.manifest.verification["unet.bf16.pt2"]
    assert 1e-4 < stats["rel_l2"] < 3e-2  # really bf16 (8 mantissa bits), and still close
    eps = load_engine(tmp_path / "unet.bf16.pt2", device="cpu")
    for batch in (1, 3, 4):
        x, t = torch.randn(batch, 3, 8, 8), torch.rand(batch) * 999
        out = eps(x, t)
        assert out.dtype == torch.float32 and out.shape == x.shape
        with torch.no_grad():
            ref = model(x, t)
        assert ((out - ref).norm() / ref.norm()).item() < 3e-2


@pytest.mark.slow
def test_cifar10_architecture_exports_fp32_and_fp16(tmp_path):
    from pndm.models import load

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, spec = load("cifar10", random_init=True)
    options = ExportOptions(out=tmp_path, precision="fp16", batch=parse_batch("1:4:64"), calibration_steps=4,
                            calibration_count=1)
    result = build_engines(model, spec, options, log=lambda s: None)
    verification = result.manifest.verification
    assert verification["unet.onnx"]["rel_l2"] <= FP32_REL_L2_LIMIT
    assert all(row["rel_l2"] < 1e-2 for row in verification["unet.fp16.onnx"]["by_t"])
    assert len(verification["unet.fp16.onnx"]["by_t"]) == 4  # t = 0, 250, 500, 750: every range
    session = ort.InferenceSession(str(tmp_path / "unet.fp16.onnx"), providers=["CPUExecutionProvider"])
    (eps,) = session.run(None, {"x": torch.randn(1, 3, 32, 32).numpy(), "t": torch.tensor([999.0]).numpy()})
    assert eps.shape == (1, 3, 32, 32) and eps.dtype == "float32"
