"""``pndm-run interpolate``: images along the great circle between two seeds' x_T (DDIM sec. 5.3)."""

from __future__ import annotations

import click

from pndm.cli import debug_option, trust_engine_option
from pndm.runtime.cli import MethodChoice, clip_x0_option, set_threads
from pndm.runtime.options import DEVICE_HELP, ENGINE_HELP, THREADS_HELP, check_steps
from pndm.runtime.outputs import GRID_MAX_IMAGES
from pndm.runtime.seeds import SEED_MAX
from pndm.validate import Device


@click.command()
@click.option("--engine", "engine_path", required=True, help=ENGINE_HELP)
@click.option("--seeds", nargs=2, type=click.IntRange(min=0, max=SEED_MAX), default=(0, 1),
              show_default=True, help="The two seeds whose x_T are the ends.")
@click.option("--frames", type=click.IntRange(min=2, max=GRID_MAX_IMAGES), default=9, show_default=True,
              help=f"Images from one end to the other, both included ({GRID_MAX_IMAGES} at most: each "
                   "costs a full solve, and all go side by side in strip.png).")
@click.option("--method", type=MethodChoice(deterministic=True), default="ddim", show_default=True,
              help="Solver; deterministic ones only, so that each image is a function of its x_T.")
@click.option("--steps", type=click.IntRange(min=1), default=50, show_default=True, help="Solver steps N.")
@click.option("--batch", type=click.IntRange(min=1), default=None,
              help="Images per engine call; must lie in the engine's batch profile. Default: as pndm-run "
                   "sample (all frames in one call where the profile allows, at most 64 on the CPU).")
@clip_x0_option
@click.option("--out", default="interpolation", show_default=True,
              help="Output folder: frame_<k>.png, strip.png and run.json.")
@click.option("--device", type=Device(), default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--threads", type=click.IntRange(min=1), default=None, help=THREADS_HELP)
@trust_engine_option
@debug_option
def interpolate(engine_path, seeds, frames, method, steps, batch, clip_x0, out, device, threads,
                trust_engine):
    """Decode spherical interpolations between two seeds' noise x_T into a strip of images."""
    from pndm.images import STRIP_PNG, make_grid, save_png, to_uint8
    from pndm.runtime.latents import interpolate_seeds
    from pndm.runtime.loader import load_engine
    from pndm.runtime.outputs import staged_output, write_json

    check_steps(method, steps)
    threads = set_threads(threads)
    with staged_output(out, "interpolate") as folder:  # all or nothing (previous --out kept until whole)
        engine = load_engine(engine_path, device, threads=threads, trust=trust_engine)
        from pndm.runtime.threads import engine_batch

        batch = engine_batch(engine, batch, frames)
        images = interpolate_seeds(engine, seeds[0], seeds[1], frames, method=method, steps=steps,
                                   batch=batch, clip_x0=clip_x0)
        pixels = to_uint8(images)
        for k, image in enumerate(pixels):
            save_png(image, folder / f"frame_{k:03d}.png")
        save_png(make_grid(pixels, ncols=frames), folder / STRIP_PNG)
        write_json({"seeds": list(seeds), "frames": frames, "method": method, "steps": steps,
                    "clip_x0": clip_x0, "interpolation": "slerp", "engine": engine.describe()},
                   folder / "run.json")
    click.echo(f"wrote {frames} frames and strip.png to {out}", err=True)
