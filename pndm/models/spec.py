"""``ModelSpec``: what a loaded model is and where its weights came from (docs/CONTRACTS.md)."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any

from pndm.errors import PndmError
from pndm.prediction import check_prediction
from pndm.schedules import ScheduleSpec

SOURCE_KINDS = ("default", "named", "checkpoint", "random", "diffusers", "module")


@dataclass(frozen=True)
class ModelSpec:
    """Description of a loaded model.

    ``source`` says in words what was loaded (a path, a named model, or "random init ...");
    ``source_kind`` is one of :data:`SOURCE_KINDS` (the manifest's ``model.source.kind``);
    ``sha256`` is the content hash of the weights file (None for random init); ``path`` the
    weights file (a diffusers source: the folder), ``name`` the named model if any; ``files``
    maps every file the reference needs (relative to ``path`` for a folder) to its SHA-256;
    ``module`` is a user module's ``MODULE:FACTORY``.

    The schedule is ``schedule_spec`` (a :class:`ScheduleSpec`); ``schedule`` (its name) and
    ``T`` mirror it. ``prediction`` is the model's native output: "epsilon" | "v_prediction" |
    "sample"; ``num_classes`` is set for class-conditional models (a third input ``class_labels``).
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
    schedule_spec: ScheduleSpec | None = None
    prediction: str = "epsilon"
    num_classes: int | None = None
    files: dict[str, str] | None = None
    module: str | None = None

    def __post_init__(self) -> None:
        if self.schedule_spec is None:
            object.__setattr__(self, "schedule_spec", ScheduleSpec(self.schedule, self.T))
        elif (self.schedule_spec.name, self.schedule_spec.T) != (self.schedule, self.T):
            raise PndmError(f"ModelSpec: schedule {self.schedule!r} T={self.T} does not match its "
                            f"schedule_spec ({self.schedule_spec.describe()}); use replace_schedule()")
        if self.source_kind not in SOURCE_KINDS:
            raise PndmError(f"ModelSpec: source_kind {self.source_kind!r} is not one of "
                            f"{', '.join(SOURCE_KINDS)}")
        check_prediction(self.prediction)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_shape"] = list(self.image_shape)
        d["notes"] = list(self.notes)
        d["schedule_spec"] = self.schedule_spec.to_dict()
        return d

    def manifest_source(self) -> dict[str, Any]:
        """The engine manifest's ``model.source`` object: kind, name, path, sha256 (+ files, module)."""
        source = {"kind": self.source_kind, "name": self.name, "path": self.path, "sha256": self.sha256}
        if self.files is not None:
            source["files"] = dict(self.files)
        if self.module is not None:
            source["spec"] = self.module
        return source

    def replace_schedule(self, schedule: ScheduleSpec) -> ModelSpec:
        """A copy with ``schedule`` (its name, T and the spec itself)."""
        return dataclasses.replace(self, schedule=schedule.name, T=schedule.T, schedule_spec=schedule)

    def manifest_model(self) -> dict[str, Any]:
        """The manifest's ``model`` fields this spec decides beyond architecture/config/source."""
        return {"prediction": self.prediction, "num_classes": self.num_classes}

