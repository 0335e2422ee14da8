"""INT8 / FP8 engines: post-training quantization of the fp32 ONNX graph into explicit Q/DQ form.

ONNX Runtime's ``quantize_static`` (QDQ format) calibrates on the export's calibration pairs (real
solver trajectories, or forward-process pairs for random weights) with symmetric per-channel int8
weights, per-tensor activations and unquantized biases (``QuantizeBias=False``). Two placements of
the Q/DQ nodes are written, each with its own scheme (:data:`SCHEMES`):

* ``tensorrt`` (``unet.int8.onnx`` / ``unet.fp8.onnx``): Q/DQ on the inputs of Conv/MatMul/Gemm only,
  symmetric int8 (or fp8) activations, everything else in fp16 with the fp32 islands of
  :mod:`pndm.export.fp16_graph`: every zero point is 0 and int8 weights lie in [-127, 127], so the
  graph is valid explicit quantization. TensorRT fuses each DQ -> Conv -> (next) Q chain into int8
  kernels; TensorRT 11 builds it strongly typed, TensorRT 10 with its FP16 + INT8 flags
  (:mod:`pndm.export.tensorrt`).
* ``cpu`` (``unet.int8-cpu.onnx``): the same layers with their outputs quantized too, so ONNX
  Runtime's CPU provider fuses DQ -> Conv -> Q into int8 kernels (the inputs-only form runs slower
  than fp32 there). Its activations are *uint8 with a zero point* and its weights int8 in 7 bits
  ([-64, 64], ``reduce_range``): x86 CPUs without VNNI multiply u8 x s8 with ``vpmaddubsw``, whose
  int16 pair sums saturate with full 8-bit weights (2 x 255 x 64 = 32640 fits int16; 2 x 255 x 127
  does not). Measured on the CIFAR-10 UNet (AVX2, batch 8, 2 threads, same calibration): rel L2 to
  fp32 0.22 with symmetric int8 activations, 0.14 with uint8, 0.049 with uint8 and 7-bit weights,
  which also ran 1.1-1.2x faster than symmetric int8. Quantizing
  every op ORT can (its default: Add, Mul, Reshape, ...) measured 3x the eps error on the default
  model and was not faster there.

The fp32 islands (normalisations, softmax, the timestep embedding) are never quantized.

**Precision policy** (:func:`choose_float_layers`, per placement): the layers (Conv/MatMul/Gemm, named
after their weight, e.g. ``conv_in`` for ``conv_in.weight``) whose quantization costs most are kept
in float until the engine meets its limit in every t range (:func:`pndm.export.precision.rel_l2_limit`).
A layer's sensitivity is the error (the worst t range's relative L2 against the fp32 model, as a
multiple of its limit, on a few calibration pairs) with that layer alone left unquantized: the lower,
the more it matters.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from pndm.errors import PndmError
from pndm.export.fp16_graph import convert_to_fp16, fp32_islands
from pndm.export.onnx_export import DEFAULT_OPSET, opset_of
from pndm.export.precision import limit_excess, rel_l2_limit

QUANT_PRECISIONS = ("int8", "fp8")
PLACEMENTS = ("tensorrt", "cpu")
CALIBRATORS = ("minmax", "entropy", "percentile")
DEFAULT_CALIBRATOR = "minmax"
LAYER_OPS = ("Conv", "MatMul", "Gemm")
MIN_OPSET = {"int8": 13, "fp8": 19}
QUANT_DTYPES = {"int8": TensorProto.INT8, "fp8": TensorProto.FLOAT8E4M3FN}
SENSITIVITY_PAIRS = 4  # calibration pairs (spread over t) each sensitivity probe is evaluated on
MAX_FLOAT_FRACTION = 0.5  # the policy gives up (one-line error) beyond this share of float layers
MIN_GAIN = 0.1  # an addition of float layers that lowers the error by less than this share: measure again


@dataclass(frozen=True)
class Scheme:
    """How one placement quantizes: the activations' type and symmetry, the weights' bit range."""

    activations_unsigned: bool  # uint8 activations with a zero point (CPU) or symmetric int8/fp8
    reduce_range: bool  # 7-bit int8 weights, [-64, 64] (no int16 saturation in vpmaddubsw)

    def describe(self, precision: str) -> dict:
        """The manifest's words for it."""
        if precision == "fp8":
            return {"activations": "float8e4m3fn", "weights": "float8e4m3fn per output channel"}
        return {"activations": "uint8 per tensor, asymmetric" if self.activations_unsigned
                else "int8 per tensor, symmetric",
                "weights": "int8 per output channel, symmetric, "
                + ("7-bit [-64, 64]" if self.reduce_range else "[-127, 127]")}


SCHEMES = {"tensorrt": Scheme(activations_unsigned=False, reduce_range=False),
           "cpu": Scheme(activations_unsigned=True, reduce_range=True)}

EpsError = Callable[[bytes], dict]  # serialized ONNX -> verification stats (pndm.export.verify.compare)


@dataclass
class QuantizedEngine:
    """One written Q/DQ graph and how it was made (the manifest's ``quantization`` object)."""

    model: onnx.ModelProto
    precision: str
    placement: str
    calibrator: str
    kept_float: list[str]
    reasons: dict[str, str] = field(default_factory=dict)

    def manifest_entry(self) -> dict:
        return {"placement": self.placement, "calibrator": self.calibrator,
                **SCHEMES[self.placement].describe(self.precision),
                "kept_float": list(self.kept_float), "kept_float_reasons": dict(self.reasons)}


def layer_names(model: onnx.ModelProto) -> dict[str, str]:
    """{layer name: node name} of the quantizable layers outside the fp32 islands.

    A layer is named after its weight initializer without ``.weight`` (``down.0.block.0.conv1``), so
    the names are the PyTorch module paths; a MatMul of two activations keeps its node name.
    """
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    islands = fp32_islands(graph)
    names: dict[str, str] = {}
    for node in graph.node:
        if node.op_type not in LAYER_OPS or node.name in islands:
            continue
        weight = node.input[1] if len(node.input) > 1 else ""
        name = weight.removesuffix(".weight") if weight in initializers else node.name
        names[name if name not in names else node.name] = node.name
    return names


def resolve_keep_float(model: onnx.ModelProto, requested: tuple[str, ...]) -> list[str]:
    """The ``--keep-float`` names, checked against the graph's layers (one-line error otherwise)."""
    layers = layer_names(model)
    for name in requested:
        if name not in layers and name not in layers.values():
            near = [n for n in layers if name.split(".")[-1] in n][:5] or list(layers)[:5]
            raise PndmError(f"--keep-float {name!r} is no layer of this model; layers are named like "
                            f"{', '.join(near)} ({len(layers)} in all)")
    by_node = {node: layer for layer, node in layers.items()}
    return [by_node.get(name, name) for name in requested]


class _PairsReader:
    """onnxruntime.quantization.CalibrationDataReader over calibration pairs, ``batch`` at a time."""

    def __init__(self, x: np.ndarray, t: np.ndarray, batch: int):
        # Equal batches (the largest size <= batch dividing the pair count): ORT's distribution
        # calibrator (fp8) stacks the per-batch arrays and fails on a shorter last batch.
        batch = max(b for b in range(1, min(batch, len(x)) + 1) if len(x) % b == 0)
        self.feeds = [{"x": x[i:i + batch], "t": t[i:i + batch]} for i in range(0, len(x), batch)]
        self.index = 0

    def get_next(self):
        if self.index >= len(self.feeds):
            return None
        self.index += 1
        return self.feeds[self.index - 1]

    def rewind(self):
        self.index = 0

    def __len__(self):
        return len(self.feeds)


def require_calibration_data(x: np.ndarray, eps: np.ndarray, precision: str) -> None:
    """int8/fp8 need finite calibration pairs covering the model's inputs; refuse in one line otherwise."""
    if len(x) == 0 or not (np.isfinite(x).all() and np.isfinite(eps).all()):
        raise PndmError(
            f"--precision {precision} needs calibration data, but the calibration trajectories hold "
            "non-finite values (the model diverges along its own trajectories); export trained weights, "
            "or use --random-init, which calibrates on forward-process pairs"
        )


def check_quant_opset(precision: str, opset: int) -> None:
    """Refuse an opset older than ``precision``'s Q/DQ operators need (:data:`MIN_OPSET`)."""
    least = MIN_OPSET[precision]
    if opset < least:
        raise PndmError(f"{precision} Q/DQ graphs need opset >= {least} (got {opset}); export with "
                        f"--opset {max(least, DEFAULT_OPSET)}")


class Quantizer:
    """Quantizes one fp32 graph repeatedly (different placements, float layers) from one calibration."""

    def __init__(self, fp32: onnx.ModelProto, x: np.ndarray, t: np.ndarray, *, precision: str,
                 calibrator: str, batch: int, workdir: Path):
        from onnxruntime.quantization import CalibrationMethod

        if precision not in QUANT_PRECISIONS:
            raise PndmError(f"unknown quantized precision {precision!r}; choose one of {QUANT_PRECISIONS}")
        if calibrator not in CALIBRATORS:
            raise PndmError(f"unknown calibrator {calibrator!r}; choose one of {', '.join(CALIBRATORS)}")
        check_quant_opset(precision, opset_of(fp32) or 0)
        self.fp32, self.precision, self.calibrator = fp32, precision, calibrator
        self.x, self.t, self.batch = x, t, batch
        self.islands = sorted(fp32_islands(fp32.graph))
        self.layers = layer_names(fp32)
        self.workdir = Path(workdir)
        # fp8: ONNX Runtime calibrates float8 only with its Distribution method (whatever --calibrator says).
        methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                   "percentile": CalibrationMethod.Percentile}
        self.method = CalibrationMethod.Distribution if precision == "fp8" else methods[calibrator]
        self.source = self.workdir / "fp32.onnx"
        onnx.save_model(fp32, str(self.source))

    def quantize(self, placement: str, kept_float: list[str], fp16: bool = True) -> onnx.ModelProto:
        """The Q/DQ graph for ``placement`` with the layers ``kept_float`` left unquantized.

        ``fp16=False`` leaves the TensorRT form's unquantized part in fp32 (the sensitivity probe).
        """
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        qtype = QuantType.QFLOAT8E4M3FN if self.precision == "fp8" else QuantType.QInt8
        tensorrt = placement == "tensorrt"
        scheme = SCHEMES[placement]
        extra = {"ActivationSymmetric": not scheme.activations_unsigned, "WeightSymmetric": True,
                 "QuantizeBias": False}
        if tensorrt:
            extra["OpTypesToExcludeOutputQuantization"] = list(LAYER_OPS)
        exclude = self.islands + [self.layers.get(name, name) for name in kept_float]
        out = self.workdir / f"{placement}.onnx"
        logger = logging.getLogger()
        level = logger.level
        logger.setLevel(logging.ERROR)  # "Please consider to run pre-processing" and friends
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the distribution calibrator prints progress
                quantize_static(
                    str(self.source), str(out), _PairsReader(self.x, self.t, self.batch),
                    quant_format=QuantFormat.QDQ, op_types_to_quantize=list(LAYER_OPS), per_channel=True,
                    activation_type=QuantType.QUInt8 if scheme.activations_unsigned else qtype,
                    weight_type=qtype, reduce_range=scheme.reduce_range, nodes_to_exclude=exclude,
                    calibrate_method=self.method, extra_options=extra,
                    calibration_cache_path=str(self.workdir / f"ranges-{placement}.json"),
                )
        finally:
            logger.setLevel(level)
        model = onnx.load(str(out))
        if tensorrt and fp16:
            model, _ = convert_to_fp16(model)
        return model

    def without_quantization(self, probe: onnx.ModelProto, layer: str) -> onnx.ModelProto:
        """``probe`` (a Q/DQ graph in fp32) with ``layer`` in float: cheaper than re-quantizing.

        The layer reads its original float inputs (the float weight is put back), and where its
        output was quantized (CPU form), the consumers of that Q/DQ pair read the float output.
        """
        model = onnx.ModelProto()
        model.CopyFrom(probe)
        graph = model.graph
        node_name = self.layers[layer]
        original = next(n for n in self.fp32.graph.node if n.name == node_name)
        target = next(n for n in graph.node if n.name == node_name)
        target.input[:] = original.input
        present = {init.name for init in graph.initializer}
        graph.initializer.extend(init for init in self.fp32.graph.initializer
                                 if init.name in original.input and init.name not in present)
        output = target.output[0]
        pair = [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == output]
        quantized = {q.output[0] for q in pair}
        pair += [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in quantized]
        dequantized = {n.output[0] for n in pair if n.op_type == "DequantizeLinear"}
        graph_outputs = dequantized & {o.name for o in graph.output}
        if graph_outputs:  # the dequantized tensor is the graph output: the layer writes it directly
            output = target.output[0] = graph_outputs.pop()
        for node in pair:
            graph.node.remove(node)
        for node in graph.node:
            node.input[:] = [output if name in dequantized else name for name in node.input]
        return model


def _spread(t: np.ndarray, count: int) -> np.ndarray:
    """Indices of ``count`` pairs spread evenly over the sorted t values."""
    order = np.argsort(t, kind="stable")
    return order[np.linspace(0, len(order) - 1, min(count, len(order))).round().astype(int)]


class FloatChoice(NamedTuple):
    """What :func:`choose_float_layers` chose: the layers kept in float, why each, the final graph's
    verification stats, and that graph (quantized with those layers in float)."""

    kept: list[str]
    reasons: dict[str, str]
    stats: dict
    model: onnx.ModelProto


def choose_float_layers(quantizer: Quantizer, placement: str, T: int,
                        error_of: Callable[[onnx.ModelProto, np.ndarray | None], dict],
                        log: Callable[[str], None] = print,
                        end_to_end: Callable[[onnx.ModelProto], tuple[float, str]] | None = None,
                        ) -> FloatChoice:
    """Keep the most sensitive layers in float until ``placement``'s error is within its limit in every t
    range (:func:`pndm.export.precision.rel_l2_limit`; ``T``: the schedule's length).

    ``error_of(model, subset)`` returns the verification stats (``rel_l2`` and ``by_t``) of a graph on
    the calibration pairs (``subset``: indices, or None for all). A layer's sensitivity is the fall of
    the error (the worst t range's ratio to its limit, on :data:`SENSITIVITY_PAIRS` pairs spread over t)
    when it alone is in float, beside the layers already kept. Layers are added 1, 2, 3, 4, 6, 9, ...
    at a time in that order; when an addition gains less than :data:`MIN_GAIN`, the layers' errors
    interact (one layer's error can hide behind another's until that one is in float), so the
    remaining layers are measured again beside the kept ones (at most once each time the
    kept set has doubled, which bounds the passes by log2 of the layer count).

    ``end_to_end(model) -> (ratio, description)`` (:func:`pndm.export.trajectory_guard.trajectory_guard`),
    when given, is a second criterion checked once the per-call limits hold: while its ratio exceeds 1,
    more layers go to float in the same order.
    """

    def worst(stats: dict) -> float:
        return limit_excess(quantizer.precision, stats, T)[0]

    def describe(stats: dict) -> str:
        ratio, row = limit_excess(quantizer.precision, stats, T)
        lo, hi = row["t"]
        return (f"worst t range [{lo}, {hi}): rel L2 {row['rel_l2']:.3g} "
                f"(limit {rel_l2_limit(quantizer.precision, lo, T):g}, {ratio:.2f}x)")

    kept: list[str] = []
    reasons: dict[str, str] = {}
    judged = {"text": ""}  # the last end-to-end description, for the error message

    def excess(model: onnx.ModelProto, stats: dict) -> float:
        """The per-call ratio of ``model`` (``stats``) while over 1, then the end-to-end one (logged)."""
        if worst(stats) > 1 or end_to_end is None:
            return worst(stats)
        ratio, judged["text"] = end_to_end(model)
        log(f"{placement} form, {len(kept)} layers in float, end to end: {judged['text']} ({ratio:.2f}x)")
        return ratio

    model = quantizer.quantize(placement, [])
    stats = error_of(model, None)
    log(f"{quantizer.precision} {placement} form, every layer quantized: {describe(stats)}")
    current = excess(model, stats)
    if current <= 1:
        return FloatChoice([], {}, stats, model)
    subset = _spread(quantizer.t, SENSITIVITY_PAIRS)

    def rank() -> list[str]:
        """The layers not kept, most sensitive first (each measured beside the kept ones)."""
        probe = quantizer.quantize(placement, kept, fp16=False)
        base = worst(error_of(probe, subset))
        rest = [layer for layer in quantizer.layers if layer not in kept]
        log(f"measuring the sensitivity of {len(rest)} layers on {len(subset)} pairs"
            + (f" beside the {len(kept)} kept" if kept else ""))
        after = {layer: worst(error_of(quantizer.without_quantization(probe, layer), subset))
                 for layer in rest}
        for layer in rest:
            reasons[layer] = f"alone in float: worst error {base:.2f}x -> {after[layer]:.2f}x its limit"
        return sorted(after, key=after.get)

    ranked, ranked_at = rank(), 0
    step = 1
    while current > 1:
        if len(kept) + step > MAX_FLOAT_FRACTION * len(quantizer.layers):
            problem = describe(stats) if worst(stats) > 1 else f"final images are off: {judged['text']}"
            raise PndmError(
                f"{quantizer.precision} {placement} form: even with {len(kept)} of {len(quantizer.layers)} "
                f"layers in float the {problem}; export with --precision fp16, or try "
                "another --calibrator or more --calibration-count"
            )
        kept, ranked = kept + ranked[:step], ranked[step:]
        model = quantizer.quantize(placement, kept)
        before, stats = stats, error_of(model, None)
        log(f"{placement} form, {len(kept)} layers in float: {describe(stats)}")
        current = excess(model, stats)
        step = max(1, len(kept) // 2) if worst(stats) > 1 else 1  # end to end: one layer at a time
        stalled = worst(stats) > 1 and worst(stats) > (1 - MIN_GAIN) * worst(before)
        if stalled and len(kept) >= 2 * ranked_at:  # at most once per doubling of the kept layers
            ranked, ranked_at, step = rank(), len(kept), 1
    return FloatChoice(kept, {name: reasons[name] for name in kept}, stats, model)


def check_qdq_structure(model: onnx.ModelProto, precision: str,
                        placement: str = "tensorrt") -> dict[str, int]:
    """Raise unless ``model`` is valid Q/DQ in ``placement``'s scheme (:data:`SCHEMES`); return node counts.

    Every QuantizeLinear feeds only DequantizeLinear; weights (initializers dequantized for a layer)
    are ``precision``'s type with zero point 0 and per-output-channel scales (axis 0 for Conv and Gemm
    with transB, the last axis for MatMul), int8 weights within [-127, 127] ([-64, 64] in 7 bits);
    activations have zero point 0 (TensorRT form: valid explicit quantization for TensorRT) or are
    uint8 (CPU form); opset >= 13 (fp8: >= 19).
    """
    graph = model.graph
    scheme = SCHEMES[placement]
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET[precision]:
        raise PndmError(f"{precision} Q/DQ graph has opset {opset} < {MIN_OPSET[precision]}")
    initializers = {init.name: init for init in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    counts = {"QuantizeLinear": 0, "DequantizeLinear": 0, "weights": 0}
    weight_bound = 64 if scheme.reduce_range else 127
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        counts[node.op_type] += 1
        is_weight = node.input[0] in initializers
        if len(node.input) > 2 and node.input[2]:
            zero = initializers[node.input[2]]
            if scheme.activations_unsigned and not is_weight:
                if zero.data_type != TensorProto.UINT8:
                    found = TensorProto.DataType.Name(zero.data_type)
                    raise PndmError(f"{node.name}: activation is {found}, not the CPU form's UINT8")
            elif np.any(numpy_helper.to_array(zero).astype(np.float32) != 0):
                raise PndmError(f"{node.name}: zero point is not 0 (symmetric quantization required)")
        if node.op_type == "QuantizeLinear":
            wrong = [c.op_type for c in consumers.get(node.output[0], []) if c.op_type != "DequantizeLinear"]
            if wrong:
                raise PndmError(f"{node.name}: QuantizeLinear feeds {wrong[0]}, not only DequantizeLinear")
            continue
        if not is_weight:
            continue
        weight = initializers[node.input[0]]
        counts["weights"] += 1
        if weight.data_type != QUANT_DTYPES[precision]:
            found, wanted_type = (TensorProto.DataType.Name(d)
                                  for d in (weight.data_type, QUANT_DTYPES[precision]))
            raise PndmError(f"{node.name}: weight {weight.name} is {found}, not {wanted_type}")
        values = numpy_helper.to_array(weight)
        if precision == "int8" and (values.min() < -weight_bound or values.max() > weight_bound):
            raise PndmError(f"{node.name}: int8 weight {weight.name} leaves "
                            f"[-{weight_bound}, {weight_bound}]")
        scale = numpy_helper.to_array(initializers[node.input[1]])
        layer = next((c for c in consumers.get(node.output[0], []) if c.op_type in LAYER_OPS), None)
        if layer is None:  # the CPU form also quantizes other initializers (per tensor)
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        wanted = 0
        if layer.op_type == "MatMul":
            wanted = len(weight.dims) - 1
        elif layer.op_type == "Gemm":
            wanted = 0 if any(a.name == "transB" and a.i == 1 for a in layer.attribute) else 1
        if scale.size != weight.dims[wanted] or axis % len(weight.dims) != wanted:
            raise PndmError(f"{node.name}: weight scales are not per output channel (axis {axis}, "
                            f"{scale.size} scales for shape {list(weight.dims)})")
    if counts["QuantizeLinear"] == 0 or counts["weights"] == 0:
        raise PndmError(f"the {precision} graph has no Q/DQ weights; quantization did not happen")
    return counts


def quantize_engines(fp32: onnx.ModelProto, x: np.ndarray, t: np.ndarray, eps: np.ndarray, *, precision: str,
                     calibrator: str, keep_float: tuple[str, ...], T: int, batch: int,
                     error_of: Callable[[onnx.ModelProto, np.ndarray | None], dict],
                     log: Callable[[str], None] = print,
                     placements: tuple[str, ...] = PLACEMENTS,
                     end_to_end: Callable[[onnx.ModelProto], tuple[float, str]] | None = None,
                     ) -> list[QuantizedEngine]:
    """The Q/DQ engines of ``precision``: int8 in each of ``placements``, fp8 in the TensorRT form only.
    ``end_to_end``: the automatic policy's second criterion (:func:`choose_float_layers`)."""
    require_calibration_data(x, eps, precision)
    kept = resolve_keep_float(fp32, keep_float)
    if precision != "int8":
        placements = ("tensorrt",)
    engines = []
    with tempfile.TemporaryDirectory(prefix="pndm-quantize-") as workdir:
        quantizer = Quantizer(fp32, x, t, precision=precision, calibrator=calibrator, batch=batch,
                              workdir=Path(workdir))
        for placement in placements:
            if keep_float:
                chosen, reasons = kept, {name: "--keep-float" for name in kept}
                model = quantizer.quantize(placement, chosen)
            else:
                chosen, reasons, _, model = choose_float_layers(quantizer, placement, T, error_of, log,
                                                                end_to_end)
            check_qdq_structure(model, precision, placement)
            log(f"{precision} {placement} form: " + ("; ".join(f"{name} kept in float ({reasons[name]})"
                                                          for name in chosen) or "every layer quantized"))
            engines.append(QuantizedEngine(model, precision, placement, calibrator, chosen, reasons))
    return engines
