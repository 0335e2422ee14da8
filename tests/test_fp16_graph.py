"""The ONNX-level fp16 rewrite: policy in the graph, numerics in ONNX Runtime, any model (diffusers too)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from pndm.errors import PndmError
from pndm.export.batch import parse_batch
from pndm.export.fp16_graph import convert_to_fp16
from pndm.export.onnx_export import export_onnx
from pndm.export.precision import check_onnx_policy

F32, F16 = TensorProto.FLOAT, TensorProto.FLOAT16


def _init(name, array):
    return numpy_helper.from_array(np.asarray(array, np.float32), name)


def toy_graph() -> onnx.ModelProto:
    """x (1,4,4,4), t (1,) -> eps: timestep sin/cos, conv, decomposed LayerNorm, softmax, Resize, constants.

    ``two`` is shared by the Pow of the statistics (fp32) and a Mul (fp16): it needs both dtypes.
    """
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Constant", [], ["freq"], name="freq_const", value_floats=[0.5, 1.0, 2.0, 4.0]),
        helper.make_node("Unsqueeze", ["t", "ax1"], ["t1"], name="t_unsq"),
        helper.make_node("Mul", ["t1", "freq"], ["arg"], name="t_freq"),
        helper.make_node("Mul", ["arg", "wscale"], ["arg2"], name="t_scale"),
        helper.make_node("Sin", ["arg2"], ["s"], name="sin"),
        helper.make_node("Cos", ["arg2"], ["c"], name="cos"),
        helper.make_node("Add", ["s", "c"], ["emb"], name="emb"),  # (1, 4)
        helper.make_node("Reshape", ["emb", "shape_emb"], ["emb4"], name="emb_reshape"),
        helper.make_node("Conv", ["x", "w"], ["h0"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["h0", "emb4"], ["h"], name="add_emb"),
        helper.make_node("ReduceMean", ["h", "axes"], ["mean"], name="ln_mean"),
        helper.make_node("Sub", ["h", "mean"], ["d"], name="ln_sub"),
        helper.make_node("Pow", ["d", "two"], ["d2"], name="ln_pow"),
        helper.make_node("ReduceMean", ["d2", "axes"], ["var"], name="ln_var"),
        helper.make_node("Add", ["var", "eps_c"], ["var_eps"], name="ln_add_eps"),
        helper.make_node("Sqrt", ["var_eps"], ["std"], name="ln_sqrt"),
        helper.make_node("Div", ["d", "std"], ["n"], name="ln_div"),
        helper.make_node("Softmax", ["n"], ["p"], name="softmax", axis=-1),
        helper.make_node("Shape", ["p"], ["p_shape"], name="shape"),
        helper.make_node("ConstantOfShape", ["p_shape"], ["ones"], name="ones",
                         value=numpy_helper.from_array(np.ones(1, np.float32))),
        helper.make_node("Add", ["p", "ones"], ["q"], name="add_ones"),
        helper.make_node("Cast", ["ax1"], ["ax1f"], name="cast_int", to=F32),
        helper.make_node("Mul", ["q", "ax1f"], ["q2"], name="mul_cast"),
        helper.make_node("Mul", ["q2", "two"], ["q3"], name="mul_two"),
        helper.make_node("Resize", ["q3", "", "scales"], ["up"], name="resize", mode="nearest"),
        helper.make_node("AveragePool", ["up"], ["eps"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
    ]
    inits = [
        _init("w", rng.standard_normal((4, 4, 3, 3)) * 0.2),
        _init("wscale", np.full((1, 4), 3.0)),
        numpy_helper.from_array(np.array([1], np.int64), "ax1"),
        numpy_helper.from_array(np.array([-1, 4, 1, 1], np.int64), "shape_emb"),
        numpy_helper.from_array(np.array([-1], np.int64), "axes"),
        _init("two", 2.0), _init("eps_c", 1e-5), _init("scales", [1.0, 1.0, 2.0, 2.0]),
    ]
    graph = helper.make_graph(
        nodes, "toy", [helper.make_tensor_value_info("x", F32, ["batch", 4, 4, 4]),
                       helper.make_tensor_value_info("t", F32, ["batch"])],
        [helper.make_tensor_value_info("eps", F32, ["batch", 4, 4, 4])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _run(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _dtypes(model: onnx.ModelProto) -> dict[str, int]:
    graph = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.output, *graph.value_info)}
    types.update({i.name: i.data_type for i in graph.initializer})
    return types


def _node(model, name):
    return next(n for n in model.graph.node if n.name == name)


def test_toy_graph_follows_the_policy_and_runs_close_to_fp32():
    model = toy_graph()
    converted, report = convert_to_fp16(model)
    onnx.checker.check_model(converted, full_check=True)
    check_onnx_policy(converted)
    types = _dtypes(converted)
    conv = _node(converted, "conv")
    assert types[conv.input[0]] == F16 and types[conv.input[1]] == F16  # activations and weight
    for name in ("t_freq", "t_scale", "sin", "cos", "ln_mean", "ln_sub", "ln_pow", "ln_var", "ln_add_eps",
                 "ln_sqrt", "ln_div", "softmax"):
        node = _node(converted, name)
        assert all(types[i] == F32 for i in node.input if types.get(i) in (F16, F32)), name
    assert types[_node(converted, "add_emb").output[0]] == F16  # the residual stream is fp16
    assert types[_node(converted, "resize").input[2]] == F32  # scales are float32 by the Resize schema
    assert types[_node(converted, "cast_int").output[0]] == F16
    initializers = {i.name: i.data_type for i in converted.graph.initializer}
    assert initializers["w"] == F16 and initializers["two"] == F32 and initializers["two__fp16"] == F16
    assert report.kept["sin"] == "timestep embedding" and report.kept["t_freq"] == "timestep embedding"
    assert report.kept["ln_sub"] == "normalization statistics" and "ln_div" in report.kept
    assert "add_emb" not in report.kept and "conv" not in report.kept
    assert [o.name for o in converted.graph.output] == ["eps"]
    rng = np.random.default_rng(1)
    for t in (3.0, 700.0, 999.0):
        feeds = {"x": rng.standard_normal((2, 4, 4, 4)).astype(np.float32), "t": np.full(2, t, np.float32)}
        ref, low = _run(model, feeds), _run(converted, feeds)
        assert low.dtype == np.float32
        rel = np.linalg.norm(low - ref) / np.linalg.norm(ref)
        assert 1e-6 < rel < 3e-3, (t, rel)


def test_the_timestep_product_in_fp16_would_be_wrong_and_is_refused():
    """Converting t * freq to fp16 loses the embedding at large t; the policy check names the node."""
    model = toy_graph()
    converted, _ = convert_to_fp16(model)
    mul = _node(converted, "t_freq")
    cast = helper.make_node("Cast", [mul.input[0]], ["t1_half"], name="bad_cast", to=F16)
    back = helper.make_node("Cast", ["arg_half"], ["arg"], name="bad_back", to=F32)
    mul.input[0], mul.output[0] = "t1_half", "arg_half"
    freq = next(n for n in converted.graph.node if n.output[0] == mul.input[1])
    freq.attribute[0].t.CopyFrom(numpy_helper.from_array(np.array([0.5, 1, 2, 4], np.float16)))
    nodes = list(converted.graph.node)
    index = nodes.index(mul)
    nodes[index:index + 1] = [cast, mul, back]
    del converted.graph.node[:]
    converted.graph.node.extend(nodes)
    with pytest.raises(PndmError, match="timestep embedding's input"):
        check_onnx_policy(converted)


def test_policy_check_rejects_an_fp32_conv_weight():
    converted, _ = convert_to_fp16(toy_graph())
    check_onnx_policy(converted)
    converted.graph.initializer.append(_init("w32", np.zeros((4, 4, 3, 3))))
    _node(converted, "conv").input[1] = "w32"
    with pytest.raises(PndmError, match="weight of Conv"):
        check_onnx_policy(converted)


def test_control_flow_is_refused_in_one_line():
    model = toy_graph()
    body = helper.make_graph([], "body", [], [])
    branch = helper.make_node("If", ["cond"], [], name="if", then_branch=body, else_branch=body)
    model.graph.node.append(branch)
    with pytest.raises(PndmError, match="control flow"):
        convert_to_fp16(model)


class _EpsWrapper(torch.nn.Module):
    """diffusers' UNet2DModel as eps(x, t)."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x, t):
        return self.unet(x, t).sample


@pytest.mark.slow  # imports diffusers and exports a UNet2DModel (~1 min on a loaded 2-core machine)
def test_diffusers_default_unet2dmodel_fp16():
    """diffusers' default UNet2DModel (multi-head attention, flip_sin_to_cos) with tiny channels."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=16, block_out_channels=(16, 32, 32, 32), norm_num_groups=8,
                                 layers_per_block=1).eval()
    module = _EpsWrapper(unet)
    graph = export_onnx(module, (3, 16, 16), parse_batch("1:2:4"), 20)
    converted, report = convert_to_fp16(graph)
    counts = check_onnx_policy(converted)
    assert counts["Conv"]["float16"] >= 10 and counts["MatMul"]["float16"] >= 4
    assert counts["Softmax"] == {"float32": counts["Softmax"]["float32"]}
    assert report.summary()["timestep embedding"] >= 3
    generator = torch.Generator().manual_seed(0)
    for t in (5.0, 400.0, 990.0):
        x = torch.randn(2, 3, 16, 16, generator=generator)
        tt = torch.full((2,), t)
        with torch.no_grad():
            ref = module(x, tt).numpy()
        low = _run(converted, {"x": x.numpy(), "t": tt.numpy()})
        rel = np.linalg.norm(low - ref) / np.linalg.norm(ref)
        assert 1e-5 < rel < 5e-3, (t, rel)
