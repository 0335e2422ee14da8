"""The batch range an engine accepts: ``--batch MIN:OPT:MAX`` (TensorRT's optimization profile)."""

from __future__ import annotations

from dataclasses import dataclass

from pndm.errors import PndmError

DEFAULT_BATCH = "1:4:64"


@dataclass(frozen=True)
class BatchRange:
    """Smallest, typical (TensorRT tunes its kernels for it) and largest batch size."""

    min: int
    opt: int
    max: int

    def __post_init__(self):
        if not 1 <= self.min <= self.opt <= self.max:
            raise PndmError(
                f"invalid batch range {self.min}:{self.opt}:{self.max}: "
                "need 1 <= MIN <= OPT <= MAX, e.g. --batch 1:4:64"
            )

    def to_dict(self) -> dict[str, int]:
        return {"min": self.min, "opt": self.opt, "max": self.max}


def parse_batch(text: str) -> BatchRange:
    """``"MIN:OPT:MAX"`` (or a single ``"N"`` for a fixed batch) -> BatchRange."""
    parts = text.strip().split(":")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise PndmError(f"invalid batch range {text!r}: write MIN:OPT:MAX with integers, e.g. --batch 1:4:64")
    return BatchRange(*values)
