"""Precision policy: which engines run in which dtype, and the checks that prove it.

fp16 and bf16 engines are *mixed precision*, built at the torch level: the model's weights
are cast to the low dtype and a wrapper casts ``x`` in and ``eps`` out, so every engine keeps
the float32 interface (``x``, ``t`` float32 in, ``eps`` float32 out). The fp32 islands live in
the model itself (pndm/models/ddpm_unet.py): GroupNorm statistics (GroupNorm32), the
attention softmax and the sinusoidal timestep embedding (``t * freq`` reaches ~1000, where
fp16 spacing is 0.5) always compute in float32. :func:`check_onnx_policy` verifies that an
exported graph really has Conv/MatMul/Gemm in fp16 and those islands in fp32.

Why this route rather than an ONNX-level converter: ``onnxconverter_common.float16`` produces
a graph ONNX Runtime refuses on this UNet (DESIGN.md), and automatic converters that
calibrate on random inputs get the timestep path wrong; the torch-level cast keeps the policy
in one place (the model) for ONNX, AOTInductor and TensorRT 11's strongly typed networks alike.
"""

from __future__ import annotations

import copy

import onnx
import torch
from torch import nn

from pndm.errors import PndmError

PRECISIONS = ("fp32", "fp16", "bf16")
LOW_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}

# ONNX ops whose *inputs* must be float32 in a mixed-precision graph (the fp32 islands), and
# ops whose inputs must be fp16 (the bulk of the arithmetic).
FP32_OPS = ("GroupNormalization", "InstanceNormalization", "LayerNormalization", "Softmax", "Sin", "Cos")
FP16_OPS = ("Conv", "MatMul", "Gemm")
_ONNX_NAMES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
               onnx.TensorProto.BFLOAT16: "bfloat16", onnx.TensorProto.DOUBLE: "float64"}


class MixedPrecisionUNet(nn.Module):
    """eps(x, t) with weights in ``dtype``: x float32 -> dtype, t stays float32, eps -> float32."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model = copy.deepcopy(model).to(dtype).eval()
        self.dtype = dtype

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.dtype), t).float()


def engine_module(model: nn.Module, precision: str) -> nn.Module:
    """The module to export for ``precision``: the model itself for fp32, else the mixed wrapper."""
    if precision not in PRECISIONS:
        raise PndmError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return model if precision == "fp32" else MixedPrecisionUNet(model, LOW_DTYPES[precision])


def onnx_input_dtypes(model: onnx.ModelProto) -> dict[str, dict[str, int]]:
    """{op_type: {dtype name of its first input: count}} after ONNX shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.output, *graph.value_info)}
    types.update({init.name: init.data_type for init in graph.initializer})
    counts: dict[str, dict[str, int]] = {}
    for node in graph.node:
        if not node.input:
            continue
        name = _ONNX_NAMES.get(types.get(node.input[0]), "unknown")
        per_op = counts.setdefault(node.op_type, {})
        per_op[name] = per_op.get(name, 0) + 1
    return counts


def check_onnx_policy(model: onnx.ModelProto) -> dict[str, dict[str, int]]:
    """Raise unless the graph follows the fp16 policy; return the per-op dtype counts.

    Required: graph inputs and outputs float32; every Conv/MatMul/Gemm input float16; every
    normalization, Softmax, Sin and Cos input float32.
    """
    for value in (*model.graph.input, *model.graph.output):
        dtype = _ONNX_NAMES.get(value.type.tensor_type.elem_type, "unknown")
        if dtype != "float32":
            raise PndmError(f"fp16 graph: {value.name!r} is {dtype}, the engine interface must stay float32")
    counts = onnx_input_dtypes(model)
    for ops, wanted in ((FP16_OPS, "float16"), (FP32_OPS, "float32")):
        for op in ops:
            wrong = {k: v for k, v in counts.get(op, {}).items() if k != wanted}
            if wrong:
                raise PndmError(f"fp16 graph: {op} runs in {wrong}, the precision policy requires {wanted}")
    if not any(counts.get(op) for op in FP16_OPS):
        raise PndmError("fp16 graph: no Conv/MatMul/Gemm in float16; the export did not lower precision")
    return counts
