"""Recipes of ``pndm-run tune`` (format ``pndm-recipe/1``): a tuned method, steps and timesteps bound to
one engine, read by ``pndm-run sample/check --recipe FILE`` and ``--grid tuned``; a recipe made for
another engine is refused."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

from pndm.errors import PndmError

RECIPE_FORMAT = "pndm-recipe/1"
RECIPE_NAME = "recipe.json"


@dataclass(frozen=True)
class Recipe:
    """A tuned sampler: ``method`` over ``steps`` explicit ``grid`` timesteps (descending) for one engine."""

    method: str
    steps: int
    nfe: int
    grid: list[float]
    engine: dict
    path: str = ""


def engine_identity(engine) -> dict:
    """What a recipe is bound to: the engine file's SHA-256 (or, for a model name, the name), its
    backend, schedule and image shape."""
    from pndm.fileio import sha256_file

    path = Path(engine.path)
    return {
        "path": str(path),
        "sha256": sha256_file(path) if path.is_file() else None,
        "backend": engine.backend,
        "schedule": engine.schedule.name,
        "T": engine.schedule.T,
        "image_shape": list(engine.image_shape),
    }


def _same_engine(recorded: dict, current: dict) -> bool:
    if recorded.get("sha256") or current.get("sha256"):
        return recorded.get("sha256") == current.get("sha256")
    return recorded.get("path") == current.get("path") and recorded.get("backend") == current.get("backend")


def default_recipe_path(engine_path: str) -> Path:
    """``recipe.json`` in the engine's folder (the folder itself, or the folder of an engine file;
    for a model name, which has no folder, the current folder), as an absolute path so that messages
    say where."""
    path = Path(engine_path).absolute()
    if path.is_dir():
        return path / RECIPE_NAME
    if path.is_file():
        return path.parent / RECIPE_NAME
    return Path.cwd() / RECIPE_NAME


def load_recipe(path: str | Path, engine) -> Recipe:
    """Read a recipe and check it belongs to ``engine`` (one-line errors)."""
    from pndm.solvers import METHODS

    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise PndmError(f"no recipe at {path}: run pndm-run tune --engine ... --nfe K first") from None
    except IsADirectoryError:
        raise PndmError(f"the recipe {path} is a folder: give the recipe file (e.g. {path / RECIPE_NAME})"
                        ) from None
    except (OSError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else e
        raise PndmError(f"cannot read the recipe {path} ({reason}): give a recipe file that pndm-run tune "
                        "wrote") from None
    if not isinstance(data, dict) or data.get("format") != RECIPE_FORMAT:
        raise PndmError(f"{path} is not a pndm recipe (format {RECIPE_FORMAT}): write one with pndm-run tune")
    try:
        recipe = Recipe(
            method=str(data["method"]),
            steps=int(data["steps"]),
            nfe=int(data["nfe"]),
            grid=[float(t) for t in data["grid"]],
            engine=dict(data["engine"]),
            path=str(path),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise PndmError(
            f"the recipe {path} is incomplete or malformed ({e!r}): write it again with pndm-run tune"
        ) from None
    if recipe.method not in METHODS or len(recipe.grid) != recipe.steps:
        raise PndmError(
            f"the recipe {path} names method {recipe.method!r} with {len(recipe.grid)} timesteps "
            f"for {recipe.steps} steps: write it again with pndm-run tune"
        )
    current = engine_identity(engine)
    if not _same_engine(recipe.engine, current):
        raise PndmError(
            f"the recipe {path} was tuned for another engine ({recipe.engine.get('path')}, sha256 "
            f"{str(recipe.engine.get('sha256'))[:12]}), not {current['path']}: run pndm-run tune on this one"
        )
    return recipe


def save_recipe(path: Path, recipe: Recipe, extra: dict) -> None:
    from pndm.fileio import atomic_write_text

    data = {
        "format": RECIPE_FORMAT,
        "method": recipe.method,
        "steps": recipe.steps,
        "nfe": recipe.nfe,
        "grid": recipe.grid,
        "engine": recipe.engine,
        **extra,
        "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
