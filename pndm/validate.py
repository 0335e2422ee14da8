"""Validation of what users type: command-line option types and config values, in one place.

A bad value is refused where it is parsed, with one line naming the option or config key, instead
of failing later with a traceback or being silently replaced (``T: 0`` becoming 1000, ``T: 2.5``
becoming 2, ``ch: "abc"`` reaching ``torch.empty``). Click option types raise ``click.BadParameter``
(printed as one line by :mod:`pndm.cli`); config checks raise :class:`pndm.errors.PndmError`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from typing import Any

import click

from pndm.errors import PndmError

DEVICE_PATTERN = re.compile(r"^(cpu|cuda(:\d+)?)$")


class Device(click.ParamType):
    """``--device``: cpu, cuda or cuda:N (and ``auto`` where the command can choose)."""

    name = "device"

    def __init__(self, allow_auto: bool = True):
        self.allow_auto = allow_auto

    def convert(self, value, param, ctx):
        if value == "auto" and self.allow_auto or DEVICE_PATTERN.match(str(value)):
            return value
        choices = "cpu, cuda, cuda:N" + (" or auto" if self.allow_auto else "")
        self.fail(f"{value!r} is not a device; use {choices}", param, ctx)


class FiniteFloat(click.FloatRange):
    """A float in a range that is also finite (``FloatRange`` lets ``nan`` and ``inf`` through)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def timesteps(value: Any, what: str) -> int | None:
    """A config's number of diffusion steps T: None (not stated) or an integer >= 2, never rounded."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 2:
        raise PndmError(f"{what}: the number of diffusion steps T must be an integer >= 2, got {value!r}")
    return value


def _check_value(name: str, value: Any, hint: Any, minimum: int, what: str) -> None:
    origin = typing.get_origin(hint)
    if hint is bool:
        ok, expected = isinstance(value, bool), "true or false"
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
        expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        expected = "a finite number"
    elif origin is tuple:
        ok = isinstance(value, (list, tuple)) and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
        expected = "a list of positive integers"
    else:
        return
    if not ok:
        raise PndmError(f"{what}: {name} must be {expected}, got {value!r}")


def check_dataclass_values(cls: type, values: dict[str, Any], what: str) -> None:
    """Check ``values`` against the annotated field types of dataclass ``cls`` (int, float, bool, tuples).

    Integers must be >= 1 unless the field's metadata names another ``minimum``.
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in values:
            _check_value(f.name, values[f.name], hints[f.name], f.metadata.get("minimum", 1), what)


def available_device(name: str):
    """``torch.device(name)`` for a :class:`Device` value, refused in one line if torch cannot use it."""
    import torch

    device = torch.device(name)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device.type == "cuda" and (device.index or 0) >= count:
        other = "device='cpu'" if count == 0 else f"device='cpu' or one of cuda:0..{count - 1}"
        raise PndmError(f"device={name!r}: torch sees {count} CUDA devices; use {other}")
    return device
