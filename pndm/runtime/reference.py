"""Finding the PyTorch fp32 reference for an engine: given explicitly, or through its manifest.

The manifest's ``model.source`` says where the exported weights came from: the embedded default
model, a named model, a checkpoint file whose SHA-256 must still match, a diffusers folder (every
file read at export listed with its SHA-256 under ``files``), or a user module ``MODULE:FACTORY``
(rebuilt from the manifest's image shape, schedule, prediction and class count, with its weights
file and ``.py`` file hashed). Random-init exports carry their weights beside the engine
(``manifest["reference"]``). A ``--reference`` may also be an fp32 ONNX engine.
"""

from __future__ import annotations

from pathlib import Path

from pndm.errors import EngineError
from pndm.fileio import sha256_file
from pndm.runtime.engines.base import Engine
from pndm.runtime.loader import load_engine, load_torch_model, torch_engine


def _check_files(source: dict) -> None:
    """Every file the export read (``source["files"]``: path relative to ``source["path"]``) is unchanged."""
    base = Path(source.get("path") or ".")
    for name, sha in (source.get("files") or {}).items():
        path = Path(name) if Path(name).is_absolute() else base / name
        if not path.is_file():
            raise EngineError(f"{path}, which this engine was exported from, is gone: pass --reference PATH")
        if sha256_file(path) != sha:
            raise EngineError(f"{path} changed since this engine was exported (SHA-256 differs): "
                              "pass --reference with the original model")


def _module_reference(manifest: dict, device) -> Engine:
    """The user module of a ``module`` source, rebuilt as it was exported."""
    from pndm.models.user_module import load_module
    from pndm.schedules import ScheduleSpec

    model_info, image = manifest["model"], manifest["image"]
    source = model_info["source"]
    model, spec = load_module(source["module"], weights=source.get("path"),
                              image_shape=(image["channels"], image["height"], image["width"]),
                              schedule=ScheduleSpec.from_dict(manifest["schedule"], "manifest schedule"),
                              prediction=model_info.get("prediction", "epsilon"),
                              num_classes=model_info.get("num_classes"))
    return torch_engine(model, spec, source["module"], device)


def find_reference(
    candidate: Engine, given: str | None = None, device="auto", threads: int | None = None
) -> Engine:
    """The reference engine for ``candidate`` (see module doc); ``threads`` for an ONNX reference."""
    if given:
        reference = load_engine(given, device, threads=threads)
        if reference.precision != "fp32":
            raise EngineError(
                f"the reference {given} is {reference.precision}; give an fp32 checkpoint or ONNX"
            )
        return reference
    manifest = candidate.manifest
    if manifest is None:
        raise EngineError(
            f"{candidate.path} has no manifest to find its reference: pass --reference CHECKPOINT"
        )
    engine_dir = Path(candidate.path).parent
    if manifest.get("reference"):
        return load_torch_model(engine_dir / manifest["reference"], device)
    source = manifest["model"]["source"]
    kind = source.get("kind")
    if kind == "default":
        return load_torch_model("default", device)
    if kind == "named" and source.get("name"):
        return load_torch_model(source["name"], device)
    if kind == "checkpoint" and source.get("path"):
        path = Path(source["path"])
        if not path.exists():
            raise EngineError(
                f"the checkpoint this engine was exported from ({path}) is gone: pass --reference PATH"
            )
        if source.get("sha256") and path.is_file() and sha256_file(path) != source["sha256"]:
            raise EngineError(
                f"{path} no longer has the weights this engine was exported from (SHA-256 differs): "
                "pass --reference with the original checkpoint"
            )
        return load_torch_model(path, device)
    if kind == "diffusers" and source.get("path"):
        _check_files(source)
        return load_torch_model(source["path"], device)
    if kind == "module" and source.get("module"):
        _check_files(source)
        return _module_reference(manifest, device)
    raise EngineError(
        f"the manifest does not say where the reference weights are (source {source}): pass --reference"
    )
