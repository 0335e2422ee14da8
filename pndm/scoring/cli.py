"""``pndm-run score`` and ``pndm-run sweep`` (registered in ``pndm-run`` by :mod:`pndm.cli`)."""

from __future__ import annotations

import json

import click

from pndm.cli import debug_option, trust_engine_option
from pndm.runtime.cli import MethodChoice, set_threads
from pndm.runtime.options import DEVICE_HELP, THREADS_HELP
from pndm.runtime.threads import CPU_BATCH_CAP
from pndm.scoring.frechet import PR_NEIGHBOURS
from pndm.validate import Device

FEATURES_HELP = ("Feature network: 'judge' (pndm's shipped MNIST/Fashion-MNIST judge, 128-d) or "
                 "'inception' (FID's Inception-v3, needs --inception). Default: inception when --inception "
                 "is given, else judge.")
INCEPTION_HELP = ("FID Inception weights file (pytorch-fid's pt_inception-2015-12-05-6726825d.pth); "
                  "implies --features inception. Never downloaded.")
REFERENCE_HELP = ("Real images: 'mnist', 'fashion-mnist', a folder, an .npz of images, an IDX file, or an "
                  ".npz of statistics (mu, sigma).")
RESIZE_HELP = ("Resize every image read (folders, .npz, IDX, data sets) to N x N, bilinear and antialiased, "
               "so that a folder may mix image sizes; the feature network resizes to its own input anyway "
               "(judge 28, inception 299). Default: off (a folder's images must share one size).")


@click.command()
@click.argument("samples")
@click.option("--reference", required=True, help=REFERENCE_HELP)
@click.option("--features", type=click.Choice(["judge", "inception"]), default=None, help=FEATURES_HELP)
@click.option("--inception", type=click.Path(dir_okay=False), default=None, help=INCEPTION_HELP)
@click.option("--pr/--no-pr", default=True, show_default=True, help="Also precision and recall (k=3).")
@click.option("--json", "json_path", default=None,
              help="Also write the report to this JSON file (default: none).")
@click.option("--resize", type=click.IntRange(min=1), default=None, metavar="N", help=RESIZE_HELP)
@click.option("--threads", type=click.IntRange(min=1), default=None, help=THREADS_HELP)
@debug_option
def score(samples, reference, features, inception, pr, json_path, resize, threads):
    """Frechet distance of SAMPLES (a sample folder, .npz or data set) to --reference, with the
    real-vs-real baseline beside it. Prints JSON."""
    from pndm.scoring.score import load_image_set, make_featurizer, reference_statistics, score_images

    if json_path is not None:
        from pndm.runtime.outputs import prepare_out_file

        prepare_out_file(json_path, "--json")
    set_threads(threads)
    featurizer = make_featurizer(features or ("inception" if inception else "judge"), inception)
    images = load_image_set(samples, resize)
    ref = reference_statistics(featurizer, reference, resize)
    report = {"samples": samples, **score_images(images, ref, featurizer, with_pr=pr)}
    text = json.dumps(report, indent=2)
    if json_path is not None:
        from pndm.fileio import atomic_write_text

        atomic_write_text(json_path, text + "\n")
    click.echo(text)


def _int_list(ctx, param, value):
    try:
        numbers = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected comma-separated integers, e.g. 5,10,20,50") from None
    if not numbers or min(numbers) < 1:
        raise click.BadParameter(f"{value!r}: expected positive integers")
    return numbers


@click.command()
@click.option("--engine", "engine_paths", multiple=True, required=True,
              help="Engine (file, folder, checkpoint or model name); repeat to compare engines that take the "
                   "same image shape (rows name each by its file, with parent folders where names repeat).")
@click.option("--method", "methods", type=MethodChoice(), multiple=True, default=("f-pndm", "ddim"),
              show_default=True, help="Solver; repeat for several.")
@click.option("--steps", default="5,10,20,50", show_default=True, callback=_int_list,
              help="Comma-separated step counts N.")
@click.option("--grid", "grids", multiple=True,
              help="Time grid (a name of pndm.solvers.GRIDS, e.g. quad, karras:7); repeat for several "
                   "(default: each method's own).")
@click.option("-n", "--num", type=click.IntRange(min=PR_NEIGHBOURS + 1), default=500, show_default=True,
              help="Images per point (seeds SEED..SEED+num-1, the same at every point; precision and "
                   f"recall need more than their {PR_NEIGHBOURS} neighbours).")
@click.option("--batch", type=click.IntRange(min=1), default=None,
              help="Images per engine call; must lie in every engine's batch profile. Default: for each "
                   f"engine, all -n images in one call where its profile allows (at most {CPU_BATCH_CAP} on "
                   "the CPU).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="First seed.")
@click.option("--reference", default="mnist", show_default=True, help=REFERENCE_HELP)
@click.option("--features", type=click.Choice(["judge", "inception"]), default=None, help=FEATURES_HELP)
@click.option("--inception", type=click.Path(dir_okay=False), default=None, help=INCEPTION_HELP)
@click.option("--resize", type=click.IntRange(min=1), default=None, metavar="N",
              help=RESIZE_HELP.replace("every image read", "the samples and the reference's images"))
@click.option("--clip-x0/--no-clip-x0", default=False, show_default=True,
              help="Clip every denoised estimate to [-1, 1] (docs/SOLVERS.md).")
@click.option("--out", default="sweep", show_default=True,
              help="Output folder: sweep.json, sweep.md (table), sweep.png (plot).")
@click.option("--device", type=Device(), default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--threads", type=click.IntRange(min=1), default=None, help=THREADS_HELP)
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bars on stderr.")
@trust_engine_option
@debug_option
def sweep(engine_paths, methods, steps, grids, num, batch, seed, reference, features, inception, resize,
          clip_x0, out, device, threads, progress, trust_engine):
    """Frechet distance against NFE for methods and engines of one image shape: a table and a plot."""
    from pathlib import Path

    from pndm.errors import PndmError
    from pndm.fileio import atomic_write_text
    from pndm.runtime.loader import load_engine
    from pndm.runtime.options import check_steps
    from pndm.runtime.outputs import staged_output
    from pndm.runtime.seeds import seed_list
    from pndm.scoring.score import make_featurizer, reference_statistics
    from pndm.scoring.sweep import engine_batches, engine_labels, format_table, plot, run_sweep
    from pndm.solvers.grid import parse_grid

    for method in methods:  # bad options fail before any work
        for n in steps:
            check_steps(method, n)
    for grid in grids:
        parse_grid(grid)
    seeds = seed_list(seed, num)
    labels = engine_labels(engine_paths)
    threads = set_threads(threads)
    with staged_output(out, "sweep") as folder:  # all or nothing (the previous --out kept until whole)
        engines = {}
        for path, label in zip(engine_paths, labels, strict=True):
            engine = load_engine(path, device, threads=threads, trust=trust_engine)
            engines[f"{label} ({engine.precision})"] = engine
        shapes = {e.image_shape for e in engines.values()}
        if len(shapes) > 1:
            raise PndmError(f"the engines take different image shapes {sorted(shapes)}: sweep one model at a "
                            "time")
        batches = engine_batches(engines, batch, num)
        featurizer = make_featurizer(features or ("inception" if inception else "judge"), inception)
        ref = reference_statistics(featurizer, reference, resize)
        result = run_sweep(engines, methods, steps, seeds, batches, ref, featurizer, resize=resize,
                           grids=grids or (None,), clip_x0=clip_x0, progress=progress)
        table = format_table(result)
        atomic_write_text(folder / "sweep.json", json.dumps(result, indent=2) + "\n")
        atomic_write_text(folder / "sweep.md", table + "\n")
        plot(result, folder / "sweep.png")
    click.echo(table)
    click.echo(f"wrote {Path(out) / 'sweep.md'}, sweep.json, sweep.png", err=True)
