"""A user module that torch.export cannot trace faithfully fails the export in one line (exit code 2), with
the original error kept for ``--debug``; user-module options that do not apply are refused; and
``pndm-export build --help`` says what the options accept."""

import pytest
from cli_checks import assert_one_line_error
from click.testing import CliRunner
from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode
from user_nets import NETS

from pndm.cli import export_cli
from pndm.errors import PndmError
from pndm.export.batch import parse_batch
from pndm.export.onnx_export import check_opset, export_onnx, opset_range
from pndm.models import load_module


@pytest.fixture
def nets(tmp_path):
    path = tmp_path / "nets.py"
    path.write_text(NETS)
    return path


@pytest.mark.parametrize("factory", ["branch", "item"])
def test_forward_that_depends_on_tensor_values_is_refused_quietly(nets, factory, capfd):
    """An ``if`` on a tensor fails torch.export; ``float(t.item())`` used to become a constant in a graph
    that disagrees with the model. Neither prints torch's partial FX graph."""
    model, _ = load_module(f"{nets}:{factory}", image_shape=(3, 8, 8))
    capfd.readouterr()
    with pytest.raises(PndmError) as exc:
        export_onnx(model, (3, 8, 8), parse_batch("1:2:4"), 20)
    message = str(exc.value)
    assert "\n" not in message and "torch.export cannot trace the model" in message
    assert "depends on tensor values (Could not guard on data-dependent expression" in message
    assert "torch.where instead of if, no .item()/float()" in message
    assert isinstance(exc.value.__cause__, GuardOnDataDependentSymNode)  # what --debug shows
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""


def run(*args, env=None):
    return CliRunner().invoke(export_cli, ["build", *args, "--trt", "off"], env=env)



@pytest.mark.parametrize("factory, options, problem", [
    ("varargs", [], "forward(*args, **kwargs) does not name its inputs"),
    ("class_conditional", [], "takes class_labels: pass --num-classes K (the number of classes)"),
    ("make", ["--sigma-min", "0.01", "--sigma-max", "5"], "--sigma-min/--sigma-max need --denoiser sigma"),
    ("make", ["--denoiser", "sigma", "--prediction", "epsilon"], "drop --schedule/--prediction"),
    ("make", ["--weights", "nope.safetensors"], "nope.safetensors: no such file"),
])
def test_module_options_errors_on_the_command_line(nets, tmp_path, factory, options, problem):
    out = tmp_path / "o"
    result = run("--module", f"{nets}:{factory}", "--image-shape", "3,8,8", *options, "--out", str(out))
    assert_one_line_error(result, problem)
    assert not out.exists()


def test_debug_shows_torch_exports_error(nets, tmp_path):
    result = run("--module", f"{nets}:branch", "--image-shape", "3,8,8", "--out", str(tmp_path / "o"),
                 "--calibration-steps", "1", "--calibration-count", "1", env={"PNDM_DEBUG": "1"})
    assert isinstance(result.exception, PndmError)
    assert isinstance(result.exception.__cause__, GuardOnDataDependentSymNode)


def test_help_states_the_opsets_the_check_accepts_and_pipeline_folders():
    text = " ".join(CliRunner().invoke(export_cli, ["build", "--help"]).output.split())
    oldest, newest = opset_range()
    assert f"ONNX opset, {oldest}-{newest}" in text
    check_opset(oldest), check_opset(newest)
    assert "diffusers pipeline folder" in text
