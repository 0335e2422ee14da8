"""Precision policy: which engines run in which dtype, and the checks that prove it.

Every engine keeps the float32 interface (``x``, ``t`` float32 in, ``eps`` float32 out).

* **fp16** (``unet.fp16.onnx``) is a rewrite of the exported fp32 ONNX graph
  (:mod:`pndm.export.fp16_graph`), so it works for any model, whatever its modules: Conv, MatMul
  and Gemm in fp16; normalisations and their statistics, softmax and the sinusoidal timestep
  embedding (``t * freq`` reaches ~1000, where fp16 spacing is 0.5) in fp32.
  :func:`check_onnx_policy` verifies that in the graph.
* **bf16** (``unet.bf16.pt2``, CPU or CUDA) and the CUDA **fp16** package (``unet.fp16.cuda.pt2``) are
  built at the torch level for AOTInductor: a copy of the model cast to that dtype behind
  :class:`MixedPrecisionUNet` (x in, eps out as float32; t stays float32, so the sinusoidal
  embedding's ``t * freq`` is float32; Inductor computes normalisation and softmax statistics in
  float32 for reduced-precision inputs).
* **int8 / fp8** are Q/DQ graphs (:mod:`pndm.export.quantize`).

Each reduced-precision engine must also be close to the fp32 model on the calibration pairs in
every range of t: :data:`EXPORT_REL_L2_LIMITS` (:data:`NEAR_DATA_REL_L2_LIMITS` for the range nearest
the data), checked by :func:`require_export_accuracy`.
"""

from __future__ import annotations

import copy
import math

import onnx
import torch
from torch import nn

from pndm.errors import PndmError
from pndm.export.fp16_graph import SHAPE_OPS, timestep_seeds
from pndm.metrics import is_near_data

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8")
LOW_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

# Relative L2 of the model's output against the fp32 model, per t range, above which the export fails.
# fp16/bf16: ~10x the errors measured on the trained default model and the CIFAR-10 architecture
# (docs/EXPORT.md); int8/fp8: the limits the automatic precision policy works to (pndm/export/quantize.py).
EXPORT_REL_L2_LIMITS = {"fp16": 5e-3, "bf16": 3e-2, "int8": 3e-2, "fp8": 3e-1}
# The t range nearest the data, [0, NEAR_DATA_FRACTION * T), has its own limit where given (why:
# pndm.metrics). Measured on the default model: docs/EXPORT.md, "INT8 and FP8".
# fp16: the CUDA .pt2 casts x to fp16, whose 11 bits keep little of the noise in x_t near t = 0 (about 1 %
# of x at t = 0 on the linear schedule): 9.5e-3 measured there on the default model (H100, --pt2-device cuda).
NEAR_DATA_REL_L2_LIMITS = {"fp16": 5e-2, "bf16": 1.5e-1, "int8": 2.5e-1}


def rel_l2_limit(precision: str, t_start: float, T: int) -> float:
    """The export limit of ``precision`` for the t range starting at ``t_start``."""
    if is_near_data(t_start, T):
        return NEAR_DATA_REL_L2_LIMITS.get(precision, EXPORT_REL_L2_LIMITS[precision])
    return EXPORT_REL_L2_LIMITS[precision]


def limit_excess(precision: str, stats: dict, T: int) -> tuple[float, dict]:
    """The worst ratio of a t range's relative L2 to its limit (<= 1: within limits), and that range's row
    of ``stats["by_t"]`` (:func:`pndm.export.verify.compare`). The ranges cover every pair, and the
    relative L2 over all pairs never exceeds the worst range's, so the ranges decide."""
    rows = stats["by_t"]
    ratios = [row["rel_l2"] / rel_l2_limit(precision, row["t"][0], T) for row in rows]
    ratios = [math.inf if math.isnan(r) else r for r in ratios]
    index = max(range(len(rows)), key=ratios.__getitem__)
    return ratios[index], rows[index]

# ONNX ops whose *inputs* must be float32 in a mixed-precision graph (the fp32 islands), and
# ops whose inputs must be fp16 (the bulk of the arithmetic).
FP32_OPS = ("GroupNormalization", "InstanceNormalization", "LayerNormalization", "BatchNormalization",
            "Softmax", "LogSoftmax", "Sin", "Cos", "ReduceMean", "ReduceSumSquare", "Pow", "Sqrt")
FP16_OPS = ("Conv", "MatMul", "Gemm")
_ONNX_NAMES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
               onnx.TensorProto.BFLOAT16: "bfloat16", onnx.TensorProto.DOUBLE: "float64"}


class MixedPrecisionUNet(nn.Module):
    """eps(x, t) with weights in ``dtype``: x float32 -> dtype, t stays float32, eps -> float32."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model = copy.deepcopy(model).to(dtype).eval()
        self.dtype = dtype

    def forward(self, x: torch.Tensor, t: torch.Tensor,
                class_labels: torch.Tensor | None = None) -> torch.Tensor:
        labels = () if class_labels is None else (class_labels,)
        return self.model(x.to(self.dtype), t, *labels).float()


def engine_module(model: nn.Module, precision: str) -> nn.Module:
    """The module to compile for ``precision`` (fp32: the model itself; bf16/fp16: the mixed wrapper)."""
    if precision not in ("fp32", *LOW_DTYPES):
        raise PndmError(f"torch-level engines are fp32 or {', '.join(LOW_DTYPES)}, not {precision!r}")
    return model if precision == "fp32" else MixedPrecisionUNet(model, LOW_DTYPES[precision])


def _types(model: onnx.ModelProto) -> tuple[onnx.GraphProto, dict[str, int]]:
    graph = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.output, *graph.value_info)}
    types.update({init.name: init.data_type for init in graph.initializer})
    return graph, types


def onnx_input_dtypes(model: onnx.ModelProto) -> dict[str, dict[str, int]]:
    """{op_type: {dtype name of its first input: count}} after ONNX shape inference."""
    graph, types = _types(model)
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

    Required: graph inputs (but integer class labels) and outputs float32; every Conv/MatMul/Gemm
    input and every Conv weight float16; every normalisation, normalisation statistic (ReduceMean, Pow, Sqrt),
    Softmax, Sin and Cos input float32; every float input of every node that feeds Sin/Cos
    (the t * freq product) float32.
    """
    inputs = {value.name for value in model.graph.input}
    for value in (*model.graph.input, *model.graph.output):
        elem_type = value.type.tensor_type.elem_type
        if value.name in inputs and elem_type == onnx.TensorProto.INT64:
            continue  # class labels: an integer input, untouched by the fp16 rewrite
        dtype = _ONNX_NAMES.get(elem_type, "unknown")
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
    graph, types = _types(model)
    for node in graph.node:
        if node.op_type == "Conv" and types.get(node.input[1]) != onnx.TensorProto.FLOAT16:
            raise PndmError(f"fp16 graph: the weight of Conv {node.name!r} is not float16")
    producer = {out: node for node in graph.node for out in node.output}
    stack = timestep_seeds(graph)
    seen: set[str] = set()
    while stack:
        node = stack.pop()
        if node.name in seen or node.op_type in SHAPE_OPS:
            continue
        seen.add(node.name)
        low = [i for i in node.input if types.get(i) in (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)]
        if low:
            raise PndmError(f"fp16 graph: {node.op_type} {node.name!r} computes the timestep embedding's "
                            f"input from {low[0]!r} in reduced precision; it must stay float32")
        stack += [producer[i] for i in node.input if i in producer]
    return counts


def require_export_accuracy(name: str, precision: str, stats: dict, T: int) -> None:
    """Fail the export when ``name`` is further from fp32 than :func:`rel_l2_limit` in any t range."""
    ratio, row = limit_excess(precision, stats, T)
    if not ratio <= 1:
        lo, hi = row["t"]
        raise PndmError(
            f"{name} is too far from the fp32 model for t in [{lo}, {hi}): relative L2 {row['rel_l2']:.3g} > "
            f"{rel_l2_limit(precision, lo, T):g} ({precision} limit); export with a higher --precision"
        )
