"""Finding the PyTorch fp32 reference for an engine: given explicitly, or through its manifest.

The manifest's ``model.source`` says where the exported weights came from: the embedded default
model, a named model, a checkpoint file whose SHA-256 must still match, a diffusers folder (every
file read at export listed with its SHA-256 under ``files``, relative to the folder), or a user
module ``MODULE:FACTORY`` (``spec``; its weights and ``.py`` file hashed under ``files``), rebuilt
from the manifest's image shape, class count and model config. Random-init exports carry their
weights beside the engine (``manifest.reference``). A ``--reference`` may also be an fp32 ONNX engine.

The reference is the same model with the manifest's schedule and prediction type (what the engine
was exported as, including ``--schedule``/``--prediction`` overrides). An EDM ``.pkl`` carries code:
it was loaded with ``--trust-pickle`` at export, and is loaded again only if its SHA-256 is still the
one recorded then.
"""

from __future__ import annotations

from pathlib import Path

from pndm.engine_format import Manifest, Source
from pndm.errors import EngineError
from pndm.fileio import sha256_file
from pndm.runtime.engines.base import Engine
from pndm.runtime.loader import load_engine, load_torch_model, torch_engine


def _check_files(source: Source) -> None:
    """Every file the export read (``files``: paths relative to ``source.path``) is unchanged."""
    base = Path(source.path or ".")
    for name, sha in (source.extra.get("files") or {}).items():
        path = Path(name) if Path(name).is_absolute() else base / name
        if not path.is_file():
            raise EngineError(f"{path}, which this engine was exported from, is gone: pass reference=PATH")
        if sha256_file(path) != sha:
            raise EngineError(f"{path} changed since this engine was exported (SHA-256 differs): "
                              "pass reference= the original model")


def _overrides(manifest: Manifest) -> dict:
    """The schedule and prediction the engine was exported with, for :func:`pndm.models.load`."""
    return {"schedule": manifest.schedule, "prediction": manifest.model.prediction}


def _module_reference(manifest: Manifest, device) -> Engine:
    """The user module of a ``module`` source, rebuilt as it was exported."""
    from pndm.models.user_module import load_module

    source, config = manifest.model.source, manifest.model.config
    weights = source.path
    if config.get("denoiser") == "sigma":
        kwargs = {"denoiser": "sigma", "sigma_min": config["sigma_min"], "sigma_max": config["sigma_max"]}
    else:
        kwargs = _overrides(manifest)
    model, spec = load_module(source.spec, weights=weights, image_shape=tuple(manifest.image_shape),
                              num_classes=manifest.model.num_classes, **kwargs)
    return torch_engine(model, spec, source.spec, device)


def _named_reference(name: str, manifest: Manifest, device) -> Engine:
    """The embedded default or a named model, refused unless its weights are the ones the engine was
    exported from (``model.source.sha256``)."""
    from pndm.models import load

    model, spec = load(name, **_overrides(manifest))
    recorded = manifest.model.source.sha256
    if recorded and spec.sha256 and spec.sha256 != recorded:
        raise EngineError(
            f"the {name} model's weights ({spec.path or name}) are not the ones this engine was exported "
            "from (SHA-256 differs): re-export the engine from them, or pass reference= the original weights")
    return torch_engine(model, spec, name, device)


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
            f"{candidate.path} has no manifest to find its reference: pass reference=CHECKPOINT"
        )
    engine_dir = Path(candidate.path).parent
    if manifest.reference:
        return load_torch_model(engine_dir / manifest.reference, device, **_overrides(manifest))
    source = manifest.model.source
    if source.kind == "default":
        return _named_reference("default", manifest, device)
    if source.kind == "named" and source.name:
        return _named_reference(source.name, manifest, device)
    if source.kind == "checkpoint" and source.path:
        path = Path(source.path)
        if not path.exists():
            raise EngineError(
                f"the checkpoint this engine was exported from ({path}) is gone: pass reference=PATH"
            )
        if source.sha256 and path.is_file() and sha256_file(path) != source.sha256:
            raise EngineError(
                f"{path} no longer has the weights this engine was exported from (SHA-256 differs): "
                "pass reference= the original checkpoint"
            )
        if manifest.model.architecture == "edm":  # unchanged since the user trusted it at export
            return load_torch_model(path, device, allow_pickle=bool(source.sha256))
        return load_torch_model(path, device, **_overrides(manifest))
    if source.kind == "diffusers" and source.path:
        _check_files(source)
        return load_torch_model(source.path, device, **_overrides(manifest))
    if source.kind == "module" and source.spec:
        _check_files(source)
        return _module_reference(manifest, device)
    raise EngineError(
        f"the manifest does not say where the reference weights are (source {source.to_dict()}): "
        "pass reference=PATH"
    )
