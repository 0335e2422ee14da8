"""TensorRT build decisions as data (no TensorRT needed), and the real build where TensorRT + CUDA exist."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
import torch

from pndm.errors import PndmError
from pndm.export import tensorrt as trt_build
from pndm.export.batch import parse_batch
from pndm.export.tensorrt import TrtCapabilities, detect_capabilities, plan_build

TRT10 = TrtCapabilities("10.3.0", has_fp16_flag=True, has_strongly_typed=True, has_precision_constraints=True)
TRT11 = TrtCapabilities("11.4.0", has_fp16_flag=False, has_strongly_typed=True,
                        has_precision_constraints=False)
BATCH = parse_batch("1:4:64")
IMAGE = (3, 32, 32)


def test_trt11_fp16_is_strongly_typed_from_the_fp16_onnx():
    plan = plan_build(TRT11, precision="fp16", batch=BATCH, image_shape=IMAGE)
    assert plan.onnx_file == "unet.fp16.onnx"
    assert plan.strongly_typed and plan.network_flags == ("STRONGLY_TYPED",)
    assert plan.builder_flags == ()
    assert plan.fp32_layer_types == () and plan.fp32_unary_ops == ()


def test_trt10_fp16_uses_the_fp16_flag_with_fp32_islands():
    plan = plan_build(TRT10, precision="fp16", batch=BATCH, image_shape=IMAGE)
    assert plan.onnx_file == "unet.onnx"
    assert not plan.strongly_typed and plan.network_flags == ()
    assert plan.builder_flags == ("FP16", "OBEY_PRECISION_CONSTRAINTS")
    assert plan.fp32_layer_types == ("NORMALIZATION", "SOFTMAX")
    assert plan.fp32_unary_ops == ("SIN", "COS")


@pytest.mark.parametrize("caps", [TRT10, TRT11])
def test_fp32_plans_parse_the_fp32_onnx_without_precision_flags(caps):
    plan = plan_build(caps, precision="fp32", batch=BATCH, image_shape=IMAGE)
    assert plan.onnx_file == "unet.onnx" and plan.precision == "fp32"
    assert "FP16" not in plan.builder_flags


@pytest.mark.parametrize("caps", [TRT10, TRT11])
def test_profile_comes_from_the_batch_range(caps):
    plan = plan_build(caps, precision="fp16", batch=parse_batch("2:8:16"), image_shape=(1, 28, 28))
    assert plan.profile == {"x": ((2, 1, 28, 28), (8, 1, 28, 28), (16, 1, 28, 28)), "t": ((2,), (8,), (16,))}


@pytest.mark.parametrize("caps", [TRT10, TRT11])
def test_lean_builds_version_compatible_plans_without_the_lean_runtime_inside(caps):
    plan = plan_build(caps, precision="fp16", batch=BATCH, image_shape=IMAGE, lean=True)
    assert plan.lean and plan.builder_flags[-2:] == ("VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME")
    default = plan_build(caps, precision="fp16", batch=BATCH, image_shape=IMAGE)
    assert "VERSION_COMPATIBLE" not in default.builder_flags


def test_every_capability_combination_gives_a_consistent_plan_or_a_clear_error():
    for fp16, strong, constraints, lean, precision in itertools.product(
        (False, True), (False, True), (False, True), (False, True), ("fp16", "fp32")
    ):
        caps = TrtCapabilities("10.0.0", fp16, strong, constraints)
        try:
            plan = plan_build(caps, precision=precision, batch=BATCH, image_shape=IMAGE, lean=lean)
        except PndmError as error:
            assert precision == "fp16" and not strong and not (fp16 and constraints)
            assert "neither BuilderFlag.FP16 nor strongly typed" in str(error)
            continue
        assert plan.strongly_typed == ("STRONGLY_TYPED" in plan.network_flags)
        assert not plan.strongly_typed or strong  # never asks for a flag the TensorRT lacks
        assert ("FP16" in plan.builder_flags) == (precision == "fp16" and fp16 and constraints)
        fp16_onnx = precision == "fp16" and plan.strongly_typed
        assert plan.onnx_file == ("unet.fp16.onnx" if fp16_onnx else "unet.onnx")
        assert ("VERSION_COMPATIBLE" in plan.builder_flags) == lean
        assert plan.optimization_level == 3


def test_bad_precision_and_optimization_level():
    with pytest.raises(PndmError, match="not 'bf16'"):
        plan_build(TRT11, precision="bf16", batch=BATCH, image_shape=IMAGE)
    with pytest.raises(PndmError, match="optimization level 6"):
        plan_build(TRT11, precision="fp16", batch=BATCH, image_shape=IMAGE, optimization_level=6)


def test_capabilities_are_read_from_the_module():
    trt10 = SimpleNamespace(__version__="10.3.0.26",
                            BuilderFlag=SimpleNamespace(FP16=1, OBEY_PRECISION_CONSTRAINTS=2),
                            NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=1))
    trt11 = SimpleNamespace(__version__="11.4.0.106", BuilderFlag=SimpleNamespace(VERSION_COMPATIBLE=1),
                            NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=1))
    assert detect_capabilities(trt10) == TRT10.__class__("10.3.0.26", True, True, True)
    assert detect_capabilities(trt11) == TRT11.__class__("11.4.0.106", False, True, False)
    assert detect_capabilities(trt11).major == 11


def test_real_lean_module_has_no_fp16_flag():
    trt = pytest.importorskip("tensorrt_lean")
    caps = detect_capabilities(trt)
    assert caps.major >= 10
    if caps.major >= 11:
        assert not caps.has_fp16_flag


def test_no_builder_without_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    trt, reason = trt_build.import_builder()
    assert trt is None and reason.startswith("no CUDA device")
    plan = plan_build(TRT11, precision="fp16", batch=BATCH, image_shape=IMAGE)
    with pytest.raises(PndmError, match="cannot build a TensorRT plan: no CUDA device"):
        trt_build.build_plan(plan, tmp_path, tmp_path / "unet.plan")
    assert not (tmp_path / "unet.plan").exists()


class _Layer:
    def __init__(self, type, op, inputs, output):
        self.type, self.op, self.precision, self.outputs = type, op, None, {}
        self.inputs = [SimpleNamespace(name=name) for name in inputs]
        self.output = SimpleNamespace(name=output)
        self.num_inputs, self.num_outputs = len(inputs), 1

    def get_input(self, index):
        return self.inputs[index]

    def get_output(self, index):
        return self.output

    def set_output_type(self, index, dtype):
        self.outputs[index] = dtype


class _Recorder:
    """A stand-in TensorRT module that records the calls the API layer makes."""

    def __init__(self, strongly_typed: bool):
        self.calls: list[tuple] = []
        self.__version__ = "11.4.0.106" if strongly_typed else "10.3.0.26"
        rec = self
        self.NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=1)
        self.BuilderFlag = SimpleNamespace(FP16="FP16", OBEY_PRECISION_CONSTRAINTS="OBEY",
                                           VERSION_COMPATIBLE="VC", EXCLUDE_LEAN_RUNTIME="ELR")
        self.LayerType = SimpleNamespace(NORMALIZATION="norm", SOFTMAX="softmax", UNARY="unary")
        self.UnaryOperation = SimpleNamespace(SIN="sin", COS="cos", EXP="exp")
        self.float32 = "float32"
        self.LayerType.ELEMENTWISE, self.LayerType.CONSTANT = "elementwise", "constant"
        self.layers = [_Layer(*spec) for spec in (
            ("constant", None, [], "freqs"),
            ("elementwise", None, ["t", "freqs"], "args"),  # t * freq: upstream of sin, must be fp32
            ("unary", "sin", ["args"], "sin"),
            ("conv", None, ["x"], "h"),
            ("norm", None, ["h"], "hn"),
            ("unary", "exp", ["hn"], "e"),
        )]

        class IUnaryLayer(_Layer):  # the API layer downcasts unary layers to read .op
            pass

        self.IUnaryLayer = IUnaryLayer

        class Logger:
            WARNING = 2

            def __init__(self, level):
                pass

        self.Logger = Logger

        class Config:
            def set_flag(self, flag):
                rec.calls.append(("set_flag", flag))

            def add_optimization_profile(self, profile):
                rec.calls.append(("add_optimization_profile",))

            def create_timing_cache(self, data):
                rec.calls.append(("create_timing_cache", data))
                return "cache"

            def set_timing_cache(self, cache, ignore_mismatch):
                rec.calls.append(("set_timing_cache", cache, ignore_mismatch))

            def get_timing_cache(self):
                return SimpleNamespace(serialize=lambda: b"new cache")

            def __setattr__(self, name, value):
                rec.calls.append(("config." + name, value))

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                rec.calls.append(("create_network", flags))
                return SimpleNamespace(num_layers=len(rec.layers), get_layer=lambda i: rec.layers[i])

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return SimpleNamespace(set_shape=lambda *args: rec.calls.append(("set_shape", *args)))

            def build_serialized_network(self, network, config):
                return b"plan bytes"

        class OnnxParser:
            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                rec.calls.append(("parse_from_file", path.rsplit("/", 1)[-1]))
                return True

        self.Builder, self.OnnxParser = Builder, OnnxParser


@pytest.mark.parametrize("strongly_typed", [True, False])
def test_api_layer_replays_the_plan(tmp_path, monkeypatch, strongly_typed):
    fake = _Recorder(strongly_typed)
    monkeypatch.setattr(trt_build, "import_builder", lambda: (fake, None))
    monkeypatch.setattr(trt_build, "cuda_device_name", lambda: "Fake GPU")
    caps = detect_capabilities(fake) if not strongly_typed else TRT11
    plan = plan_build(caps, precision="fp16", batch=parse_batch("1:2:8"), image_shape=(3, 8, 8), lean=True)
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old cache")
    entry = trt_build.build_plan(plan, tmp_path, tmp_path / "unet.plan", cache, log=lambda s: None)
    assert (tmp_path / "unet.plan").read_bytes() == b"plan bytes"
    assert cache.read_bytes() == b"new cache"
    assert ("create_network", 2 if strongly_typed else 0) in fake.calls
    assert ("parse_from_file", "unet.fp16.onnx" if strongly_typed else "unet.onnx") in fake.calls
    flags = [c[1] for c in fake.calls if c[0] == "set_flag"]
    assert flags == (["VC", "ELR"] if strongly_typed else ["FP16", "OBEY", "VC", "ELR"])
    assert ("set_shape", "x", (1, 3, 8, 8), (2, 3, 8, 8), (8, 3, 8, 8)) in fake.calls
    assert ("set_shape", "t", (1,), (2,), (8,)) in fake.calls
    assert ("config.builder_optimization_level", 3) in fake.calls
    assert ("create_timing_cache", b"old cache") in fake.calls
    pinned = [layer.type for layer in fake.layers if layer.precision == layer.outputs.get(0) == "float32"]
    # conv and exp stay free; t * freq and its constant are pinned with sin
    assert pinned == ([] if strongly_typed else ["constant", "elementwise", "unary", "norm"])
    assert entry["gpu"] == "Fake GPU" and entry["lean"] and entry["precision"] == "fp16"


@pytest.mark.trt
def test_real_build_of_a_tiny_unet(tmp_path):
    """On a TensorRT + CUDA machine: export a tiny UNet and build, deserialize and run its plan."""
    from pndm.export.build import ExportOptions, build_engines
    from pndm.models.ddpm_unet import DDPMUNet, DDPMUNetConfig
    from pndm.models.spec import ModelSpec

    config = DDPMUNetConfig(ch=32, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(8,), resolution=8)
    spec = ModelSpec("ddpm", config.to_dict(), (3, 8, 8), "linear", 1000, "tiny", "random")
    cache = tmp_path / "timing.cache"
    options = ExportOptions(out=tmp_path / "o", precision="fp16", batch=parse_batch("1:2:4"), trt="on",
                            timing_cache=cache, calibration_steps=3, calibration_count=1)
    result = build_engines(DDPMUNet(config).eval(), spec, options)
    entry = result.manifest.engines["unet.fp16.plan"].to_dict()
    assert entry["precision"] == "fp16" and entry["gpu"]
    assert cache.stat().st_size > 0
    import tensorrt as trt

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine((tmp_path / "o" / "unet.fp16.plan").read_bytes())
    names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
    assert names == {"x", "t", "eps"}
    assert tuple(engine.get_tensor_profile_shape("x", 0)[2]) == (4, 3, 8, 8)
