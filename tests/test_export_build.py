"""The export pipeline end to end on a tiny UNet: files, manifest, verification, precision, atomicity."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import load_file

from pndm.engine_format import read_manifest
from pndm.errors import PndmError
from pndm.export import build as build_module
from pndm.export.batch import parse_batch
from pndm.export.build import ExportOptions, build_engines
from pndm.export.precision import check_onnx_policy, onnx_input_dtypes
from pndm.export.verify import FP32_REL_L2_LIMIT, require_fp32_agreement
from pndm.fileio import sha256_file
from pndm.models.ddpm_unet import DDPMUNet, DDPMUNetConfig
from pndm.models.spec import ModelSpec

TINY = DDPMUNetConfig(ch=32, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(8,), resolution=8, dropout=0.0)


def tiny_model() -> tuple[DDPMUNet, ModelSpec]:
    torch.manual_seed(0)
    spec = ModelSpec(architecture="ddpm", config=TINY.to_dict(), image_shape=(3, 8, 8), schedule="linear",
                     T=1000, source="tiny test model", source_kind="random", name="tiny")
    return DDPMUNet(TINY).eval(), spec


def tiny_options(out, **overrides) -> ExportOptions:
    fields = dict(out=out, precision="fp16", batch=parse_batch("1:2:4"), trt="auto", calibration_steps=5,
                  calibration_count=2)
    return ExportOptions(**{**fields, **overrides})


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("engines")
    (out / "old.txt").write_text("from an older run")
    model, spec = tiny_model()
    lines = []
    result = build_engines(model, spec, tiny_options(out), log=lines.append)
    return out, model, result, lines


def test_writes_the_engine_directory(exported):
    out, _, result, _ = exported
    names = {p.name for p in out.iterdir()}
    assert names == {"old.txt", "unet.onnx", "unet.fp16.onnx", "manifest.json", "calibration.safetensors",
                     "reference.safetensors", "reference.json"}
    assert (out / "old.txt").read_text() == "from an older run"  # only this run's files are replaced
    assert "TensorRT plan skipped" in result.notes[0]


def test_manifest_describes_the_engines(exported):
    out, _, _, _ = exported
    manifest = read_manifest(out / "unet.fp16.onnx")
    assert manifest == read_manifest(out)
    assert manifest.format == "pndm-engine/2" and manifest.model.prediction == "epsilon"
    manifest = manifest.to_dict()
    assert manifest["image"] == {"channels": 3, "height": 8, "width": 8}
    assert manifest["batch"] == {"min": 1, "opt": 2, "max": 4}
    assert manifest["io"]["inputs"][0] == {"name": "x", "dtype": "float32", "shape": ["batch", 3, 8, 8]}
    assert manifest["model"]["source"]["kind"] == "random"
    assert manifest["reference"] == "reference.safetensors"
    for name in ("unet.onnx", "unet.fp16.onnx"):
        assert manifest["engines"][name]["sha256"] == sha256_file(out / name)
    assert manifest["engines"]["unet.onnx"]["opset"] == 20
    assert manifest["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert manifest["calibration"]["pairs"] == 10  # DDIM, 5 steps, 2 trajectories


def test_fp32_onnx_matches_torch_at_every_batch_size(exported):
    out, model, result, _ = exported
    assert result.manifest.verification["unet.onnx"]["rel_l2"] <= FP32_REL_L2_LIMIT
    session = ort.InferenceSession(str(out / "unet.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["x", "t"]
    assert [o.name for o in session.get_outputs()] == ["eps"]
    generator = torch.Generator().manual_seed(1)
    for batch in (1, 3, 7):  # dynamic batch, even beyond the profile's max (ONNX itself has no limit)
        x = torch.randn(batch, 3, 8, 8, generator=generator)
        t = torch.rand(batch, generator=generator) * 999
        (eps,) = session.run(None, {"x": x.numpy(), "t": t.numpy()})
        ref = model(x, t).detach().numpy()
        assert eps.dtype == np.float32
        assert np.linalg.norm(eps - ref) / np.linalg.norm(ref) < 1e-5


def test_fp16_onnx_follows_the_precision_policy(exported):
    out, _, result, _ = exported
    graph = onnx.load(str(out / "unet.fp16.onnx"))
    dtypes = onnx_input_dtypes(graph)
    assert dtypes["Conv"] == {"float16": dtypes["Conv"]["float16"]} and dtypes["Conv"]["float16"] > 5
    assert set(dtypes["Softmax"]) == {"float32"}
    assert set(dtypes["Sin"]) == set(dtypes["Cos"]) == {"float32"}
    assert set(dtypes["InstanceNormalization"]) == {"float32"}
    check_onnx_policy(graph)
    stats = result.manifest.verification["unet.fp16.onnx"]
    assert 1e-5 < stats["rel_l2"] < 5e-3  # really fp16 (not a copy of fp32), and still close
    assert len(stats["by_t"]) == 4 and sum(r["count"] for r in stats["by_t"]) == stats["count"]


def test_policy_check_rejects_a_plain_fp32_graph(exported):
    out, _, _, _ = exported
    with pytest.raises(PndmError, match="Conv runs in"):
        check_onnx_policy(onnx.load(str(out / "unet.onnx")))


def test_reference_weights_are_the_exported_ones(exported):
    out, model, _, _ = exported
    saved = load_file(str(out / "reference.safetensors"))
    assert saved.keys() == model.state_dict().keys()
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    assert json.loads((out / "reference.json").read_text())["architecture"] == "ddpm"


def test_progress_and_table(exported):
    _, _, result, lines = exported
    assert any("verifying unet.fp16.onnx" in line for line in lines)
    assert "[600, 1000)" in result.table and "unet.fp16.onnx" in result.table


def test_a_wrong_fp32_export_fails_with_numbers_and_leaves_nothing(exported, tmp_path, monkeypatch):
    """A graph with one perturbed weight must fail verification; DIR keeps only its older files."""
    source, _, _, _ = exported
    broken = onnx.load(str(source / "unet.onnx"))
    weight = next(init for init in broken.graph.initializer if len(init.dims) == 4)
    array = onnx.numpy_helper.to_array(weight).copy()
    array.flat[0] += 0.05
    weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
    monkeypatch.setattr(build_module, "export_onnx", lambda *a, **k: broken)
    out = tmp_path / "engines"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    model, spec = tiny_model()
    expected = r"unet.onnx disagrees with the PyTorch model: relative L2 .* > 1e-05 \(max abs"
    with pytest.raises(PndmError, match=expected):
        build_engines(model, spec, tiny_options(out, precision="fp32"), log=lambda s: None)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_a_failed_export_removes_the_directory_it_created(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise PndmError("exporter failed")

    monkeypatch.setattr(build_module, "export_onnx", fail)
    model, spec = tiny_model()
    out = tmp_path / "new" / "engines"
    with pytest.raises(PndmError, match="exporter failed"):
        options = tiny_options(out, calibration_steps=2, calibration_count=1)
        build_engines(model, spec, options, log=lambda s: None)
    assert not out.exists()


def test_fp32_limit_names_the_numbers():
    with pytest.raises(PndmError, match=r"relative L2 0.002 > 1e-05 \(max abs 0.01\)"):
        require_fp32_agreement("unet.onnx", {"rel_l2": 2e-3, "max_abs": 1e-2})
    require_fp32_agreement("unet.onnx", {"rel_l2": 1e-6, "max_abs": 1e-5})
    with pytest.raises(PndmError):
        require_fp32_agreement("unet.onnx", {"rel_l2": float("nan"), "max_abs": 0.0})


def test_non_finite_eps_is_refused():
    from pndm.export.verify import require_finite

    reference = torch.ones(2, 3, 4, 4)
    candidate = reference.clone()
    candidate[1, 0, 0, 0] = float("inf")
    with pytest.raises(PndmError, match="unet.fp16.onnx produces non-finite eps"):
        require_finite("unet.fp16.onnx", candidate)
    require_finite("unet.fp16.onnx", reference)
    # A finite candidate against a zero reference has an infinite relative error, but is not an overflow.
    require_finite("unet.fp16.onnx", torch.full((2, 3), 0.5))


def test_error_per_t_range():
    from pndm.export.verify import compare

    reference = torch.ones(4, 1, 2, 2)
    candidate = reference.clone()
    candidate[3] += 0.5  # only the pair at t = 950 is off
    stats = compare(candidate, reference, torch.tensor([0.0, 150.0, 450.0, 950.0]), 1000)
    assert [row["t"] for row in stats["by_t"]] == [[0, 100], [100, 300], [300, 600], [600, 1000]]
    assert [row["rel_l2"] for row in stats["by_t"]] == [0.0, 0.0, 0.0, 0.5]
    assert stats["by_t"][3]["max_abs"] == 0.5 and stats["rel_l2"] == pytest.approx(0.25)


def test_output_path_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "file"
    target.write_text("")
    model, spec = tiny_model()
    with pytest.raises(PndmError, match="is a file, not a directory"):
        build_engines(model, spec, tiny_options(target), log=lambda s: None)
    with pytest.raises(PndmError, match="not writable"):
        build_engines(model, spec, tiny_options(target / "sub"), log=lambda s: None)


def test_trt_on_without_cuda_fails_before_any_work(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    model, spec = tiny_model()
    with pytest.raises(PndmError, match="trt=on: cannot build a TensorRT plan: no CUDA device"):
        build_engines(model, spec, tiny_options(tmp_path / "o", trt="on"), log=lambda s: None)
    assert not (tmp_path / "o").exists()


def test_reference_eps_uses_the_exported_model_outputs(exported):
    """The verification reference (calibration eps) really is the model's output at the stored pairs."""
    out, model, _, _ = exported
    saved = load_file(str(out / "calibration.safetensors"))
    with torch.no_grad():
        eps = model(saved["x"], saved["t"])
    assert torch.allclose(eps, saved["eps"], rtol=1e-4, atol=1e-5)




def test_a_batch_range_torch_export_refuses_is_one_line(tmp_path, monkeypatch):
    """torch.export's constraint error (e.g. a model that only traces for batch 2..63) becomes a PndmError
    that names the range, torch's suggestion and the ways out, before any compiling."""
    from torch._dynamo.exc import UserError, UserErrorType

    from pndm.export.aoti import compile_aoti

    def refuse(*args, **kwargs):
        raise UserError(UserErrorType.CONSTRAINT_VIOLATION,
                        "Constraints violated (batch)!\n  - Not all values ...\nSuggested fixes:\n"
                        "  batch = Dim('batch', max=63)")

    monkeypatch.setattr(torch.export, "export", refuse)
    model, spec = tiny_model()
    expected = r"batch 1\.\.64 .*suggests batch = Dim\('batch', max=63\).*narrow --batch"
    with pytest.raises(PndmError, match=expected):
        compile_aoti(model, spec.image_shape, parse_batch("1:4:64"), tmp_path / "unet.bf16.pt2")
    assert not (tmp_path / "unet.bf16.pt2").exists()


def test_a_full_disk_while_compiling_a_package_is_one_line(tmp_path, monkeypatch):
    """torch reports a full disk during the AOTInductor compile or packaging as a generic RuntimeError: with
    little space left it becomes a one-line PndmError naming the folder and the fix; with space left the
    error is torch's own (a real failure, not a full disk)."""
    import shutil
    from collections import namedtuple

    from pndm.export.aoti import compile_aoti

    def fail(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 4096 vs 0")

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", fail)
    usage = namedtuple("usage", "total used free")
    model, spec = tiny_model()
    out = tmp_path / "engines" / "unet.bf16.pt2"
    out.parent.mkdir()
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**10, 10**10 - 10**6, 10**6))
    with pytest.raises(PndmError, match=r"no space left on device while compiling unet\.bf16\.pt2 .*free"):
        compile_aoti(model, spec.image_shape, parse_batch("1:2:4"), out)
    assert list(out.parent.iterdir()) == []
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**10, 10**9, 9 * 10**9))
    with pytest.raises(RuntimeError, match="unexpected pos"):
        compile_aoti(model, spec.image_shape, parse_batch("1:2:4"), out)
