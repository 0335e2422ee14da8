"""pndm.scoring: Frechet distance, precision/recall, ``pndm-run score`` / ``sweep`` / ``interpolate``,
``sample --save-trajectory``, on the shipped feature judge and a tiny random 28x28 model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from pndm.cli import run_cli
from pndm.scoring.frechet import frechet_distance, precision_recall, statistics

pytestmark = pytest.mark.usefixtures("cache_dir")  # conftest: an empty cache per test


def run(*args):
    return CliRunner().invoke(run_cli, list(args))


@pytest.fixture(scope="module")
def digits():
    from pndm.train.data import load_images

    images = load_images("mnist")  # sorted by class: take a random 600
    return images[torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:600]]


@pytest.fixture(scope="module")
def reference_npz(digits, tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "real.npz"
    np.savez(path, images=digits[100:].permute(0, 2, 3, 1).numpy())
    return path


def _png_folder(pixels: torch.Tensor, folder):
    folder.mkdir()
    for i, image in enumerate(pixels):
        Image.fromarray(image[0].numpy(), mode="L").save(folder / f"seed{i:06d}.png")
    Image.fromarray(np.zeros((10, 10), np.uint8), mode="L").save(folder / "grid.png")  # skipped
    return folder


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from pndm.models import build_model, save_checkpoint
    from pndm.train.presets import resolve_arch

    config = resolve_arch("tiny28")
    torch.manual_seed(0)
    model = build_model("ddpm", config)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
    save_checkpoint(path, model.state_dict(),
                    {"architecture": "ddpm", "model": config, "diffusion": {"schedule": "linear", "T": 1000}})
    return path


def test_frechet_distance_closed_form():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.5, 2, 6), rng.uniform(0.5, 2, 6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()  # commuting covariances
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))  # a rotation of one: Tr sqrt(S1 S2) by eigenvalues
    s1, s2 = q @ np.diag(a) @ q.T, np.diag(b)
    w = np.linalg.eigvals(s1 @ s2)
    expected = np.trace(s1) + np.trace(s2) - 2 * np.sqrt(w.real).sum()
    assert frechet_distance(mu1, s1, mu1, s2) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0, abs=1e-9)


def test_precision_recall_extremes():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 4))
    assert precision_recall(x, x) == {"precision": 1.0, "recall": 1.0}
    assert precision_recall(x + 100, x) == {"precision": 0.0, "recall": 0.0}
    half = precision_recall(x[:25], x)  # samples cover only part of the reference
    assert half["precision"] == 1.0 and half["recall"] < 1.0


def test_score_real_digits_near_baseline_noise_far(digits, reference_npz, tmp_path, cache_dir):
    real = _png_folder(digits[:100], tmp_path / "real")
    noise = torch.randint(0, 256, (100, 1, 28, 28), generator=torch.Generator().manual_seed(0),
                          dtype=torch.uint8)
    fake = _png_folder(noise, tmp_path / "noise")
    reports = []
    for folder in (real, fake):
        result = run("score", str(folder), "--reference", str(reference_npz), "--json",
                     str(folder / "s.json"))
        assert result.exit_code == 0, result.output
        reports.append(json.loads(result.output))
        assert json.loads((folder / "s.json").read_text()) == reports[-1]
    good, bad = reports
    assert good["num_samples"] == 100 and good["num_reference"] == 500 and good["features"] == "judge"
    base = good["real_vs_real"]
    assert base["num_samples"] == 100 and base["num_reference"] == 400
    assert good["fd"] < 3 * base["fd"]
    assert bad["fd"] > 20 * base["fd"] and bad["precision"] < 0.05
    assert good["precision"] > 0.7
    assert list(cache_dir.glob("scoring/judge-*.npz")) == [type(cache_dir)(good["reference_cache"])]
    again = json.loads(run("score", str(real), "--reference", str(reference_npz)).output)
    assert again["fd"] == good["fd"]


def test_statistics_file_reference_has_no_baseline(digits, tmp_path):
    from pndm.scoring.score import make_featurizer

    mu, sigma = statistics(make_featurizer("judge")(digits[100:]))
    stats = tmp_path / "stats.npz"
    np.savez(stats, mu=mu, sigma=sigma)
    real = _png_folder(digits[:50], tmp_path / "real")
    report = json.loads(run("score", str(real), "--reference", str(stats), "--no-pr").output)
    assert report["real_vs_real"] is None and report["fd"] > 0 and "precision" not in report


@pytest.mark.parametrize("args, fragment", [
    (["--inception", "nowhere.pth"], "pt_inception-2015-12-05-6726825d.pth"),
    (["--features", "inception"], "--inception FILE"),
])
def test_score_inception_errors_are_one_line(args, fragment, digits, tmp_path):
    real = _png_folder(digits[:4], tmp_path / "real")
    result = run("score", str(real), "--reference", "mnist", *args)
    assert result.exit_code == 2 and fragment in result.output and "Traceback" not in result.output


def test_slerp_ends_and_norm():
    from pndm.runtime.latents import slerp

    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(1, 28, 28, generator=g), torch.randn(1, 28, 28, generator=g)
    path = slerp(z0, z1, torch.linspace(0, 1, 5))
    torch.testing.assert_close(path[0], z0)
    torch.testing.assert_close(path[-1], z1)
    norms = path.flatten(1).norm(dim=1)
    assert (norms > 0.95 * min(z0.norm(), z1.norm())).all()  # a straight line would dip to ~0.71
    u0, u1 = z0 / z0.norm(), z1 / z1.norm()  # on the unit sphere the path turns at a constant rate
    mid = slerp(u0, u1, torch.tensor([0.25]))[0]
    angle = torch.arccos((u0 * u1).sum())
    assert float(mid.norm()) == pytest.approx(1.0, rel=1e-5)
    assert float((mid * u0).sum()) == pytest.approx(float(torch.cos(angle / 4)), rel=1e-5)


def test_interpolate_ends_are_the_seeds_samples(tiny_checkpoint, tmp_path):
    out = tmp_path / "interp"
    result = run("interpolate", "--engine", str(tiny_checkpoint), "--seeds", "3", "7", "--frames", "4",
                 "--steps", "3", "--batch", "2", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("frame_*.png")) == [f"frame_{k:03d}.png" for k in range(4)]
    sampled = tmp_path / "sampled"
    result = run("sample", "--engine", str(tiny_checkpoint), "--method", "ddim", "--steps", "3", "-n", "1",
                 "--seed", "7", "--out", str(sampled), "--no-progress")
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(np.asarray(Image.open(out / "frame_003.png")),
                                  np.asarray(Image.open(sampled / "seed000007.png")))
    assert Image.open(out / "strip.png").size[0] > 4 * 28


def test_interpolate_output_is_all_or_nothing(tiny_checkpoint, tmp_path):
    out = tmp_path / "interp"
    args = ["--seeds", "3", "7", "--frames", "3", "--steps", "2", "--batch", "3", "--out", str(out)]
    assert run("interpolate", "--engine", str(tiny_checkpoint), *args).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    failed = run("interpolate", "--engine", str(tmp_path / "missing.ckpt"), *args)
    assert failed.exit_code == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the previous complete run stays
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging left
    (out / "notes.txt").write_text("mine")
    refused = run("interpolate", "--engine", str(tiny_checkpoint), *args)
    assert refused.exit_code == 2 and "holds files pndm-run does not write (notes.txt)" in refused.output
    assert (out / "notes.txt").read_text() == "mine"


def test_sample_saves_trajectory_of_first_batch(tiny_checkpoint, tmp_path):
    out = tmp_path / "traj"
    result = run("sample", "--engine", str(tiny_checkpoint), "--method", "f-pndm", "--steps", "4", "-n", "3",
                 "--batch", "2", "--save-trajectory", "--out", str(out), "--no-progress")
    assert result.exit_code == 0, result.output
    width, height = Image.open(out / "trajectory.png").size
    nfe, pad = 4 + 9, 2
    assert width == (nfe + 1) * (28 + pad) + pad  # one column per evaluation, then x_0
    assert height == 2 * 2 * (28 + pad) + pad  # first batch (2 images), x_t and x0_hat rows


def test_sweep_writes_table_json_and_plot(tiny_checkpoint, reference_npz, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "sweep"
    result = run("sweep", "--engine", str(tiny_checkpoint), "--method", "ddim", "--method", "s-pndm",
                 "--steps", "2,4", "-n", "8", "--batch", "8", "--reference", str(reference_npz), "--out",
                 str(out), "--no-progress")
    assert result.exit_code == 0, result.output
    data = json.loads((out / "sweep.json").read_text())
    assert [(r["method"], r["nfe"]) for r in data["rows"]] == [("ddim", 2), ("ddim", 4), ("s-pndm", 3),
                                                               ("s-pndm", 5)]
    assert all(r["fd"] > data["real_vs_real"]["fd"] for r in data["rows"])  # an untrained model
    assert (out / "sweep.md").read_text().count("\n") == 2 + 4 + 1
    assert Image.open(out / "sweep.png").size[0] > 300
    out = tmp_path / "grids"
    result = run("sweep", "--engine", str(tiny_checkpoint), "--method", "ddim", "--grid", "quad", "--grid",
                 "karras:7", "--steps", "3", "-n", "4", "--batch", "4", "--reference", str(reference_npz),
                 "--out", str(out), "--no-progress")
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert [r["grid"] for r in rows] == ["quad", "karras:7"] and rows[0]["fd"] != rows[1]["fd"]
    bad = run("sweep", "--engine", str(tiny_checkpoint), "--grid", "nope", "--out", str(tmp_path / "x"))
    assert bad.exit_code == 2 and "unknown grid" in bad.output


def test_too_few_images_for_precision_recall_is_one_line(digits, reference_npz, tmp_path, cache_dir):
    """k-NN precision/recall needs more than k images per set: a sample folder of 3 is refused in one
    line (and sweep's -n starts above k), never an IndexError."""
    folder = _png_folder(digits[:3], tmp_path / "three")
    result = run("score", str(folder), "--reference", str(reference_npz))
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: precision and recall (k=3 nearest neighbours) need more than 3 images in each set, got 3 "
        "samples; score at least 4 images"]
    assert run("score", str(folder), "--reference", str(reference_npz), "--no-pr").exit_code == 0
    swept = run("sweep", "--engine", "default", "-n", "3", "--out", str(tmp_path / "sw"))
    assert swept.exit_code == 2 and "-n" in swept.output and "Traceback" not in swept.output
