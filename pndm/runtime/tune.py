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
   is refused (:mod:`pndm.runtime.recipes`).
"""

from __future__ import annotations

import time

import click

from pndm.cli import debug_option, trust_engine_option
from pndm.errors import PndmError
from pndm.runtime.options import DEVICE_HELP, ENGINE_HELP, THREADS_HELP
from pndm.runtime.recipes import Recipe, default_recipe_path, engine_identity, save_recipe
from pndm.validate import Device

REFERENCE_METHOD, REFERENCE_GRID, REFERENCE_STEPS = "ipndm", "quad", 200
CHECK_GRID = "linspace"  # the reference's error estimate: the same solve on this grid


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
