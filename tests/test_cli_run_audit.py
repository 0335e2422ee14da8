"""Fixes from an audit of ``pndm-run``: bad input is a one-line error (exit 2) before any work, sweep
rows of same-named engines stay apart, ``--recipe`` refuses an explicit --method/--steps, ``--batch`` is
checked whatever -n is, and ``tune`` keeps the fixed grid when its tuned one loses on held-out seeds."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_checks import assert_one_line_error
from click.testing import CliRunner
from PIL import Image
from runtime_fixtures import make_engine_dir, one_torch_thread  # noqa: F401

from pndm.cli import run_cli

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory):
    return make_engine_dir(tmp_path_factory.mktemp("engine"))


pytestmark = pytest.mark.usefixtures("cache_dir")  # conftest: an empty cache per test


def run(*args):
    return CliRunner().invoke(run_cli, list(args))



def _png_folder(folder: Path, count: int = 6) -> Path:
    folder.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (count, 16, 16, 3), dtype=np.uint8)
    for i, image in enumerate(pixels):
        Image.fromarray(image).save(folder / f"seed{i:06d}.png")
    return folder


# --- 1. sweep: engines of the same file name get distinct rows ---


def test_engine_labels_add_parent_folders_only_where_names_repeat(tmp_path):
    from pndm.scoring.sweep import engine_labels

    for name in ("a/x", "b/x", "c/y"):
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "unet.onnx").write_bytes(b"")
    paths = [str(tmp_path / n / "unet.onnx") for n in ("a/x", "b/x", "c/y")]
    assert engine_labels(paths) == ["a/x/unet.onnx", "b/x/unet.onnx", "c/y/unet.onnx"]
    assert engine_labels(paths[1:]) == ["x/unet.onnx", "y/unet.onnx"]
    assert engine_labels([paths[0], "default"]) == ["unet.onnx", "default"]
    with pytest.raises(ValueError, match="given twice"):
        engine_labels([paths[0], str(tmp_path / "a/x/../x/unet.onnx")])


def test_sweep_keeps_same_named_engines_apart(engine_dir, tmp_path):
    pytest.importorskip("matplotlib")
    other = tmp_path / "other"
    shutil.copytree(engine_dir, other)
    reference = tmp_path / "real.npz"
    images = np.random.default_rng(1).integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
    np.savez(reference, images=images)
    out = tmp_path / "sweep"
    result = run("sweep", "--engine", str(engine_dir / "unet.onnx"), "--engine", str(other / "unet.onnx"),
                 "--method", "ddim", "--steps", "2", "-n", "4", "--batch", "4", "--reference", str(reference),
                 "--out", str(out), "--no-progress", "--threads", "1")
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert [r["engine"] for r in rows] == [f"{engine_dir.name}/unet.onnx (fp32)", "other/unet.onnx (fp32)"]
    twice = run("sweep", "--engine", str(engine_dir), "--engine", str(engine_dir), "--out",
                str(tmp_path / "t"))
    assert_one_line_error(twice, "given twice")


# --- 2. tracebacks on bad input ---


@pytest.mark.parametrize("command", ["tune", "sweep", "interpolate"])
def test_bad_device_is_one_line(command, engine_dir, tmp_path):
    extra = ["--nfe", "4"] if command == "tune" else ["--out", str(tmp_path / "o")]
    result = run(command, "--engine", str(engine_dir / "unet.onnx"), "--device", "gpu", *extra)
    assert_one_line_error(result, "--device", "'gpu' is not a device", "cpu, cuda, cuda:N or auto")


def test_interpolate_seed_past_64_bits_is_one_line(engine_dir, tmp_path):
    result = run("interpolate", "--engine", str(engine_dir / "unet.onnx"), "--steps", "2", "--seeds", "0",
                 str(2**64), "--frames", "3", "--out", str(tmp_path / "o"))
    assert_one_line_error(result, "--seeds", str(2**64))


def test_score_unreadable_reference_npz_is_one_line(tmp_path):
    samples = _png_folder(tmp_path / "samples")
    bad = tmp_path / "bad.npz"
    bad.write_text("garbage\n")
    result = run("score", str(samples), "--reference", str(bad))
    assert_one_line_error(result, "bad.npz", "not a readable .npz")


# --- 3. tune checks --out and its seeds before any work (a missing engine would fail later) ---


@pytest.mark.parametrize("case", ["folder", "unwritable", "empty", "seed"])
def test_tune_checks_out_and_seeds_first(case, tmp_path):
    (tmp_path / "adir").mkdir()
    (tmp_path / "file").write_text("not a folder")
    args, fragments = {
        "folder": (["--out", str(tmp_path / "adir")], ["--out", "is a folder", "path of a file"]),
        "unwritable": (["--out", str(tmp_path / "file" / "r.json")], ["file is a file, not a folder; choose "
                                                                       "another --out"]),
        "empty": (["--out", ""], ["--out is empty"]),
        "seed": (["--seed", str(2**64 - 1), "--seeds", "2", "--holdout", "3"],
                 [f"--seed {2**64 - 1}", "64 bits", f"use --seed {2**64 - 5} or less"]),
    }[case]
    result = run("tune", "--engine", str(tmp_path / "missing.onnx"), "--nfe", "4", *args)
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "adir" / "recipe.json").exists()


# --- 4. where the recipe of a model name goes ---


def test_a_model_name_recipe_is_in_the_current_folder_named_absolutely(tmp_path, monkeypatch):
    from pndm.runtime.recipes import default_recipe_path

    monkeypatch.chdir(tmp_path)
    assert default_recipe_path("default") == tmp_path / "recipe.json"
    assert default_recipe_path(str(tmp_path)) == tmp_path / "recipe.json"
    (tmp_path / "eng").mkdir()
    (tmp_path / "eng" / "unet.onnx").write_bytes(b"")
    assert default_recipe_path("eng/unet.onnx") == tmp_path / "eng" / "recipe.json"  # relative given


# --- 5. --recipe / --grid tuned refuse an explicit --method or --steps ---


@pytest.mark.parametrize("args, fragments", [
    (["--recipe", "r.json", "--steps", "30", "--method", "ddim"],
     ["--recipe brings its own method and steps", "drop --method and --steps"]),
    (["--recipe", "r.json", "--method", "ddim"], ["drop --method"]),
    (["--grid", "tuned", "--steps", "30"], ["--grid tuned brings its own method and steps", "drop --steps"]),
])
@pytest.mark.parametrize("command", ["sample", "check"])
def test_recipe_refuses_explicit_method_and_steps(command, args, fragments, tmp_path):
    result = run(command, "--engine", str(tmp_path / "missing.onnx"), *args)
    assert_one_line_error(result, *fragments)


# --- 6. --batch outside the profile is refused whatever -n is ---


@pytest.mark.parametrize("command", ["sample", "check"])
def test_batch_outside_profile_with_fewer_images(engine_dir, tmp_path, command):
    out = ["--out", str(tmp_path / "o")] if command == "sample" else ["--json", str(tmp_path / "o")]
    result = run(command, "--engine", str(engine_dir / "unet.onnx"), "--steps", "4", "-n", "2", "--batch",
                 "9", *out, "--no-progress")
    assert_one_line_error(result, "batch size 9", "[1, 8]")
    assert not (tmp_path / "o").exists()


def test_check_default_batch_fits_a_small_profile(engine_dir, tmp_path):
    """Without --batch, check calls the engine as sample does: within its profile (here at most 2)."""
    small = shutil.copytree(engine_dir, tmp_path / "small")
    manifest = json.loads((small / "manifest.json").read_text())
    manifest["batch"] = {"min": 1, "opt": 2, "max": 2}
    (small / "manifest.json").write_text(json.dumps(manifest))
    result = run("check", "--engine", str(small / "unet.onnx"), "--method", "ddim", "--steps", "2", "-n", "3",
                 "--no-progress")
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output


# --- 7. output options name themselves; folders and empty paths are refused ---


def test_score_json_errors_name_json(tmp_path):
    samples = _png_folder(tmp_path / "samples")
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "adir").mkdir()
    unwritable = run("score", str(samples), "--reference", "mnist", "--json",
                     str(tmp_path / "file" / "x.json"))
    assert_one_line_error(unwritable, "file is a file, not a folder; choose another --json")
    folder = run("score", str(samples), "--reference", "mnist", "--json", str(tmp_path / "adir"))
    assert_one_line_error(folder, "--json", "is a folder")


def test_recipe_folder_and_empty_out_are_refused(engine_dir, tmp_path):
    (tmp_path / "adir").mkdir()
    result = run("sample", "--engine", str(engine_dir / "unet.onnx"), "--recipe", str(tmp_path / "adir"),
                 "--out", str(tmp_path / "o"), "--no-progress")
    assert_one_line_error(result, "is a folder", "give the recipe file")
    empty = run("sample", "--engine", str(engine_dir / "unet.onnx"), "--out", "")
    assert_one_line_error(empty, "--out is empty")


# --- 8. --steps below the method's minimum, before the engine loads ---


@pytest.mark.parametrize("command", ["sample", "check", "sweep", "interpolate"])
def test_too_few_steps_fail_before_loading(command, tmp_path):
    method = "s-pndm" if command == "interpolate" else "f-pndm"
    minimum = 2 if method == "s-pndm" else 4
    result = run(command, "--engine", str(tmp_path / "missing.onnx"), "--method", method, "--steps", "1",
                 *(["--out", str(tmp_path / "o")] if command != "check" else []))
    assert_one_line_error(result, f"--method {method} needs --steps {minimum} or more")


# --- 9. interpolate's solver and frames; the README lists every method ---


def test_interpolate_refuses_stochastic_methods_and_too_many_frames(engine_dir, tmp_path):
    engine = str(engine_dir / "unet.onnx")
    result = run("interpolate", "--engine", engine, "--method", "ddpm", "--out", str(tmp_path / "o"))
    assert_one_line_error(result, "ddpm is stochastic", "deterministic", "ddim")
    too_many = run("interpolate", "--engine", engine, "--frames", "65", "--out", str(tmp_path / "o"))
    assert_one_line_error(too_many, "--frames", "2<=x<=64")


def test_readme_solver_table_lists_every_method():
    from pndm.solvers import METHODS

    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("| method | NFE for N steps |"):]
    table = table[:table.index("\n\n")]
    listed = set(re.findall(r"`([a-z0-9+\-]+)`", table))
    assert set(METHODS) <= listed, set(METHODS) - listed


# --- 10. --help states the defaults ---


@pytest.mark.parametrize("command, texts", [
    ("tune", ["--threads", "default: one per physical core", "default: auto"]),
    ("sweep", ["--threads", "default: one per physical core", "Default: inception when --inception"]),
    ("score", ["--threads", "default: one per physical core", "Default: inception when --inception",
               "(default: none)"]),
    ("interpolate", ["64 at most", "deterministic ones only"]),
])
def test_help_states_defaults(command, texts):
    result = CliRunner().invoke(run_cli, [command, "--help"])
    text = " ".join(result.output.split())
    for fragment in texts:
        assert fragment in text, fragment


# --- 11. tune keeps the fixed grid when the tuned one is worse on held-out seeds ---


def test_tune_keeps_the_fixed_grid_when_tuning_overfits(engine_dir, tmp_path, monkeypatch):
    import pndm.solvers.tuning
    from pndm.runtime.loader import load_engine
    from pndm.solvers import make_grid

    def overfitted(eps, x_T, reference, method, steps, schedule, *, start, budget):
        return [999.0 - k for k in range(steps)], 1.0, 1e-9  # crowded at the top: poor everywhere

    monkeypatch.setattr(pndm.solvers.tuning, "tune_grid", overfitted)
    out = tmp_path / "recipe.json"
    result = run("tune", "--engine", str(engine_dir / "unet.onnx"), "--nfe", "4", "--seeds", "1", "--holdout",
                 "1", "--budget", "1", "--threads", "1", "--out", str(out))
    assert result.exit_code == 0, result.output
    recipe = json.loads(out.read_text())
    fixed = recipe["tuned_from"]
    assert recipe["kept"] == fixed and f"the recipe keeps {fixed}'s timesteps" in result.output
    assert recipe["error"]["tuned"]["holdout"] > recipe["error"]["best_fixed"]["holdout"]
    schedule = load_engine(str(engine_dir / "unet.onnx"), "cpu").schedule
    assert recipe["grid"] == make_grid(fixed, recipe["steps"], schedule)[:-1].tolist()
    assert f"--recipe {out}" in " ".join(result.output.split())
