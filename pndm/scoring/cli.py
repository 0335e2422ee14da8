"""``pndm-run score`` and ``pndm-run sweep`` (registered in ``pndm-run`` by :mod:`pndm.cli`)."""

from __future__ import annotations

import json

import click

from pndm.cli import debug_option

FEATURES_HELP = ("Feature network: 'judge' (pndm's shipped MNIST/Fashion-MNIST judge, 128-d) or "
                 "'inception' (FID's Inception-v3, needs --inception).")
INCEPTION_HELP = ("FID Inception weights file (pytorch-fid's pt_inception-2015-12-05-6726825d.pth); "
                  "implies --features inception. Never downloaded.")
REFERENCE_HELP = ("Real images: 'mnist', 'fashion-mnist', a folder, an .npz of images, an IDX file, or an "
                  ".npz of statistics (mu, sigma).")


def _threads(threads):
    if threads:
        import torch

        torch.set_num_threads(threads)


@click.command()
@click.argument("samples")
@click.option("--reference", required=True, help=REFERENCE_HELP)
@click.option("--features", type=click.Choice(["judge", "inception"]), default=None, help=FEATURES_HELP)
@click.option("--inception", type=click.Path(dir_okay=False), default=None, help=INCEPTION_HELP)
@click.option("--pr/--no-pr", default=True, show_default=True, help="Also precision and recall (k=3).")
@click.option("--json", "json_path", default=None, help="Also write the report to this JSON file.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads for torch.")
@debug_option
def score(samples, reference, features, inception, pr, json_path, threads):
    """Frechet distance of SAMPLES (a sample folder, .npz or data set) to --reference, with the
    real-vs-real baseline beside it. Prints JSON."""
    from pndm.scoring.score import load_image_set, make_featurizer, reference_statistics, score_images

    _threads(threads)
    featurizer = make_featurizer(features or ("inception" if inception else "judge"), inception)
    images = load_image_set(samples)
    ref = reference_statistics(featurizer, reference)
    report = {"samples": samples, **score_images(images, ref, featurizer, with_pr=pr)}
    text = json.dumps(report, indent=2)
    if json_path:
        from pathlib import Path

        from pndm.fileio import atomic_write_text

        atomic_write_text(Path(json_path), text + "\n")
    click.echo(text)
