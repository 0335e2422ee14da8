"""Fixes from an audit of ``pndm-run score`` and ``sweep``: sweep's default batch fits every engine and an
explicit one is checked before any work; pndm's grid, trajectory and strip pictures are not scored; a
cache folder that cannot be written is skipped with one note; too-small sets and half statistics files are
one line naming the real problem."""

import json

import numpy as np
import pytest
from cli_checks import assert_one_line_error
from click.testing import CliRunner
from PIL import Image
from runtime_fixtures import make_engine_dir, one_torch_thread  # noqa: F401

from pndm.cli import run_cli


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory):
    return make_engine_dir(tmp_path_factory.mktemp("engine"))  # batch profile [1, 8]


pytestmark = pytest.mark.usefixtures("cache_dir")  # conftest: an empty cache per test


def run(*args):
    return CliRunner().invoke(run_cli, list(args))


def _pixels(count, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, 16, 16), dtype=np.uint8)


def _reference(tmp_path, count=40):
    path = tmp_path / f"real{count}.npz"
    np.savez(path, images=_pixels(count, seed=1))
    return path


def _samples(folder, count=6):
    folder.mkdir()
    for i, image in enumerate(_pixels(count)):
        Image.fromarray(image).save(folder / f"seed{i:06d}.png")
    return folder


def _sweep(engine_dir, reference, out, *extra):
    return run("sweep", "--engine", str(engine_dir / "unet.onnx"), "--method", "ddim", "--steps", "2",
               "--reference", str(reference), "--out", str(out), "--no-progress", "--threads", "1", *extra)


def test_sweep_batch_defaults_to_what_the_engine_takes_and_an_explicit_one_is_checked_first(engine_dir,
                                                                                            tmp_path):
    pytest.importorskip("matplotlib")
    result = _sweep(engine_dir, _reference(tmp_path), tmp_path / "sweep", "-n", "10")  # 10 > the profile's 8
    assert result.exit_code == 0, result.output
    assert len(json.loads((tmp_path / "sweep" / "sweep.json").read_text())["rows"]) == 1
    # refused before the reference is read (a missing one would be the error otherwise)
    refused = _sweep(engine_dir, tmp_path / "missing.npz", tmp_path / "x", "-n", "10", "--batch", "9")
    assert_one_line_error(refused, "batch size 9 is outside the engine's profile [1, 8]", "--batch 8")
    help_text = " ".join(run("sweep", "--help").output.split())
    assert "Default: for each engine, all -n images in one call" in help_text


def test_score_skips_pndms_grid_trajectory_and_strip_pictures(tmp_path):
    samples = _samples(tmp_path / "samples")
    for name in ("grid.png", "trajectory.png", "strip.png"):
        Image.fromarray(np.zeros((30, 90), np.uint8)).save(samples / name)
    result = run("score", str(samples), "--reference", str(_reference(tmp_path)))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["num_samples"] == 6


def test_a_cache_dir_that_is_a_file_is_skipped_with_one_note(tmp_path, cache_dir):
    cache_dir.write_text("not a folder")
    result = run("score", str(_samples(tmp_path / "samples")), "--reference", str(_reference(tmp_path)))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["reference_cache"] is None
    (note,) = result.stderr.splitlines()
    assert note.startswith("note: the scoring cache in ") and "Not a directory" in note
    assert "Set PNDM_CACHE_DIR to a writable folder" in note


def test_a_reference_too_small_for_the_baseline_is_named(tmp_path):
    samples = _samples(tmp_path / "samples", count=4)
    result = run("score", str(samples), "--reference", str(_reference(tmp_path, count=4)))
    assert_one_line_error(result, "the reference has 4 images", "use a reference of at least 8 images")
    assert run("score", str(samples), "--reference", str(_reference(tmp_path, count=8))).exit_code == 0


def test_a_statistics_file_without_sigma_is_named(tmp_path):
    stats = tmp_path / "stats.npz"
    np.savez(stats, mu=np.zeros(128))
    result = run("score", str(_samples(tmp_path / "samples")), "--reference", str(stats))
    assert_one_line_error(result, "stats.npz: a statistics .npz holds mu and sigma, this one has no sigma",
                          "save both")


def _mixed_folder(folder, count=10):
    """Grey images of two sizes, 16x16 and 20x24."""
    folder.mkdir()
    rng = np.random.default_rng(2)
    for i in range(count):
        shape = (16, 16) if i % 2 else (20, 24)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(folder / f"real{i:02d}.png")
    return folder


def test_resize_scores_a_reference_folder_that_mixes_sizes(tmp_path, engine_dir):
    samples, mixed = _samples(tmp_path / "samples"), _mixed_folder(tmp_path / "mixed")
    refused = run("score", str(samples), "--reference", str(mixed))
    assert_one_line_error(refused, "real01.png is 16x16 but real00.png is 20x24; all images must share one",
                          "or pass --resize N (e.g. 299 for inception)")
    result = run("score", str(samples), "--reference", str(mixed), "--resize", "16")
    assert result.exit_code == 0, result.output
    # the same as scoring against those images resized beforehand (PIL bilinear, each image on its own)
    by_hand = np.stack([np.asarray(Image.open(p).resize((16, 16), Image.Resampling.BILINEAR))
                        for p in sorted(mixed.glob("*.png"))])
    np.savez(tmp_path / "by_hand.npz", images=by_hand)
    expected = run("score", str(samples), "--reference", str(tmp_path / "by_hand.npz"))
    assert json.loads(result.stdout)["fd"] == pytest.approx(json.loads(expected.stdout)["fd"], rel=1e-9)
    pytest.importorskip("matplotlib")
    swept = _sweep(engine_dir, mixed, tmp_path / "sweep", "-n", "4", "--resize", "16")
    assert swept.exit_code == 0, swept.output
    assert json.loads((tmp_path / "sweep" / "sweep.json").read_text())["rows"][0]["fd"] > 0
