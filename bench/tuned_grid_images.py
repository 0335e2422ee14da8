"""Side-by-side sample grids of a tuned recipe: reference solve, best fixed grid, tuned grid (one row each).

    .venv/bin/python bench/tuned_grid_images.py --engine default --recipe R.json --out docs/images/tuned.png

The reference is ``pndm-run tune``'s (iPNDM on the quad grid, 200 steps); the fixed grid is the one the
recipe records as the best fixed grid. Prints each row's RMSE against the reference.
"""

from __future__ import annotations

import json

import click
import torch

from pndm.images import save_grid
from pndm.runtime.loader import load_engine
from pndm.runtime.recipes import load_recipe
from pndm.runtime.seeds import image_noise, seed_list
from pndm.runtime.tune import REFERENCE_GRID, REFERENCE_METHOD, REFERENCE_STEPS
from pndm.solvers import sample
from pndm.solvers.testbeds import rmse


@click.command()
@click.option("--engine", "engine_path", required=True)
@click.option("--recipe", "recipe_path", required=True)
@click.option("--out", required=True, help="PNG to write.")
@click.option("--num", default=8, show_default=True)
@click.option("--seed", default=100, show_default=True, help="First seed (not the tuning seeds).")
def main(engine_path: str, recipe_path: str, out: str, num: int, seed: int) -> None:
    torch.set_num_threads(1)
    engine = load_engine(engine_path, "cpu")
    recipe = load_recipe(recipe_path, engine)
    fixed = json.loads(open(recipe_path).read())["error"]["best_fixed"]["grid"]
    schedule = engine.schedule
    x_T = image_noise(seed_list(seed, num), engine.image_shape, "cpu")
    ref = sample(engine, x_T, REFERENCE_METHOD, REFERENCE_STEPS, schedule, grid=REFERENCE_GRID)
    rows = [ref]
    for name, grid in ((fixed, fixed), ("tuned", recipe.grid)):
        x0 = sample(engine, x_T, recipe.method, recipe.steps, schedule, grid=grid)
        click.echo(f"{recipe.method} on {name} (NFE {recipe.nfe}): RMSE vs reference {rmse(x0, ref):.3e}")
        rows.append(x0)
    save_grid(torch.cat(rows).clamp(-1, 1), out, ncols=num)
    click.echo(f"wrote {out}: rows = reference, {recipe.method} on {fixed}, {recipe.method} tuned")


if __name__ == "__main__":
    main()
