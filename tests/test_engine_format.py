"""pndm.engine_format: the typed manifest (v2, v1 still read), file names, hashes, atomic write, merge."""

from __future__ import annotations

import copy
import json

import pytest

from pndm.engine_format import (
    FORMAT,
    BatchSpec,
    EngineEntry,
    IOSpec,
    Manifest,
    ModelInfo,
    ScheduleSpec,
    Source,
    check_engine_file,
    engine_file_name,
    merge,
    read_manifest,
    write_manifest,
)
from pndm.errors import EngineError
from pndm.fileio import sha256_file


def example(num_classes=None) -> Manifest:
    manifest = Manifest.new(
        model=ModelInfo("ddpm", {"ch": 32}, Source("random"), num_classes=num_classes),
        image_shape=(3, 32, 32), schedule=ScheduleSpec("linear", 1000), batch=BatchSpec(1, 4, 64))
    manifest.engines["unet.onnx"] = EngineEntry("onnx", "fp32", "cd" * 32, extra={"opset": 20})
    return manifest


def v1_dict() -> dict:
    """A manifest as pndm-engine/1 wrote it."""
    data = example().to_dict()
    data["format"] = "pndm-engine/1"
    data["schedule"] = {"name": "linear", "T": 1000}
    del data["model"]["prediction"], data["model"]["num_classes"]
    return data


def test_round_trip_and_contract_fields(tmp_path):
    path = write_manifest(tmp_path, example())
    assert path == tmp_path / "manifest.json" and [p.name for p in tmp_path.iterdir()] == ["manifest.json"]
    read = read_manifest(tmp_path)
    assert read.to_dict() == {**example().to_dict(), "created": read.created}
    assert read_manifest(tmp_path / "unet.onnx").format == FORMAT  # the engine file need not exist
    data = json.loads(path.read_text())
    assert data["format"] == "pndm-engine/2"
    assert data["schedule"] == {"name": "linear", "T": 1000, "beta_start": 1e-4, "beta_end": 0.02,
                                "betas": None}  # a named range is written out, not left implicit
    assert data["model"]["prediction"] == "epsilon" and data["model"]["num_classes"] is None
    assert data["io"] == {
        "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 3, 32, 32]},
                   {"name": "t", "dtype": "float32", "shape": ["batch"]}],
        "outputs": [{"name": "eps", "dtype": "float32", "shape": ["batch", 3, 32, 32]}],
    }
    assert data["engines"]["unet.onnx"] == {"kind": "onnx", "precision": "fp32", "sha256": "cd" * 32,
                                            "opset": 20}
    assert data["image"] == {"channels": 3, "height": 32, "width": 32}
    assert set(data["versions"]) == {"pndm", "torch", "onnx", "onnxruntime", "tensorrt"}
    assert data["created"].endswith("Z")


def test_class_conditional_io_has_class_labels():
    io = example(num_classes=10).io
    assert io.input_names == ("x", "t", "class_labels")
    assert io.inputs[2].to_dict() == {"name": "class_labels", "dtype": "int64", "shape": ["batch"]}
    Manifest.from_dict(example(num_classes=10).to_dict())  # validates


def test_version_1_is_read_as_an_epsilon_model():
    manifest = Manifest.from_dict(v1_dict())
    assert manifest.format == "pndm-engine/1"
    assert manifest.model.prediction == "epsilon" and manifest.schedule == ScheduleSpec("linear", 1000)
    assert manifest.to_dict()["format"] == FORMAT  # written back as version 2


def test_unknown_fields_round_trip():
    data = example().to_dict()
    data["model"]["sigma_data"] = 0.5
    data["engines"]["unet.onnx"]["quantization"] = {"placement": "inputs"}
    data["notes"] = "kept"
    again = Manifest.from_dict(data).to_dict()
    assert again["model"]["sigma_data"] == 0.5 and again["notes"] == "kept"
    assert again["engines"]["unet.onnx"]["quantization"] == {"placement": "inputs"}


@pytest.mark.parametrize("change, problem", [
    (lambda m: m.update(format="pndm-engine/0"), "format is 'pndm-engine/0'"),
    (lambda m: m.pop("io"), "missing or malformed 'io' section"),
    (lambda m: m["batch"].update(min=8), "batch must hold 1 <= min <= opt <= max"),
    (lambda m: m["image"].update(height=0), "image.height must be a positive integer"),
    (lambda m: m.pop("schedule"), "schedule needs name and T"),
    (lambda m: m["schedule"].update(T="1000"), "schedule: the number of diffusion steps T must be"),
    (lambda m: m["schedule"].update(name="custom"), "schedule: a custom schedule needs its betas"),
    (lambda m: m["schedule"].update(name="custom", T=2, betas=[0.1, 2.0]), r"betas must all lie in \(0, 1\)"),
    (lambda m: m["schedule"].update(name="custom", T=3, betas=[0.1, 0.2]), "a custom schedule has T = len"),
    (lambda m: m["schedule"].update(name="sigmoid"), "unknown schedule 'sigmoid'"),
    (lambda m: m["io"]["inputs"].reverse(), r"io.inputs must be named \['x', 't'\]"),
    (lambda m: m["model"]["source"].update(kind="url"), "model.source.kind must be one of"),
    (lambda m: m["model"].update(prediction="x0"), "model.prediction must be one of"),
    (lambda m: m["model"].update(num_classes=10), r"io.inputs must be named \['x', 't', 'class_labels'\]"),
    (lambda m: m["engines"]["unet.onnx"].update(kind="tflite"), r"engines\['unet.onnx'\].kind"),
    (lambda m: m["engines"]["unet.onnx"].update(precision="int4"), r"engines\['unet.onnx'\].precision"),
    (lambda m: m["engines"]["unet.onnx"].update(kind="aoti"), r"kind is 'aoti' but the file type is 'onnx'"),
    (lambda m: m["engines"]["unet.onnx"].pop("sha256"), r"engines\['unet.onnx'\] has no sha256.*refused"),
])
def test_validation_names_the_problem(change, problem):
    data = copy.deepcopy(example().to_dict())
    change(data)
    with pytest.raises(EngineError, match=problem):
        Manifest.from_dict(data, "m.json")


def test_invalid_manifest_is_not_written(tmp_path):
    manifest = example()
    manifest.batch.max = 0
    with pytest.raises(EngineError):
        write_manifest(tmp_path, manifest)
    assert list(tmp_path.iterdir()) == []


def test_missing_and_corrupt_manifests(tmp_path):
    with pytest.raises(EngineError, match="no manifest beside the engine"):
        read_manifest(tmp_path / "unet.onnx")
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(EngineError, match="unreadable manifest"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps([1, 2]))
    with pytest.raises(EngineError, match="must be a JSON object"):
        read_manifest(tmp_path)


def test_entry_and_file_checks(tmp_path):
    assert example().entry("/x/unet.onnx").precision == "fp32"
    with pytest.raises(EngineError, match=r"unet.fp16.plan: not listed in its manifest \(engines: unet.onnx"):
        example().entry("unet.fp16.plan")
    engine = tmp_path / "unet.onnx"
    engine.write_bytes(b"graph")
    manifest = example()
    with pytest.raises(EngineError, match="does not match the SHA-256 in its manifest"):
        check_engine_file(engine, manifest)
    manifest.engines["unet.onnx"].sha256 = sha256_file(engine)
    assert check_engine_file(engine, manifest).kind == "onnx"


def test_engine_file_names():
    assert engine_file_name("onnx", "fp32") == "unet.onnx"
    assert engine_file_name("onnx", "fp16") == "unet.fp16.onnx"
    assert engine_file_name("onnx", "int8") == "unet.int8.onnx"
    assert engine_file_name("onnx", "int8", cpu_form=True) == "unet.int8-cpu.onnx"
    assert engine_file_name("aoti", "bf16") == "unet.bf16.pt2"
    assert engine_file_name("aoti", "fp16", device="cuda") == "unet.fp16.cuda.pt2"
    assert engine_file_name("tensorrt", "fp8") == "unet.fp8.plan"
    with pytest.raises(EngineError):
        engine_file_name("tflite", "fp32")


def _with_engine(manifest: Manifest, folder, name: str, kind: str, precision: str, data: bytes) -> Manifest:
    (folder / name).write_bytes(data)
    manifest.engines[name] = EngineEntry(kind, precision, sha256_file(folder / name))
    manifest.verification[name] = {"rel_l2": 0.0}
    return manifest


def test_merge_keeps_older_engines_of_the_same_model(tmp_path):
    old = _with_engine(example(), tmp_path, "unet.onnx", "onnx", "fp32", b"fp32")
    old = _with_engine(old, tmp_path, "unet.bf16.pt2", "aoti", "bf16", b"bf16")
    new = _with_engine(example(), tmp_path, "unet.fp16.onnx", "onnx", "fp16", b"fp16")
    new.engines["unet.onnx"] = EngineEntry("onnx", "fp32", "ab" * 32)  # re-exported: the new entry wins
    merged, dropped = merge(old, new, tmp_path)
    assert set(merged.engines) == {"unet.onnx", "unet.fp16.onnx", "unet.bf16.pt2"} and dropped == []
    assert merged.engines["unet.onnx"].sha256 == "ab" * 32
    assert set(merged.verification) == {"unet.fp16.onnx", "unet.bf16.pt2"}


def test_merge_drops_missing_changed_and_other_model_engines(tmp_path):
    old = _with_engine(example(), tmp_path, "unet.bf16.pt2", "aoti", "bf16", b"bf16")
    old = _with_engine(old, tmp_path, "unet.fp16.onnx", "onnx", "fp16", b"fp16")
    (tmp_path / "unet.bf16.pt2").unlink()
    (tmp_path / "unet.fp16.onnx").write_bytes(b"changed")
    merged, dropped = merge(old, example(), tmp_path)
    assert set(merged.engines) == {"unet.onnx"} and sorted(dropped) == ["unet.bf16.pt2", "unet.fp16.onnx"]
    old = _with_engine(example(), tmp_path, "unet.bf16.pt2", "aoti", "bf16", b"bf16")
    other = example()
    other.model.config = {"ch": 64}
    merged, dropped = merge(old, other, tmp_path)
    assert "unet.bf16.pt2" not in merged.engines and dropped == ["unet.bf16.pt2"]
    assert merge(None, other, tmp_path) == (other, [])


def test_io_spec_for_image():
    io = IOSpec.for_image((1, 28, 28))
    assert io.input_names == ("x", "t") and io.output_name == "eps"
    assert io.outputs[0].shape == ["batch", 1, 28, 28]


def test_model_notes_round_trip_and_are_checked(tmp_path):
    manifest = example()
    assert "notes" not in manifest.to_dict()["model"]  # no notes: no field
    manifest.model.notes = ["scheduler/scheduler_config.json: clip_sample=true (...)"]
    read = read_manifest(write_manifest(tmp_path, manifest).parent)
    assert read.model.notes == manifest.model.notes
    data = json.loads((tmp_path / "manifest.json").read_text())
    data["model"]["notes"] = "not a list"
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(EngineError, match="model.notes must be a list of strings"):
        read_manifest(tmp_path)
