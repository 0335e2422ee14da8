"""``pndm-run tune``: the best sampler for one model and NFE budget, and a time grid tuned for it.

1. A high-accuracy reference solve (iPNDM on the quad grid, :data:`REFERENCE_STEPS` steps) from a few
   seeds' x_T at t = T-1; its accuracy is estimated against the same solve on the linspace grid.
2. Every (method, fixed grid) within the NFE budget is measured against it: RMSE and time.
3. The best method's timesteps are optimised against the reference (:func:`pndm.solvers.tuning.tune_grid`)
   and compared with the best fixed grid on held-out seeds (their own reference). When the tuned grid
   is worse there, it overfitted the tuning seeds: the recipe keeps the fixed grid's timesteps.
4. The result is saved as a recipe (``recipe.json`` in the engine folder, the current folder for a
   model name; format ``pndm-recipe/1``): method, steps, NFE, timesteps and the engine's identity,
   which ``pndm-run sample --recipe FILE`` and ``--grid tuned`` use; a recipe made for another engine
   is refused.

This module also holds what the sampling commands share: the help of --engine / --device / --threads,
the ``--grid`` / ``--recipe`` options of ``sample`` and ``check``, and the checks of --method/--steps.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass
from pathlib import Path

import click

from pndm.cli import debug_option, trust_engine_option
from pndm.errors import PndmError
from pndm.validate import Device

RECIPE_FORMAT = "pndm-recipe/1"
RECIPE_NAME = "recipe.json"
REFERENCE_METHOD, REFERENCE_GRID, REFERENCE_STEPS = "ipndm", "quad", 200
CHECK_GRID = "linspace"  # the reference's error estimate: the same solve on this grid

ENGINE_HELP = (
    "Engine to run: an .onnx / .plan / .pt2 file with manifest.json beside it, an engine folder "
    "(its unet.onnx), or a checkpoint / diffusers folder / model name (PyTorch fp32)."
)
THREADS_HELP = (
    "CPU threads for torch and ONNX Runtime (default: one per physical core, shared among torchrun "
    "processes). On a busy machine 1 can be much faster: OpenMP threads that wait for a taken core spin."
)
DEVICE_HELP = "cpu, cuda, cuda:N, or auto (CUDA when available, else CPU; .pt2: the device it was built for)."


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
    for a model name, which has no folder, the current folder, as an absolute path so that messages
    say where)."""
    path = Path(engine_path)
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


# --- the --grid / --recipe options of sample and check ---


def check_steps(method: str, steps: int) -> None:
    """Refuse fewer ``steps`` than ``method`` needs, before any work."""
    from pndm.solvers import METHODS

    low = METHODS[method].min_steps
    if steps < low:
        raise PndmError(f"--method {method} needs --steps {low} or more (got {steps}): raise --steps or "
                        "choose another --method")


def check_grid_options(method: str, steps: int, grid: str | None, recipe_path: str | None) -> None:
    """Check --method/--steps/--grid/--recipe together before any work: a recipe (``--recipe`` or
    ``--grid tuned``) brings its own method, steps and grid, so giving them too is refused."""
    from click.core import ParameterSource

    from pndm.solvers.grid import parse_grid

    if grid is not None and recipe_path is not None:
        raise PndmError("--recipe brings its own tuned grid: drop --grid (or use --grid tuned)")
    if recipe_path is not None or grid == "tuned":
        ctx, typed = click.get_current_context(), (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
        given = [f"--{name}" for name in ("method", "steps") if ctx.get_parameter_source(name) in typed]
        if given:
            source = "--recipe" if recipe_path is not None else "--grid tuned"
            raise PndmError(f"{source} brings its own method and steps: drop {' and '.join(given)}")
        return
    check_steps(method, steps)
    if grid is not None:
        parse_grid(grid)


def grid_options(f):
    """``--grid NAME[:VALUE]`` and ``--recipe FILE`` for a sampling command."""
    from pndm.solvers import GRIDS

    f = click.option(
        "--recipe",
        "recipe_path",
        default=None,
        help="A recipe from pndm-run tune: its method, steps and tuned timesteps replace "
        "--method/--steps/--grid, so those are refused beside it (default: none).",
    )(f)
    return click.option(
        "--grid",
        default=None,
        help=f"Time grid: {', '.join(GRIDS)} (default: the method's, docs/SOLVERS.md). Options as "
        "NAME:VALUE: quad:POWER (0.5-6, default 2), karras:RHO (1-20, default 7). tuned = the engine "
        "folder's recipe.json (for a model name: recipe.json in the current folder).",
    )(f)


def resolve_grid(
    engine, engine_path: str, method: str, steps: int, grid: str | None, recipe_path: str | None
):
    """(method, steps, grid for the solvers, what to record) from --method/--steps/--grid/--recipe,
    which :func:`check_grid_options` checked."""
    if grid == "tuned":
        recipe_path = str(default_recipe_path(engine_path))
    if recipe_path is None:
        return method, steps, grid, grid
    recipe = load_recipe(recipe_path, engine)
    return recipe.method, recipe.steps, recipe.grid, f"tuned ({recipe.path})"


# --- pndm-run tune ---


def _time_solve(eps, x_T, method, steps, schedule, grid):
    from pndm.solvers import solve

    start = time.perf_counter()
    run = solve(eps, x_T, method, steps, schedule, grid=grid)
    return run, time.perf_counter() - start


def _reference(engine, x_T, schedule):
    """High-accuracy x_0 and its estimated error: the difference to the same solve on another grid
    (linspace), an independent discretisation of the same cost."""
    from pndm.solvers import solve
    from pndm.solvers.testbeds import rmse

    fine = solve(engine, x_T, REFERENCE_METHOD, REFERENCE_STEPS, schedule, grid=REFERENCE_GRID).x0
    other = solve(engine, x_T, REFERENCE_METHOD, REFERENCE_STEPS, schedule, grid=CHECK_GRID).x0
    return fine, rmse(fine, other)


@click.command()
@click.option("--engine", "engine_path", required=True, help=ENGINE_HELP)
@click.option(
    "--nfe", type=click.IntRange(min=2, max=200), required=True, help="Model evaluations per image."
)
@click.option(
    "--seeds",
    "num_seeds",
    type=click.IntRange(min=1, max=64),
    default=4,
    show_default=True,
    help="Images the grid is tuned on (one batch).",
)
@click.option(
    "--holdout",
    type=click.IntRange(min=1, max=64),
    default=4,
    show_default=True,
    help="Other images the tuned grid is checked on; where it is worse there than the fixed grid it "
    "started from, the recipe keeps that fixed grid.",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Tuning images use seeds SEED.., held-out ones the seeds after them.",
)
@click.option(
    "--budget",
    type=click.IntRange(min=1, max=2000),
    default=60,
    show_default=True,
    help="Solves the timestep search may run.",
)
@click.option(
    "--out",
    "out_path",
    default=None,
    help="Recipe file to write (default: recipe.json in the engine folder; for a model name, in the "
    "current folder).",
)
@click.option("--device", type=Device(), default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--threads", type=click.IntRange(min=1), default=None, help=THREADS_HELP)
@trust_engine_option
@debug_option
def tune(engine_path, nfe, num_seeds, holdout, seed, budget, out_path, device, threads, trust_engine):
    """Measure every (method, grid) within an NFE budget on this model, tune the best one's timesteps,
    and save the recipe that pndm-run sample --recipe / --grid tuned uses."""
    from pndm.runtime.cli import set_threads
    from pndm.runtime.loader import load_engine
    from pndm.runtime.outputs import prepare_out_file
    from pndm.runtime.seeds import image_noise, seed_list
    from pndm.solvers import GRIDS, METHODS, make_grid, solve, steps_for_nfe
    from pndm.solvers.testbeds import rmse
    from pndm.solvers.tuning import tune_grid

    seeds = seed_list(seed, num_seeds + holdout)  # before any work, like --out
    tune_seeds, held_seeds = seeds[:num_seeds], seeds[num_seeds:]
    out = prepare_out_file(out_path if out_path is not None else default_recipe_path(engine_path))
    threads = set_threads(threads)
    engine = load_engine(engine_path, device, threads=threads, trust=trust_engine)
    engine.check_batch(max(num_seeds, holdout))
    schedule = engine.schedule
    x_T = image_noise(tune_seeds, engine.image_shape, engine.device)
    reference, ref_error = _reference(engine, x_T, schedule)
    click.echo(
        f"reference: {REFERENCE_METHOD} on {REFERENCE_GRID}, {REFERENCE_STEPS} steps, {num_seeds} seeds "
        f"(differs from the same on {CHECK_GRID} by RMSE {ref_error:.2e})"
    )
    rows = []
    for method in (m for m, info in METHODS.items() if info.deterministic):
        steps = steps_for_nfe(method, nfe)
        if steps is None:
            continue
        for grid in (g for g, info in GRIDS.items() if info.build is not None):
            try:
                run, seconds = _time_solve(engine, x_T, method, steps, schedule, grid)
            except PndmError:  # diverged (NaN/Inf from the model): listed last
                rows.append((float("inf"), method, grid, steps, METHODS[method].nfe(steps), float("nan")))
                continue
            rows.append((rmse(run.x0, reference), method, grid, steps, run.nfe, seconds))
    rows.sort()
    click.echo(f"\n| method | grid | steps | NFE | RMSE vs reference | seconds ({num_seeds} images) |")
    click.echo("|---|---|---|---|---|---|")
    for err, method, grid, steps, used, seconds in rows:
        click.echo(f"| {method} | {grid} | {steps} | {used} | {err:.3e} | {seconds:.2f} |")
    best_err, best_method, best_grid, best_steps, best_nfe, _ = rows[0]
    started = time.perf_counter()
    points, _, tuned_err = tune_grid(
        engine, x_T, reference, best_method, best_steps, schedule, start=best_grid, budget=budget
    )
    click.echo(
        f"\ntuned {best_method} from {best_grid} ({budget} solves max, "
        f"{time.perf_counter() - started:.0f} s): "
        f"RMSE {tuned_err:.3e} vs best fixed {best_method} on {best_grid} {best_err:.3e} "
        f"({best_err / tuned_err:.2f}x)"
    )
    held_x = image_noise(held_seeds, engine.image_shape, engine.device)
    held_ref, _ = _reference(engine, held_x, schedule)
    held_fixed = rmse(solve(engine, held_x, best_method, best_steps, schedule, grid=best_grid).x0, held_ref)
    held_tuned = rmse(solve(engine, held_x, best_method, best_steps, schedule, grid=points).x0, held_ref)
    click.echo(
        f"held-out seeds ({holdout}): tuned {held_tuned:.3e} vs {best_grid} {held_fixed:.3e} "
        f"({held_fixed / held_tuned:.2f}x)"
    )
    kept = "tuned" if held_tuned <= held_fixed else best_grid
    if kept != "tuned":  # the search fitted the tuning seeds only: the fixed grid generalises better
        points = make_grid(best_grid, best_steps, schedule)[:-1].tolist()
        click.echo(f"the tuned grid is worse than {best_grid} on the held-out seeds: the recipe keeps "
                   f"{best_grid}'s timesteps (more --seeds or --budget may tune a better one)")
    recipe = Recipe(
        method=best_method, steps=best_steps, nfe=best_nfe, grid=points, engine=engine_identity(engine)
    )
    save_recipe(
        out,
        recipe,
        {
            "tuned_from": best_grid,
            "kept": kept,
            "error": {
                "best_fixed": {"grid": best_grid, "rmse": best_err, "holdout": held_fixed},
                "tuned": {"rmse": tuned_err, "holdout": held_tuned},
            },
            "seeds": {"tune": tune_seeds, "holdout": held_seeds},
            "reference": {
                "method": REFERENCE_METHOD,
                "grid": REFERENCE_GRID,
                "steps": REFERENCE_STEPS,
                "estimated_rmse": ref_error,
            },
        },
    )
    click.echo(f"wrote {out.resolve()}; sample with: pndm-run sample --engine {engine_path} "
               f"--recipe {out.resolve()}")
