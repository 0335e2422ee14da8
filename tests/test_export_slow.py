"""The one full-size CIFAR-10 export of the suite (the bf16 AOTInductor package's batch range is
covered by tests/test_cli_run_export.py, which compiles one for the default model)."""

from __future__ import annotations

import warnings

import onnxruntime as ort
import pytest
import torch

from pndm.export.batch import parse_batch
from pndm.export.build import ExportOptions, build_engines
from pndm.export.verify import FP32_REL_L2_LIMIT


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
