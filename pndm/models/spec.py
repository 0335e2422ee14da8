"""``ModelSpec``: what a loaded model is and where its weights came from (docs/CONTRACTS.md)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelSpec:
    """Description of a loaded eps model.

    ``source`` says in words what was loaded (a path, a named model, or "random init ...");
    ``source_kind`` is one of "default" | "named" | "checkpoint" | "random" (the manifest's
    ``model.source.kind``); ``sha256`` is the content hash of the weights file (None for
    random init); ``path`` the weights file, ``name`` the named model if any.
    """

    architecture: str
    config: dict[str, Any]
    image_shape: tuple[int, int, int]
    schedule: str
    T: int
    source: str
    source_kind: str
    sha256: str | None = None
    path: str | None = None
    name: str | None = None
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_shape"] = list(self.image_shape)
        d["notes"] = list(self.notes)
        return d

    def manifest_source(self) -> dict[str, Any]:
        """The engine manifest's ``model.source`` object: kind, name, path, sha256."""
        return {"kind": self.source_kind, "name": self.name, "path": self.path, "sha256": self.sha256}
