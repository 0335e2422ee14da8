"""A noise schedule as data: the engine manifest's ``schedule`` object and what users name.

Torch-free, so :mod:`pndm.engine_format` (the manifest) and :mod:`pndm.schedules` (the betas and
alpha_bar, in torch) share one definition and one validation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pndm.errors import PndmError

SCHEDULE_NAMES = ("linear", "quad", "cosine")
SCHEDULE_KINDS = (*SCHEDULE_NAMES, "custom")
DEFAULT_BETA_RANGE = (1e-4, 0.02)  # DDPM's; what linear/quad mean when no range is given


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class ScheduleSpec:
    """A noise schedule as data: ``name`` linear | quad | cosine | custom, ``T`` steps.

    linear/quad carry their beta range (``beta_start``/``beta_end``, default DDPM's 1e-4..0.02,
    always filled in); cosine has none (s = 0.008, betas capped at 0.999); ``custom`` (and only
    custom) has explicit ``betas``, one per step, and ``T == len(betas)``.
    """

    name: str = "linear"
    T: int | None = None  # None: 1000, or len(betas) for custom
    beta_start: float | None = None
    beta_end: float | None = None
    betas: tuple[float, ...] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.name not in SCHEDULE_KINDS:
            raise PndmError(f"unknown schedule {self.name!r}: choose one of {', '.join(SCHEDULE_KINDS)}")
        if self.name == "custom":
            if self.betas is None:
                raise PndmError("a custom schedule needs its betas: pass betas (one per training step)")
            betas = tuple(float(b) for b in self.betas)
            if not all(0 < b < 1 for b in betas):
                raise PndmError("custom betas must all lie in (0, 1): fix the betas list")
            if self.T not in (len(betas), None):
                raise PndmError(f"a custom schedule has T = len(betas) = {len(betas)}, not {self.T}: drop T")
            object.__setattr__(self, "betas", betas)
            object.__setattr__(self, "T", len(betas))
            if self.beta_start is not None or self.beta_end is not None:
                raise PndmError("a custom schedule takes betas, not beta_start/beta_end: drop the range")
        elif self.betas is not None:
            raise PndmError(f"explicit betas make a 'custom' schedule, not {self.name!r}: use name='custom'")
        elif self.T is None:
            object.__setattr__(self, "T", 1000)
        if not _is_int(self.T) or self.T < 2:
            raise PndmError(f"the number of diffusion steps T must be an integer >= 2, got {self.T!r}")
        if self.name == "cosine" and (self.beta_start is not None or self.beta_end is not None):
            raise PndmError("the cosine schedule has no beta range: drop beta_start/beta_end")
        if self.name in ("linear", "quad"):
            start = DEFAULT_BETA_RANGE[0] if self.beta_start is None else float(self.beta_start)
            end = DEFAULT_BETA_RANGE[1] if self.beta_end is None else float(self.beta_end)
            if not 0 < start <= end < 1:
                raise PndmError(f"beta range {start:g}..{end:g} is invalid: "
                                "need 0 < beta_start <= beta_end < 1")
            object.__setattr__(self, "beta_start", start)
            object.__setattr__(self, "beta_end", end)

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``schedule`` object (COORDINATION.md shared decision 1)."""
        return {"name": self.name, "T": self.T, "beta_start": self.beta_start, "beta_end": self.beta_end,
                "betas": list(self.betas) if self.betas is not None else None}

    @classmethod
    def from_dict(cls, data: Any, what: str = "schedule") -> ScheduleSpec:
        """Read a manifest ``schedule`` object (``pndm-engine/1``'s {name, T} too)."""
        if not isinstance(data, dict):
            raise PndmError(f"{what}: a schedule must be an object with 'name' and 'T'")
        unknown = sorted(set(data) - {"name", "T", "beta_start", "beta_end", "betas"})
        if unknown:
            raise PndmError(f"{what}: unknown schedule field {unknown[0]!r}; "
                            "fields: name, T, beta_start, beta_end, betas")
        betas = data.get("betas")
        name = data.get("name", "custom" if betas is not None else "linear")
        try:
            return cls(name=name, T=data.get("T"), beta_start=data.get("beta_start"),
                       beta_end=data.get("beta_end"), betas=tuple(betas) if betas is not None else None)
        except PndmError as exc:
            raise PndmError(f"{what}: {exc}") from None
        except (TypeError, ValueError):
            raise PndmError(f"{what}: schedule fields have the wrong types; T is an integer, betas "
                            "numbers") from None

    def describe(self) -> str:
        """In words, e.g. ``linear 0.0001..0.02, T=1000``."""
        if self.name in ("linear", "quad"):
            return f"{self.name} {self.beta_start:g}..{self.beta_end:g}, T={self.T}"
        return f"{self.name}, T={self.T}"
