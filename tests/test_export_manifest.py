"""manifest.json: written atomically, read from a directory or an engine path, validated with clear errors."""

from __future__ import annotations

import copy
import json

import pytest

from pndm.errors import EngineError
from pndm.export.manifest import (
    FORMAT,
    engine_entry,
    new_manifest,
    read_manifest,
    validate_manifest,
    write_manifest,
)


def example() -> dict:
    manifest = new_manifest(architecture="ddpm", config={"ch": 32}, image_shape=(3, 32, 32),
                            schedule="linear", T=1000, batch={"min": 1, "opt": 4, "max": 64},
                            source={"kind": "named", "name": "cifar10", "path": "/m/ema_cifar10.ckpt",
                                    "sha256": "ab" * 32})
    manifest["engines"]["unet.onnx"] = {"kind": "onnx", "precision": "fp32", "sha256": "cd" * 32, "opset": 20}
    return manifest


def test_round_trip_from_directory_and_engine_path(tmp_path):
    path = write_manifest(tmp_path, example())
    assert path == tmp_path / "manifest.json"
    assert read_manifest(tmp_path) == example() | {"created": read_manifest(tmp_path)["created"]}
    assert read_manifest(tmp_path / "unet.onnx")["format"] == FORMAT  # engine file need not exist
    assert read_manifest(path)["schedule"] == {"name": "linear", "T": 1000}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_contract_fields():
    manifest = example()
    assert manifest["io"] == {
        "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 3, 32, 32]},
                   {"name": "t", "dtype": "float32", "shape": ["batch"]}],
        "outputs": [{"name": "eps", "dtype": "float32", "shape": ["batch", 3, 32, 32]}],
    }
    assert manifest["image"] == {"channels": 3, "height": 32, "width": 32}
    assert set(manifest["versions"]) == {"pndm", "torch", "onnx", "onnxruntime", "tensorrt"}
    assert manifest["created"].endswith("Z")


@pytest.mark.parametrize("change, problem", [
    (lambda m: m.update(format="pndm-engine/0"), "format is 'pndm-engine/0'"),
    (lambda m: m.pop("io"), "missing or malformed 'io' section"),
    (lambda m: m["batch"].update(min=8), "batch must hold 1 <= min <= opt <= max"),
    (lambda m: m["image"].update(height=0), "image.height must be a positive integer"),
    (lambda m: m["schedule"].update(T="1000"), "schedule.T must be a positive integer"),
    (lambda m: m["io"]["inputs"].reverse(), r"io.inputs must be named \['x', 't'\]"),
    (lambda m: m["model"]["source"].update(kind="url"), "model.source.kind must be one of"),
    (lambda m: m["engines"]["unet.onnx"].update(kind="tflite"), r"engines\['unet.onnx'\].kind"),
    (lambda m: m["engines"]["unet.onnx"].update(precision="int8"), r"engines\['unet.onnx'\].precision"),
])
def test_validation_names_the_problem(change, problem):
    manifest = copy.deepcopy(example())
    change(manifest)
    with pytest.raises(EngineError, match=problem):
        validate_manifest(manifest, "m.json")


def test_invalid_manifest_is_not_written(tmp_path):
    manifest = example()
    manifest["batch"]["max"] = 0
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


def test_engine_entry():
    assert engine_entry(example(), "/x/unet.onnx")["precision"] == "fp32"
    with pytest.raises(EngineError, match=r"unet.plan: not listed in its manifest \(engines: unet.onnx\)"):
        engine_entry(example(), "unet.plan")
