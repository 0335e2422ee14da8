"""``pndm-run sample`` / ``pndm-run check`` end to end on a tiny engine, and their one-line errors."""

import json
import shutil

import numpy as np
import pytest
import torch
from cli_checks import assert_one_line_error
from click.testing import CliRunner
from runtime_fixtures import make_engine_dir, one_torch_thread, tiny_model  # noqa: F401

from pndm.cli import run_cli


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory):
    return make_engine_dir(tmp_path_factory.mktemp("engine"))


def run(*args):
    return CliRunner().invoke(run_cli, [*args, "--no-progress"])



def test_sample_twice_gives_identical_files(engine_dir, tmp_path):
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        result = run(
            "sample",
            "--engine",
            str(engine_dir / "unet.onnx"),
            "--steps",
            "20",
            "--num",
            "4",
            "--batch",
            "3",
            "--seed",
            "5",
            "--out",
            str(out),
        )
        assert result.exit_code == 0, result.output
        outs.append(out)
    names = sorted(p.name for p in outs[0].iterdir())
    assert names == [
        "grid.png",
        "run.json",
        "seed000005.png",
        "seed000006.png",
        "seed000007.png",
        "seed000008.png",
    ]
    for name in names[:1] + names[2:]:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
    info = json.loads((outs[0] / "run.json").read_text())
    assert (info["method"], info["steps"], info["nfe"], info["batch"], info["num_images"]) == (
        "f-pndm",
        20,
        29,
        3,
        4,
    )
    assert info["model_calls"] == 58  # two batches (3 + 1) of 29 NFE
    assert info["latency_per_nfe_ms"] > 0 and info["images_per_second"] > 0
    assert info["engine"]["backend"] == "onnxruntime" and info["engine"]["precision"] == "fp32"
    assert "torch" in info["versions"] and "onnxruntime" in info["versions"]


def test_sample_npz_and_torch_backend_agree_with_onnx(engine_dir, tmp_path):
    args = ["--steps", "10", "--num", "3", "--method", "ddim", "--format", "npz"]
    a = run("sample", "--engine", str(engine_dir / "unet.onnx"), "--out", str(tmp_path / "onnx"), *args)
    b = run(
        "sample", "--engine", str(engine_dir / "reference.safetensors"), "--out", str(tmp_path / "pt"), *args
    )
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    onnx, pt = np.load(tmp_path / "onnx" / "samples.npz"), np.load(tmp_path / "pt" / "samples.npz")
    assert onnx["images"].dtype == np.uint8 and onnx["images"].shape == (3, 16, 16, 3)
    assert onnx["seeds"].tolist() == [0, 1, 2]
    assert np.abs(onnx["images"].astype(int) - pt["images"].astype(int)).max() <= 1
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == ["grid.png", "run.json", "samples.npz"]


def test_check_passes_for_fp32_onnx(engine_dir, tmp_path):
    result = run(
        "check",
        "--engine",
        str(engine_dir / "unet.onnx"),
        "--steps",
        "10",
        "--num",
        "2",
        "--json",
        str(tmp_path / "check.json"),
    )
    assert result.exit_code == 0, result.output
    assert "PASS (fp32 thresholds)" in result.output
    report = json.loads((tmp_path / "check.json").read_text())
    assert report["passed"] and report["nfe"] == 19 and len(report["lockstep"]["per_nfe"]) == 19
    assert report["lockstep"]["worst_rel_l2"] < 1e-5
    assert report["images"]["max_grey_diff"] <= 1


def test_check_fails_for_different_weights(engine_dir, tmp_path):
    """An engine of other weights than its reference must fail (exit 1), naming the lockstep error."""
    from runtime_fixtures import export_tiny_onnx, write_manifest

    folder = tmp_path / "wrong"
    shutil.copytree(engine_dir, folder)
    export_tiny_onnx(tiny_model(seed=1), folder / "unet.onnx")
    write_manifest(folder, {"unet.onnx": {"kind": "onnx", "precision": "fp32"}})
    result = run(
        "check", "--engine", str(folder / "unet.onnx"), "--steps", "5", "--num", "2", "--method", "ddim"
    )
    assert result.exit_code == 1, result.output
    assert "FAIL (fp32 thresholds)" in result.output and "lockstep eps relative L2" in result.output


def test_check_names_the_first_nonfinite_nfe(engine_dir):
    """A candidate that returns NaN for t < 600 fails at the first NFE that reaches it."""
    from pndm.runtime import load_engine
    from pndm.runtime.checker import check_engine

    reference = load_engine(engine_dir / "reference.safetensors", device="cpu")
    candidate = load_engine(engine_dir / "reference.safetensors", device="cpu")
    inner = candidate.model
    candidate.model = lambda x, t: torch.where((t < 600).view(-1, 1, 1, 1), torch.nan, inner(x, t))
    report = check_engine(candidate, reference, [0, 1], method="ddim", steps=10, batch=2, progress=False)
    assert not report.passed
    # DDIM with 10 steps visits t = 900, 800, ..., 0: t = 500 is the 5th evaluation (index 4).
    assert (report.nonfinite.phase, report.nonfinite.nfe_index, report.nonfinite.t) == ("lockstep", 4, 500.0)
    assert "NaN/Inf in lockstep at NFE 4 (t=500)" in report.failures[0]


def test_help_lists_every_option_with_its_default():
    for command in ("sample", "check"):
        result = CliRunner().invoke(run_cli, [command, "--help"])
        assert result.exit_code == 0
        assert "--debug" in result.output and "--method" in result.output
    sample_help = CliRunner().invoke(run_cli, ["sample", "--help"]).output
    for text in (
        "default: f-pndm",
        "default: 50",
        "default: 16",
        "default: png",
        "default: auto",
        "default: 0",
    ):
        assert text in sample_help, text


def test_unknown_method(engine_dir, tmp_path):
    result = run(
        "sample", "--engine", str(engine_dir / "unet.onnx"), "--method", "euler", "--out", str(tmp_path / "o")
    )
    assert_one_line_error(result, "unknown method 'euler'", "f-pndm", "ddim")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("args", "fragments"), [
    (["sample", "--bogus", "1"], ["No such option '--bogus'", " sample --help)"]),  # "(see PROG ...)"
    (["bogus"], ["No such command 'bogus' (see ", " --help)"]),
])
def test_an_unknown_option_or_command_is_one_line_naming_the_help(args, fragments):
    assert_one_line_error(run(*args), *fragments)


def test_batch_outside_profile(engine_dir, tmp_path):
    result = run(
        "sample",
        "--engine",
        str(engine_dir / "unet.onnx"),
        "--num",
        "16",
        "--batch",
        "16",
        "--out",
        str(tmp_path / "o"),
    )
    assert_one_line_error(result, "batch size 16", "[1, 8]")
    assert not (tmp_path / "o").exists()


def test_truncated_engine(engine_dir, tmp_path):
    folder = tmp_path / "e"
    shutil.copytree(engine_dir, folder)
    data = (folder / "unet.onnx").read_bytes()
    (folder / "unet.onnx").write_bytes(data[:1000])
    result = run("sample", "--engine", str(folder / "unet.onnx"), "--out", str(tmp_path / "o"))
    assert_one_line_error(result, "truncated")
    assert not (tmp_path / "o").exists()


def test_engine_without_hash_is_refused(engine_dir, tmp_path):
    from runtime_fixtures import write_manifest

    folder = tmp_path / "e"
    shutil.copytree(engine_dir, folder)
    (folder / "unet.onnx").write_bytes(b"\x08\x07garbage" * 100)
    manifest = write_manifest(folder, {"unet.onnx": {"kind": "onnx", "precision": "fp32"}})
    manifest["engines"]["unet.onnx"].pop("sha256")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    result = run("check", "--engine", str(folder / "unet.onnx"))
    assert_one_line_error(result, "has no sha256, so the file cannot be checked (refused)")


def test_missing_manifest(engine_dir, tmp_path):
    shutil.copy(engine_dir / "unet.onnx", tmp_path / "unet.onnx")
    result = run("sample", "--engine", str(tmp_path / "unet.onnx"), "--out", str(tmp_path / "o"))
    assert_one_line_error(result, "manifest")
    assert not (tmp_path / "o").exists()


def test_non_writable_output(engine_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = run("sample", "--engine", str(engine_dir / "unet.onnx"), "--out", str(blocker / "out"))
    assert_one_line_error(result, f"{blocker} is a file, not a folder", "choose another --out")
