"""The model-description options of ``pndm-export build``: user modules, schedules, prediction types.

``--module MODULE:FACTORY [--weights FILE.safetensors] --image-shape C,H,W [--num-classes K]``
selects the user's own network (:mod:`pndm.models.user_module`). ``--schedule`` with
``--beta-start/--beta-end`` (linear, quad) or ``--betas FILE`` (custom: one beta per line, or a
JSON list) and ``--prediction`` describe how the model was trained; for any other source they
override what its config says.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import click

from pndm.errors import PndmError
from pndm.prediction import PREDICTIONS
from pndm.schedule_spec import SCHEDULE_KINDS, ScheduleSpec


def read_betas(path: str | Path) -> tuple[float, ...]:
    """Betas from a text file (numbers separated by whitespace or commas) or a JSON list."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise PndmError(f"--betas {path}: cannot read the file ({reason})") from None
    try:
        values = json.loads(text) if text.lstrip().startswith("[") else text.replace(",", " ").split()
        betas = tuple(float(v) for v in values)
    except (ValueError, TypeError, json.JSONDecodeError):
        raise PndmError(f"--betas {path}: not a list of numbers; write one beta per line (or a JSON list)") \
            from None
    if not betas:
        raise PndmError(f"--betas {path}: the file holds no betas; write one beta per training step")
    return betas


def schedule_from_options(name: str | None, T: int | None, beta_start: float | None, beta_end: float | None,
                          betas: str | Path | None) -> ScheduleSpec | None:
    """The schedule the options describe, or None when none of them is given."""
    if betas is not None:
        if name not in (None, "custom") or beta_start is not None or beta_end is not None:
            raise PndmError("--betas gives a custom schedule: drop --schedule/--beta-start/--beta-end")
        values = read_betas(betas)
        if T is not None and T != len(values):
            raise PndmError(f"--T {T} but --betas holds {len(values)} betas: drop --T")
        return ScheduleSpec("custom", betas=values)
    if name is None and beta_start is None and beta_end is None and T is None:
        return None
    if name == "custom":
        raise PndmError("--schedule custom needs --betas FILE (one beta per training step)")
    return ScheduleSpec(name or "linear", T, beta_start, beta_end)


def parse_image_shape(text: str | None) -> tuple[int, int, int] | None:
    if text is None:
        return None
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise PndmError(f"--image-shape {text!r}: give C,H,W as three positive integers, e.g. 3,32,32")
    return shape  # type: ignore[return-value]


def model_options(command):
    """Add the options of the module docstring to a click command (as keyword ``model_opts``)."""
    options = [
        click.option("--module", "module", default=None, metavar="MODULE:FACTORY",
                     help="Your own network: an importable module or .py path and a function returning an "
                          "nn.Module with forward(x, t). Needs --image-shape."),
        click.option("--weights", default=None, type=click.Path(dir_okay=False),
                     help="With --module: a .safetensors state dict to load (default: the factory's own "
                          "initialisation, seed 0)."),
        click.option("--image-shape", default=None, metavar="C,H,W", help="With --module: the image shape."),
        click.option("--num-classes", type=click.IntRange(min=1), default=None,
                     help="With --module: class-conditional model with this many classes (forward(x, t, "
                          "class_labels)). Default: unconditional."),
        click.option("--denoiser", type=click.Choice(["eps", "sigma"]), default="eps", show_default=True,
                     help="With --module: eps is forward(x, t); sigma is an EDM-style denoiser "
                          "forward(x, sigma) returning the clean image (over --sigma-min..--sigma-max)."),
        click.option("--sigma-min", type=float, default=None,
                     help="--denoiser sigma: smallest noise level (default: the module's sigma_min, at least "
                          "0.002)."),
        click.option("--sigma-max", type=float, default=None,
                     help="--denoiser sigma: largest noise level (default: the module's sigma_max, at most "
                          "80)."),
        click.option("--schedule", "schedule_name", type=click.Choice(SCHEDULE_KINDS), default=None,
                     help="Training noise schedule (default: what the model's config says; linear for "
                          "--module). custom needs --betas."),
        click.option("--T", "schedule_T", type=click.IntRange(min=2), default=None,
                     help="Training steps of the schedule (default: the config's, else 1000)."),
        click.option("--beta-start", type=float, default=None,
                     help="linear/quad: first beta (default 1e-4)."),
        click.option("--beta-end", type=float, default=None, help="linear/quad: last beta (default 0.02)."),
        click.option("--betas", "betas_file", default=None, type=click.Path(dir_okay=False),
                     help="Explicit betas (a custom schedule): a text file, one per line, or a JSON list."),
        click.option("--prediction", type=click.Choice(PREDICTIONS), default=None,
                     help="What the model outputs: epsilon, v_prediction or sample (x0). Default: the "
                          "config's (a diffusers scheduler's prediction_type), else epsilon."),
    ]

    @functools.wraps(command)
    def wrapper(*args, module, weights, image_shape, num_classes, denoiser, sigma_min, sigma_max,
                schedule_name, schedule_T, beta_start, beta_end, betas_file, prediction, **kwargs):
        opts = {"module": module, "weights": weights, "image_shape": image_shape, "num_classes": num_classes,
                "denoiser": denoiser, "sigma_min": sigma_min, "sigma_max": sigma_max,
                "schedule": schedule_name, "T": schedule_T, "beta_start": beta_start, "beta_end": beta_end,
                "betas": betas_file, "prediction": prediction}
        return command(*args, model_opts=opts, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def load_with_options(opts: dict, load_other):
    """(model, spec) from the options: ``--module`` here, any other source through
    ``load_other(schedule=..., prediction=...)`` (:func:`pndm.models.load`'s overrides)."""
    from pndm.models.user_module import load_module

    schedule = schedule_from_options(opts["schedule"], opts["T"], opts["beta_start"], opts["beta_end"],
                                     opts["betas"])
    if opts["module"] is not None:
        shape = parse_image_shape(opts["image_shape"])
        if shape is None:
            raise PndmError("--module needs --image-shape C,H,W (the images the network works on)")
        return load_module(opts["module"], image_shape=shape, weights=opts["weights"], schedule=schedule,
                           prediction=opts["prediction"], num_classes=opts["num_classes"],
                           denoiser=opts["denoiser"], sigma_min=opts["sigma_min"],
                           sigma_max=opts["sigma_max"])
    if opts["denoiser"] != "eps":
        raise PndmError("--denoiser goes with --module: drop it, or add --module")
    for name in ("weights", "image_shape", "num_classes", "sigma_min", "sigma_max"):
        if opts[name] is not None:
            raise PndmError(f"--{name.replace('_', '-')} goes with --module: drop it, or add --module")
    return load_other(schedule=schedule, prediction=opts["prediction"])
