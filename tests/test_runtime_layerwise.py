"""--layerwise: Polygraphy finds the first tensor where two graphs part ways."""

import onnx
import pytest
import torch
from onnx import numpy_helper
from runtime_fixtures import export_tiny_onnx, one_torch_thread, tiny_model  # noqa: F401

from pndm.runtime.layerwise import compare_layers, format_layerwise


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """The tiny UNet's ONNX, and a copy whose 3rd Conv has its weights scaled by 1.5."""
    folder = tmp_path_factory.mktemp("layerwise")
    good = folder / "unet.onnx"
    export_tiny_onnx(tiny_model(), good)
    model = onnx.load(str(good))
    initializers = {init.name: init for init in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv" and n.input[1] in initializers]
    target = convs[2]
    weight = initializers[target.input[1]]
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.5, weight.name))
    bad = folder / "unet.bad.onnx"
    onnx.save(model, str(bad))
    return good, bad, target.output[0]


def test_first_divergent_tensor_is_the_changed_conv(graphs):
    good, bad, changed = graphs
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([300.0, 700.0])
    result = compare_layers(bad, good, x, t, tolerance=1e-3)
    assert result["compared"] > 20
    assert result["first_divergent"]["tensor"] == changed
    assert result["first_divergent"]["rel_l2"] > 0.1
    assert changed in format_layerwise(result)


def test_identical_graphs_do_not_diverge(graphs):
    good, _, _ = graphs
    result = compare_layers(good, good, torch.randn(1, 3, 16, 16), torch.tensor([10.0]), tolerance=1e-6)
    assert result["first_divergent"] is None
    assert max(layer["rel_l2"] for layer in result["layers"]) == 0.0


def test_layerwise_on_the_fp32_graph_itself_is_refused_before_the_check(tmp_path, monkeypatch):
    from cli_checks import assert_one_line_error
    from click.testing import CliRunner
    from runtime_fixtures import make_engine_dir

    from pndm.cli import run_cli

    monkeypatch.setenv("PNDM_CACHE_DIR", str(tmp_path / "cache"))
    engine = make_engine_dir(tmp_path / "engine") / "unet.onnx"
    result = CliRunner().invoke(run_cli, ["check", "--engine", str(engine), "--layerwise", "--steps", "5"])
    assert_one_line_error(result, "is the fp32 graph itself", "check unet.fp16.onnx instead")
    assert "lockstep" not in result.output
