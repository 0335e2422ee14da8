"""What the sampling commands of ``pndm-run`` share: the help of --engine / --device / --threads, the
``--grid`` / ``--recipe`` options of ``sample`` and ``check``, and the checks of --method/--steps."""

from __future__ import annotations

import click

from pndm.errors import PndmError
from pndm.runtime.recipes import default_recipe_path, load_recipe

ENGINE_HELP = (
    "Engine to run: an .onnx / .plan / .pt2 file with manifest.json beside it, an engine folder "
    "(its unet.onnx), or a checkpoint / diffusers folder / model name (PyTorch fp32)."
)
THREADS_HELP = (
    "CPU threads for torch and ONNX Runtime (default: one per physical core, shared among torchrun "
    "processes). On a busy machine 1 can be much faster: OpenMP threads that wait for a taken core spin."
)
DEVICE_HELP = "cpu, cuda, cuda:N, or auto (CUDA when available, else CPU; .pt2: the device it was built for)."


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
