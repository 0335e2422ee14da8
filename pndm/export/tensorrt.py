"""TensorRT plans (``unet.plan``): the build decisions as plain data, then thin API calls.

:func:`plan_build` turns what the installed TensorRT can do (:class:`TrtCapabilities`) and the
user's options into a :class:`TrtBuildPlan`; it is a pure function, tested without TensorRT.
:func:`build_plan` only replays that plan through the TensorRT 10/11 Python API.

The two API generations:

* TensorRT 11 has no ``BuilderFlag.FP16``: networks are strongly typed
  (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``), so an fp16 plan is parsed from
  ``unet.fp16.onnx``, whose casts already carry the precision policy.
* TensorRT 10 (JetPack 6 ships 10.3) builds from the fp32 ``unet.onnx`` with ``BuilderFlag.FP16``
  and ``OBEY_PRECISION_CONSTRAINTS``, pinning normalization, softmax, sin/cos and the layers
  computing sin/cos's argument to fp32 (the same fp32 islands as the fp16 ONNX, see
  :mod:`pndm.export.precision`).

``--lean`` adds ``VERSION_COMPATIBLE`` + ``EXCLUDE_LEAN_RUNTIME``: the plan runs on the
``tensorrt_lean`` runtime of the same or a newer TensorRT. No Builder or Runtime is created
before a CUDA device is confirmed (creating one without a GPU can crash the process).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pndm.errors import PndmError
from pndm.export.batch import BatchRange
from pndm.fileio import atomic_write_bytes

DEFAULT_OPTIMIZATION_LEVEL = 3  # TensorRT's own default; 0..5
PLAN_PRECISIONS = ("fp32", "fp16", "int8", "fp8")
FP32_LAYER_TYPES = ("NORMALIZATION", "SOFTMAX")
FP32_UNARY_OPS = ("SIN", "COS")

# Attributes the runtime side calls (pndm/runtime/engines/trt_engine.py and this module's
# checks), by owner. Every one exists in the tensorrt_lean wheel; tests/test_tensorrt_api.py
# checks them on the real module without creating anything.
RUNTIME_API: dict[str, tuple[str, ...]] = {
    "module": ("Logger", "Runtime", "TensorIOMode", "DataType", "__version__"),
    "Logger": ("WARNING", "ERROR", "INFO"),
    "DataType": ("FLOAT", "HALF", "BF16"),
    "TensorIOMode": ("INPUT", "OUTPUT"),
    "Runtime": ("deserialize_cuda_engine", "engine_host_code_allowed"),
    "ICudaEngine": ("create_execution_context", "num_io_tensors", "get_tensor_name", "get_tensor_mode",
                    "get_tensor_dtype", "get_tensor_shape", "get_tensor_profile_shape"),
    "IExecutionContext": ("set_input_shape", "set_tensor_address", "execute_async_v3"),
}
# Attributes the builder side calls; only the full ``tensorrt`` package has them.
BUILDER_API: dict[str, tuple[str, ...]] = {
    "module": ("Builder", "OnnxParser", "NetworkDefinitionCreationFlag", "BuilderFlag", "LayerType",
               "UnaryOperation", "IUnaryLayer", "float32"),
    "Builder": ("create_network", "create_optimization_profile", "create_builder_config",
                "build_serialized_network"),
    "IBuilderConfig": ("set_flag", "add_optimization_profile", "builder_optimization_level",
                       "create_timing_cache", "set_timing_cache", "get_timing_cache"),
    "IOptimizationProfile": ("set_shape",),
    "INetworkDefinition": ("num_layers", "get_layer"),
    "ILayer": ("type", "precision", "num_inputs", "num_outputs", "get_input", "get_output",
               "set_output_type"),
    "ITensor": ("name",),
    "OnnxParser": ("parse_from_file", "num_errors", "get_error"),
}


@dataclass(frozen=True)
class TrtCapabilities:
    """What an installed TensorRT offers, found by feature detection (:func:`detect_capabilities`)."""

    version: str
    has_fp16_flag: bool
    has_strongly_typed: bool
    has_precision_constraints: bool
    has_int8_flag: bool = False
    has_fp8_flag: bool = False

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])


@dataclass(frozen=True)
class TrtBuildPlan:
    """Every decision of a build, as data: what to parse, which flags, which shapes."""

    onnx_file: str
    precision: str
    strongly_typed: bool
    network_flags: tuple[str, ...]
    builder_flags: tuple[str, ...]
    profile: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]
    optimization_level: int
    lean: bool
    fp32_layer_types: tuple[str, ...] = ()
    fp32_unary_ops: tuple[str, ...] = ()


def detect_capabilities(trt: Any) -> TrtCapabilities:
    """Read the capabilities off a TensorRT module without creating any object."""
    builder_flags = getattr(trt, "BuilderFlag", None)
    network_flags = getattr(trt, "NetworkDefinitionCreationFlag", None)
    return TrtCapabilities(
        version=str(trt.__version__),
        has_fp16_flag=hasattr(builder_flags, "FP16"),
        has_strongly_typed=hasattr(network_flags, "STRONGLY_TYPED"),
        has_precision_constraints=hasattr(builder_flags, "OBEY_PRECISION_CONSTRAINTS"),
        has_int8_flag=hasattr(builder_flags, "INT8"),
        has_fp8_flag=hasattr(builder_flags, "FP8"),
    )


def profile_shapes(batch: BatchRange, image_shape: tuple[int, int, int]):
    """Optimization profile: (min, opt, max) shapes of ``x`` and ``t`` from the batch range."""
    sizes = (batch.min, batch.opt, batch.max)
    return {"x": tuple((b, *image_shape) for b in sizes), "t": tuple((b,) for b in sizes)}


def plan_build(caps: TrtCapabilities, *, precision: str, batch: BatchRange, image_shape: tuple[int, int, int],
               lean: bool = False, optimization_level: int = DEFAULT_OPTIMIZATION_LEVEL) -> TrtBuildPlan:
    """The build plan for ``caps``; ``precision`` is the plan's: "fp32", "fp16", "int8" or "fp8".

    int8/fp8 plans parse the Q/DQ graph (``unet.int8.onnx`` / ``unet.fp8.onnx``, fp16 outside the
    quantized layers): TensorRT 11 builds it strongly typed; TensorRT 10 weakly typed with the FP16
    and INT8 (FP8) flags, so its unquantized layers may run in fp16, with the fp32 islands pinned.
    """
    if precision not in PLAN_PRECISIONS:
        raise PndmError(f"TensorRT plans are built in {', '.join(PLAN_PRECISIONS)}, not {precision!r}")
    if not 0 <= optimization_level <= 5:
        raise PndmError(f"TensorRT optimization level {optimization_level} is out of range: choose 0..5")
    builder_flags: list[str] = []
    fp32_layers: tuple[str, ...] = ()
    fp32_unary: tuple[str, ...] = ()
    quant_flag = {"int8": "INT8", "fp8": "FP8"}.get(precision)
    has_quant_flag = {"int8": caps.has_int8_flag, "fp8": caps.has_fp8_flag}.get(precision, True)
    weak_source = {"fp16": "unet.fp16.onnx", "int8": "unet.int8.onnx", "fp8": "unet.fp8.onnx"}
    if precision == "fp32":
        strongly_typed, onnx_file = caps.has_strongly_typed, "unet.onnx"
    elif caps.has_fp16_flag and caps.has_precision_constraints and has_quant_flag:  # TensorRT 10 (and older)
        strongly_typed = False
        onnx_file = "unet.onnx" if precision == "fp16" else weak_source[precision]
        builder_flags += ["FP16", *([quant_flag] if quant_flag else []), "OBEY_PRECISION_CONSTRAINTS"]
        fp32_layers, fp32_unary = FP32_LAYER_TYPES, FP32_UNARY_OPS
    elif caps.has_strongly_typed:  # TensorRT 11: precision comes from the ONNX itself
        strongly_typed, onnx_file = True, weak_source[precision]
    else:
        flags = "/".join(["FP16", *([quant_flag] if quant_flag else [])])
        raise PndmError(
            f"TensorRT {caps.version} has neither BuilderFlag.{flags} nor strongly typed networks; "
            "install TensorRT 10 or 11"
        )
    if lean:
        builder_flags += ["VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME"]
    return TrtBuildPlan(
        onnx_file=onnx_file,
        precision=precision,
        strongly_typed=strongly_typed,
        network_flags=("STRONGLY_TYPED",) if strongly_typed else (),
        builder_flags=tuple(builder_flags),
        profile=profile_shapes(batch, image_shape),
        optimization_level=optimization_level,
        lean=lean,
        fp32_layer_types=fp32_layers,
        fp32_unary_ops=fp32_unary,
    )


def cuda_device_name() -> str | None:
    """Name of CUDA device 0, or None when there is no usable CUDA device."""
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() < 1:
        return None
    return torch.cuda.get_device_name(0)


def import_builder():
    """``(tensorrt module, None)`` when a plan can be built here, else ``(None, reason)``.

    Checked in order: a CUDA device, then the full TensorRT package with its Builder (the
    lean runtime alone cannot build).
    """
    if cuda_device_name() is None:
        return None, "no CUDA device found (TensorRT plans are built on the GPU that will run them)"
    try:
        import tensorrt as trt
    except ImportError:
        return None, "TensorRT is not installed: pip install 'pndm[trt]' (NVIDIA's full tensorrt package)"
    if not hasattr(trt, "Builder"):
        return None, "the installed tensorrt package has no Builder (runtime-only); install the full TensorRT"
    return trt, None


def _apply_precision_constraints(trt: Any, network: Any, plan: TrtBuildPlan) -> int:
    """Pin the fp32 islands (TensorRT 10 weakly typed builds); return how many layers were pinned.

    Normalization and softmax layers are pinned; sin/cos layers with every layer upstream of
    them, since the argument t * freq (up to ~1000) must not be formed in fp16 either.
    """
    layer_types = {getattr(trt.LayerType, name) for name in plan.fp32_layer_types}
    unary_ops = {getattr(trt.UnaryOperation, name) for name in plan.fp32_unary_ops}
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    producer = {layer.get_output(j).name: layer for layer in layers for j in range(layer.num_outputs)}
    pinned: dict[int, Any] = {}

    def pin_with_ancestors(layer) -> None:
        """Pin ``layer`` and everything that computes its inputs (t * freq before sin/cos)."""
        if id(layer) in pinned:
            return
        pinned[id(layer)] = layer
        for k in range(layer.num_inputs):
            tensor = layer.get_input(k)
            if tensor is not None and tensor.name in producer:
                pin_with_ancestors(producer[tensor.name])

    for layer in layers:
        if layer.type in layer_types:
            pinned[id(layer)] = layer
        elif layer.type == trt.LayerType.UNARY and _unary_op(trt, layer) in unary_ops:
            pin_with_ancestors(layer)
    for layer in pinned.values():
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
    return len(pinned)


def _unary_op(trt: Any, layer: Any):
    layer.__class__ = trt.IUnaryLayer  # the Python bindings' documented way to downcast an ILayer
    return layer.op


def build_plan(plan: TrtBuildPlan, onnx_dir: Path, out_path: Path, timing_cache: Path | None = None,
               log=print) -> dict[str, Any]:
    """Build ``out_path`` from ``onnx_dir / plan.onnx_file``; return the manifest's engine entry.

    Raises PndmError when no CUDA device or no TensorRT builder is present (before creating
    anything), when the ONNX does not parse, or when the build fails.
    """
    trt, reason = import_builder()
    if trt is None:
        raise PndmError(f"cannot build a TensorRT plan: {reason}")
    gpu = cuda_device_name()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network_flags = 0
    for name in plan.network_flags:
        network_flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(network_flags)
    parser = trt.OnnxParser(network, logger)
    onnx_path = Path(onnx_dir) / plan.onnx_file
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise PndmError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    for name in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    if plan.fp32_layer_types or plan.fp32_unary_ops:
        log(f"TensorRT: pinned {_apply_precision_constraints(trt, network, plan)} layers to fp32")
    config.builder_optimization_level = plan.optimization_level
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in plan.profile.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    cache_bytes = timing_cache.read_bytes() if timing_cache is not None and timing_cache.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(cache_bytes), False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise PndmError("TensorRT failed to build the plan (see its log above); try --trt off to skip it")
    atomic_write_bytes(out_path, bytes(serialized))
    if timing_cache is not None:
        atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    return {"kind": "tensorrt", "precision": plan.precision, "tensorrt": str(trt.__version__), "gpu": gpu,
            "lean": plan.lean, "strongly_typed": plan.strongly_typed, "source_onnx": plan.onnx_file,
            "optimization_level": plan.optimization_level}
