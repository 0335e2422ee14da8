"""Finding the PyTorch fp32 reference for an engine: given explicitly, or through its manifest.

The manifest's ``model.source`` says where the exported weights came from: the embedded default
model, a named model, or a checkpoint file whose SHA-256 must still match. Random-init exports
carry their weights beside the engine (``manifest.reference``). A ``--reference`` may also be
an fp32 ONNX engine.
"""

from __future__ import annotations

from pathlib import Path

from pndm.errors import EngineError
from pndm.fileio import sha256_file
from pndm.runtime.engines.base import Engine
from pndm.runtime.loader import load_engine, load_torch_model


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
        return load_torch_model(engine_dir / manifest.reference, device)
    source = manifest.model.source
    if source.kind == "default":
        return load_torch_model("default", device)
    if source.kind == "named" and source.name:
        return load_torch_model(source.name, device)
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
        return load_torch_model(path, device)
    raise EngineError(
        f"the manifest does not say where the reference weights are (source {source.to_dict()}): "
        "pass reference=PATH"
    )
