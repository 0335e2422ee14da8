"""``pndm-run tune`` on a tiny engine, recipes with ``sample --recipe`` / ``--grid tuned``, and the
one-line errors of ``--grid`` and ``--recipe``."""

import json

import pytest
from cli_checks import assert_one_line_error
from click.testing import CliRunner
from runtime_fixtures import make_engine_dir, one_torch_thread  # noqa: F401

from pndm.cli import run_cli


@pytest.fixture(scope="module")
def tuned_engine(tmp_path_factory):
    folder = make_engine_dir(tmp_path_factory.mktemp("engine"))
    result = run(
        "tune",
        "--engine",
        str(folder / "unet.onnx"),
        "--nfe",
        "5",
        "--seeds",
        "1",
        "--holdout",
        "1",
        "--budget",
        "6",
        "--threads",
        "1",
    )
    assert result.exit_code == 0, result.output
    return folder, result.output


def run(*args):
    return CliRunner().invoke(run_cli, list(args))



@pytest.mark.slow
def test_tune_prints_the_table_and_writes_a_recipe_for_this_engine(tuned_engine):
    folder, output = tuned_engine
    assert (
        "| method | grid | steps | NFE | RMSE vs reference |" in output
        and "| ipndm | quad | 5 | 5 |" in output
    )
    assert "held-out seeds (1): tuned" in output
    recipe_path = (folder / "recipe.json").resolve()
    assert f"wrote {recipe_path}; sample with: pndm-run sample --engine {folder / 'unet.onnx'} --recipe " \
        f"{recipe_path}" in output
    recipe = json.loads((folder / "recipe.json").read_text())
    assert recipe["format"] == "pndm-recipe/1" and recipe["nfe"] <= 5
    assert len(recipe["grid"]) == recipe["steps"] and recipe["grid"][0] == 999
    assert (
        recipe["engine"]["sha256"]
        == json.loads((folder / "manifest.json").read_text())["engines"]["unet.onnx"]["sha256"]
    )
    assert recipe["error"]["tuned"]["rmse"] <= recipe["error"]["best_fixed"]["rmse"]
    assert recipe["kept"] in ("tuned", recipe["tuned_from"])


@pytest.mark.slow
def test_sample_uses_the_recipe(tuned_engine, tmp_path):
    folder, _ = tuned_engine
    recipe = json.loads((folder / "recipe.json").read_text())
    for how in (["--grid", "tuned"], ["--recipe", str(folder / "recipe.json")]):
        out = tmp_path / how[0].strip("-")
        result = run(
            "sample",
            "--engine",
            str(folder / "unet.onnx"),
            "--num",
            "2",
            "--out",
            str(out),
            "--no-progress",
            *how,
        )
        assert result.exit_code == 0, result.output
        record = json.loads((out / "run.json").read_text())
        assert json.dumps(record).count("tuned (") >= 1 and f"NFE {recipe['nfe']}" in result.output


@pytest.mark.slow
def test_a_recipe_for_another_engine_is_refused(tuned_engine, tmp_path):
    folder, _ = tuned_engine
    recipe = json.loads((folder / "recipe.json").read_text())
    recipe["engine"]["sha256"] = "0" * 64
    other = tmp_path / "other.json"
    other.write_text(json.dumps(recipe))
    result = run(
        "sample",
        "--engine",
        str(folder / "unet.onnx"),
        "--recipe",
        str(other),
        "--num",
        "1",
        "--out",
        str(tmp_path / "x"),
        "--no-progress",
    )
    assert_one_line_error(result, "was tuned for another engine", "run pndm-run tune on this one")


@pytest.mark.parametrize(
    "args, fragments",
    [
        (
            ["--grid", "cosine"],
            ["unknown grid 'cosine'", "leading, trailing, linspace, quad, karras, logsnr"],
        ),
        (["--grid", "quad:9"], ["grid quad: power must be in [0.5, 6]"]),
        (["--grid", "karras:-1"], ["grid karras: rho must be in [1, 20]"]),
        (["--grid", "quad", "--recipe", "r.json"], ["--recipe brings its own tuned grid"]),
        (["--recipe", "missing.json"], ["no recipe at missing.json"]),
    ],
)
def test_bad_grid_options_are_one_line_errors(tmp_path, args, fragments):
    folder = make_engine_dir(tmp_path / "engine")
    result = run(
        "sample",
        "--engine",
        str(folder / "unet.onnx"),
        "--num",
        "1",
        "--out",
        str(tmp_path / "o"),
        "--no-progress",
        *args,
    )
    assert_one_line_error(result, *fragments)


def test_check_and_sample_take_a_named_grid(tmp_path):
    folder = make_engine_dir(tmp_path / "engine")
    result = run(
        "sample",
        "--engine",
        str(folder / "unet.onnx"),
        "--num",
        "1",
        "--steps",
        "5",
        "--grid",
        "karras:5",
        "--method",
        "ipndm",
        "--out",
        str(tmp_path / "o"),
        "--no-progress",
    )
    assert result.exit_code == 0, result.output
    assert '"grid": "karras:5"' in (tmp_path / "o" / "run.json").read_text()
    result = run(
        "check",
        "--engine",
        str(folder / "unet.onnx"),
        "--num",
        "1",
        "--steps",
        "5",
        "--grid",
        "quad",
        "--method",
        "ipndm",
        "--no-progress",
    )
    assert result.exit_code in (0, 1) and not result.output.startswith("error"), result.output
