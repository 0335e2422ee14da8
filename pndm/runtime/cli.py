"""``pndm-run sample`` and ``pndm-run check`` (assembled into ``pndm-run`` by :mod:`pndm.cli`)."""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import sys
from pathlib import Path

import click
import torch

from pndm.cli import debug_option, trust_engine_option
from pndm.errors import PndmError
from pndm.runtime.options import (
    DEVICE_HELP,
    ENGINE_HELP,
    THREADS_HELP,
    check_grid_options,
    grid_options,
    resolve_grid,
)
from pndm.validate import Device, FiniteFloat


class MethodChoice(click.Choice):
    """``--method``: the solver names, listed in ``--help``; a wrong name is a one-line error (exit 2).
    ``deterministic``: only the methods that map x_T to x_0 by a fixed function."""

    def __init__(self, deterministic: bool = False):
        from pndm.solvers import METHODS

        names = [m for m, info in METHODS.items() if info.deterministic or not deterministic]
        super().__init__(sorted(names), case_sensitive=False)

    def convert(self, value, param, ctx):
        from pndm.solvers import METHODS

        try:
            return super().convert(value, param, ctx)
        except click.BadParameter:
            if str(value).lower() in METHODS:
                raise PndmError(f"--method {value} is stochastic, and this command needs a deterministic "
                                f"solver: choose one of {', '.join(self.choices)}") from None
            raise PndmError(f"unknown method {value!r}: choose one of {', '.join(self.choices)}") from None


def _json_safe(value):
    """Replace inf/nan (not JSON) with strings, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (``threads``, default one per physical core); returns the count."""
    from pndm.runtime.threads import default_threads

    threads = threads or default_threads()
    torch.set_num_threads(threads)
    return threads


def _device_for_rank(device: str, local_rank: int, world_size: int) -> str:
    if device == "auto" and world_size > 1 and torch.cuda.is_available():
        return f"cuda:{local_rank}"
    return device


def _write_outputs(
    env, folder: Path, fmt: str, engine, my_seeds: list[int], run, options: dict, phases
) -> dict | None:
    """Rank 0 gathers every rank's images and writes the PNGs (or npz), grid.png and run.json.

    ``phases`` (:class:`pndm.runtime.phases.Phases`) times the writing and goes into run.json.
    Returns run.json's content on rank 0, None on the other ranks (which write nothing).
    """
    from pndm.images import PNG_MODES, to_uint8
    from pndm.runtime.distributed import gather_to_main
    from pndm.runtime.engine_cache import take_cache_events
    from pndm.runtime.outputs import versions, write_grid, write_json, write_npz, write_pngs

    channels, height, width = engine.image_shape
    pixels = to_uint8(run.images) if run else torch.zeros(0, height, width, channels, dtype=torch.uint8)
    gathered = gather_to_main(env, (my_seeds, pixels, run.stats() if run else None))
    if not env.is_main:
        return None
    seeds = [s for part in gathered for s in part[0]]
    order = sorted(range(len(seeds)), key=seeds.__getitem__)
    all_pixels = torch.cat([part[1] for part in gathered])[order]
    seeds = [seeds[i] for i in order]
    with phases.phase("writing"):
        if fmt == "npz":
            write_npz(all_pixels, seeds, folder)
        else:
            write_pngs(all_pixels, seeds, folder)
        if channels in PNG_MODES:
            write_grid(all_pixels, folder)
    rank_stats = [part[2] for part in gathered if part[2]]
    wall = max(s["wall_seconds"] for s in rank_stats)
    summary = {
        **rank_stats[0],
        "num_images": len(seeds),
        "seeds": {"first": seeds[0], "count": len(seeds)},
        **options,
        "wall_seconds": wall,
        "images_per_second": len(seeds) / wall if wall > 0 else None,
        "world_size": env.world_size,
        **({"ranks": rank_stats} if env.world_size > 1 else {}),
        "format": fmt,
        "phases": phases.to_dict(),
        "cache": take_cache_events(),
        "engine": engine.describe(),
        "versions": versions(),
        "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    write_json(_json_safe(summary), folder / "run.json")
    return summary


class_label_option = click.option(
    "--class-label", type=click.IntRange(min=0), default=None,
    help="Class of every image, for class-conditional models (required there; default: none).",
)

clip_x0_option = click.option(
    "--clip-x0/--no-clip-x0",
    default=False,
    show_default=True,
    help="Clip every denoised estimate to [-1, 1] (DDPM's clip_denoised; helps briefly trained models, "
    "changes the answer: docs/SOLVERS.md).",
)


@click.command()
@click.option("--engine", "engine_path", required=True, help=ENGINE_HELP)
@click.option("--method", type=MethodChoice(), default="f-pndm", show_default=True, help="Solver.")
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="Solver steps N (NFE depends on the method: F-PNDM uses N+9).",
)
@click.option(
    "-n",
    "--num",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Number of images (under torchrun write -n: torchrun mistakes --num for its --numa-binding).",
)
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=None,
    help="Images per engine call; must lie in the engine's batch profile. Default: all images in one "
    "call where the profile allows (at most 64 on the CPU).",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Image i uses noise from seed SEED+i (same image on every backend and batch size).",
)
@click.option(
    "--eta",
    type=FiniteFloat(min=0.0),
    default=0.0,
    show_default=True,
    help="DDIM stochasticity (0 = deterministic).",
)
@clip_x0_option
@class_label_option
@grid_options
@click.option("--out", default="samples", show_default=True, help="Output folder.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["png", "npz"]),
    default="png",
    show_default=True,
    help="png: one seedNNNNNN.png per image (1-4 channels: grey, grey+alpha, RGB, RGBA); npz: "
    "samples.npz (uint8 images + seeds, any channel count). Both write run.json, and grid.png where PNG "
    "holds the images.",
)
@click.option("--device", type=Device(), default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--threads", type=click.IntRange(min=1), default=None, help=THREADS_HELP)
@click.option(
    "--cuda-graph/--no-cuda-graph",
    default=True,
    show_default=True,
    help="On CUDA: capture the whole sampling loop (model calls and solver updates) into one CUDA graph "
    "per batch size, for deterministic fixed-step methods; otherwise TensorRT captures each call.",
)
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar on stderr.")
@click.option("--save-trajectory", is_flag=True,
              help="Also write trajectory.png: x_t and the denoised estimate at every model evaluation "
                   "for the first 8 images (default: off).")
@trust_engine_option
@debug_option
def sample(
    engine_path, method, steps, num, batch, seed, eta, clip_x0, class_label, grid, recipe_path, out, fmt,
    device, threads, cuda_graph, progress, save_trajectory, trust_engine,
):
    """Sample images from an engine with a PNDM-family solver.

    Works under ``torchrun --nproc_per_node=K``: the seeds are split across ranks and rank 0
    writes grid.png and run.json.
    """
    from pndm.runtime.phases import Phases

    phases = Phases()
    from pndm.runtime.distributed import process_group
    from pndm.runtime.loader import load_engine
    from pndm.runtime.outputs import staged_output
    from pndm.runtime.sampling import sample_seeds
    from pndm.runtime.seeds import dist_env, seed_list, shard_seeds

    check_grid_options(method, steps, grid, recipe_path)
    if recipe_path is None and grid != "tuned":  # a recipe's method is checked once it is read
        from pndm.solvers.api import check_eta

        check_eta(method, eta)
    env = dist_env()
    all_seeds = seed_list(seed, num)
    my_seeds = shard_seeds(all_seeds, env.rank, env.world_size)
    output = staged_output(out, "sample") if env.is_main else contextlib.nullcontext()
    with output as folder, process_group(env):
        threads = set_threads(threads)
        from pndm.runtime.engine_cache import take_cache_events

        take_cache_events()  # run.json records this run's cache decisions only (not earlier ones in-process)
        with phases.phase("load"):
            engine = load_engine(
                engine_path,
                _device_for_rank(device, env.local_rank, env.world_size),
                cuda_graph=cuda_graph,
                threads=threads,
                trust=trust_engine,
            )
        engine.set_class_label(class_label)
        from pndm.runtime.threads import engine_batch

        batch = engine_batch(engine, batch, max(len(my_seeds), 1))
        if fmt == "png" or save_trajectory:
            from pndm.images import check_png_channels

            fixes = ["use --format npz"] * (fmt == "png") + ["drop --save-trajectory"] * save_trajectory
            check_png_channels(engine.image_shape[0], " and ".join(fixes))
        method, steps, grid, grid_name = resolve_grid(engine, engine_path, method, steps, grid, recipe_path)
        recorder = None
        if save_trajectory and env.is_main:
            from pndm.images import TRAJECTORY_PNG
            from pndm.runtime.latents import TrajectoryRecorder

            recorder = TrajectoryRecorder(engine)
        from pndm.runtime.graph_loop import capturable

        graph_loop = (
            cuda_graph and engine.device.type == "cuda" and recorder is None
            and not capturable(method, eta=eta, clip_x0=clip_x0)
        )
        run = (
            sample_seeds(
                engine,
                my_seeds,
                method=method,
                steps=steps,
                batch=batch,
                eta=eta,
                clip_x0=clip_x0,
                grid=grid,
                eps=recorder,
                progress=progress and env.is_main,
                graph_loop=graph_loop,
            )
            if my_seeds
            else None
        )
        if run:
            phases.add("warm_up", run.first_call_seconds)
            phases.add("sampling", run.wall_seconds - run.first_call_seconds)
        if recorder is not None:
            with phases.phase("writing"):
                recorder.save_strip(folder / TRAJECTORY_PNG, run.images)
        options = {
            "eta": eta, "clip_x0": clip_x0, "grid": grid_name, "graph_loop": graph_loop, "threads": threads,
        }
        summary = _write_outputs(env, folder, fmt, engine, my_seeds, run, options, phases)
    if summary is None:
        return
    seeds = summary["seeds"]
    click.echo(
        f"wrote {seeds['count']} image{'s' * (seeds['count'] != 1)} to {out} ({method}, {steps} "
        f"step{'s' * (steps != 1)}, NFE {summary['nfe']:g}, "
        f"{summary['latency_per_nfe_ms']:.1f} ms per NFE, {summary['images_per_second']:.2f} images/s)",
        err=True,
    )


@click.command()
@click.option("--engine", "engine_path", required=True, help=ENGINE_HELP)
@click.option(
    "--reference",
    default=None,
    help="fp32 reference: a checkpoint, model name or fp32 .onnx. Default: found through the "
    "engine's manifest (source hash or the reference weights beside it).",
)
@click.option("--method", type=MethodChoice(), default="f-pndm", show_default=True, help="Solver.")
@click.option("--steps", type=click.IntRange(min=1), default=20, show_default=True, help="Solver steps N.")
@click.option(
    "-n", "--num", type=click.IntRange(min=1), default=4, show_default=True, help="Number of images compared."
)
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=None,
    help="Images per engine call; must lie in the engine's batch profile. Default: as pndm-run sample "
    "(all images in one call where the profile allows, at most 64 on the CPU).",
)
@click.option(
    "--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Image i uses seed SEED+i."
)
@clip_x0_option
@class_label_option
@grid_options
@click.option("--device", type=Device(), default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--threads", type=click.IntRange(min=1), default=None, help=THREADS_HELP)
@click.option(
    "--layerwise",
    is_flag=True,
    default=False,
    help="Also compare every intermediate tensor of the fp16 ONNX against the fp32 ONNX (Polygraphy) "
    "and name the first layer that diverges (default: off; fp16 ONNX engines only).",
)
@click.option(
    "--layerwise-tol",
    type=FiniteFloat(min=0.0),
    default=0.01,
    show_default=True,
    help="Relative L2 error at which a layer counts as diverged (--layerwise).",
)
@click.option(
    "--json", "json_path", default=None, help="Also write the report as JSON to this file (default: none)."
)
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bars on stderr.")
@trust_engine_option
@debug_option
def check(
    engine_path,
    reference,
    method,
    steps,
    num,
    batch,
    seed,
    clip_x0,
    class_label,
    grid,
    recipe_path,
    device,
    threads,
    layerwise,
    layerwise_tol,
    json_path,
    progress,
    trust_engine,
):
    """Check that an engine's eps and samples match the PyTorch fp32 reference. Exit code 0 pass, 1 fail."""
    from pndm.runtime.checker import check_engine, format_report
    from pndm.runtime.loader import load_engine
    from pndm.runtime.outputs import write_json
    from pndm.runtime.reference import find_reference
    from pndm.runtime.seeds import seed_list

    check_grid_options(method, steps, grid, recipe_path)
    seeds = seed_list(seed, num)
    if json_path is not None:
        from pndm.runtime.outputs import prepare_out_file

        prepare_out_file(json_path, "--json")
    threads = set_threads(threads)
    candidate = load_engine(engine_path, device, threads=threads, trust=trust_engine)
    from pndm.runtime.threads import engine_batch

    batch = engine_batch(candidate, batch, num)
    method, steps, grid, _ = resolve_grid(candidate, engine_path, method, steps, grid, recipe_path)
    if layerwise:
        from pndm.runtime.layerwise import layerwise_graphs

        graphs = layerwise_graphs(candidate, reference)  # before the check: a bad pair fails before any work
    ref = find_reference(candidate, reference, candidate.device, threads=threads)
    for engine in (candidate, ref):
        engine.set_class_label(class_label)
    report = check_engine(
        candidate, ref, seeds, method=method, steps=steps, batch=batch, clip_x0=clip_x0, progress=progress,
        grid=grid,
    )
    if layerwise:
        from pndm.runtime.layerwise import compare_layers

        x, t = report.probe
        report.layerwise = compare_layers(*graphs, x, t, tolerance=layerwise_tol)
    click.echo(format_report(report))
    if report.layerwise:
        from pndm.runtime.layerwise import format_layerwise

        click.echo(format_layerwise(report.layerwise))
    if json_path is not None:
        write_json(_json_safe(report.to_dict()), Path(json_path))
    # SystemExit, not ctx.exit: click returns (not raises) ctx.exit's code under standalone_mode=False.
    sys.exit(0 if report.passed else 1)
