"""User modules (MODULE:FACTORY): loading, weights, and the one-line errors for bad modules."""

import re

import pytest
import torch
from safetensors.torch import save_file
from user_nets import NETS

from pndm.errors import PndmError
from pndm.models import load_module
from pndm.schedules import ScheduleSpec


@pytest.fixture
def nets(tmp_path):
    path = tmp_path / "nets.py"
    path.write_text(NETS)
    return path


def test_module_from_a_py_path_with_weights(nets, tmp_path):
    model, spec = load_module(f"{nets}:make", image_shape=(3, 8, 8))
    weights = tmp_path / "w.safetensors"
    state = {k: v + 0.1 for k, v in model.state_dict().items()}
    save_file(state, str(weights))
    schedule = ScheduleSpec("quad", 500, 0.00085, 0.012)
    loaded, spec = load_module(f"{nets}:make", image_shape=(3, 8, 8), weights=weights, schedule=schedule,
                               prediction="v_prediction")
    assert torch.equal(loaded.state_dict()["inp.weight"], state["inp.weight"])
    assert (spec.source_kind, spec.prediction) == ("module", "v_prediction")
    assert spec.module == f"{nets.resolve()}:make"
    assert spec.schedule_spec == schedule and spec.T == 500
    assert set(spec.files) == {str(weights.resolve()), str(nets.resolve())}
    assert spec.sha256 in spec.files.values()
    source = spec.manifest_source()
    assert source["kind"] == "module" and source["path"] == str(weights.resolve())


def test_without_weights_the_initialisation_is_reproducible(nets):
    a, _ = load_module(f"{nets}:make", image_shape=(3, 8, 8))
    b, _ = load_module(f"{nets}:make", image_shape=(3, 8, 8))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize("factory, problem", [
    ("one_input", "forward(x) does not take (x, t); define forward(x, t)"),
    ("wrong_shape", "forward returned (2, 1, 8, 8) for x (2, 3, 8, 8); it must return one tensor of x's"),
    ("not_a_module", "make_it() returned int, not a torch.nn.Module"),
    ("broken", "broken() raised RuntimeError: out of coffee"),
    ("absent", "has no callable 'absent'"),
    ("varargs", "forward(*args, **kwargs) does not name its inputs, which torch.export needs; define "
                "forward(x, t)"),
    ("class_conditional", "forward(x, t, class_labels) takes class_labels: pass --num-classes K"),
])
def test_bad_modules_are_one_line(nets, factory, problem):
    if factory == "not_a_module":
        nets.write_text(NETS + "\nmake_it = not_a_module\n")
        factory = "make_it"
    with pytest.raises(PndmError) as exc:
        load_module(f"{nets}:{factory}", image_shape=(3, 8, 8))
    assert problem in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("spec, problem", [
    ("no_colon", "not MODULE:FACTORY"),
    ("surely_not_installed_pkg:make", "cannot import 'surely_not_installed_pkg'"),
    ("missing/nets.py:make", "no such file"),
])
def test_bad_module_specs(spec, problem):
    with pytest.raises(PndmError, match=problem):
        load_module(spec, image_shape=(3, 8, 8))


def test_bad_weights_and_image_shape(nets, tmp_path):
    with pytest.raises(PndmError, match="give a .safetensors file"):
        load_module(f"{nets}:make", image_shape=(3, 8, 8), weights=tmp_path / "w.ckpt")
    save_file({"unrelated": torch.zeros(1)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(PndmError, match="does not fit"):
        load_module(f"{nets}:make", image_shape=(3, 8, 8), weights=tmp_path / "w.safetensors")
    with pytest.raises(PndmError, match="raised RuntimeError.*check --image-shape"):
        load_module(f"{nets}:make", image_shape=(5, 8, 8))


def test_weights_of_a_data_parallel_model_load(nets, tmp_path):
    model, _ = load_module(f"{nets}:make", image_shape=(3, 8, 8))
    weights = tmp_path / "ddp.safetensors"
    save_file({f"module.{k}": v + 1.0 for k, v in model.state_dict().items()}, str(weights))
    loaded, _ = load_module(f"{nets}:make", image_shape=(3, 8, 8), weights=weights)
    assert torch.equal(loaded.inp.weight, model.inp.weight + 1.0)


def test_weights_that_do_not_fit_blame_the_module_not_a_config(nets, tmp_path):
    model, _ = load_module(f"{nets}:make", image_shape=(3, 8, 8))
    weights = tmp_path / "w.safetensors"
    save_file({**model.state_dict(), "inp.bias": torch.zeros(5)}, str(weights))
    with pytest.raises(PndmError) as exc:
        load_module(f"{nets}:make", image_shape=(3, 8, 8), weights=weights)
    assert "the module's parameters do not match these weights" in str(exc.value)
    assert "config" not in str(exc.value)
    with pytest.raises(PndmError, match="nope.safetensors: no such file; check the path"):
        load_module(f"{nets}:make", image_shape=(3, 8, 8), weights=tmp_path / "nope.safetensors")


@pytest.mark.parametrize("options, problem", [
    ({"sigma_min": 0.01, "sigma_max": 5.0}, "--sigma-min/--sigma-max need --denoiser sigma"),
    ({"denoiser": "sigma", "prediction": "epsilon"}, "a sigma denoiser predicts x0 (sample)"),
    ({"denoiser": "sigma", "prediction": "v_prediction"}, "a sigma denoiser predicts x0 (sample)"),
])
def test_options_that_do_not_apply_are_refused(nets, options, problem):
    with pytest.raises(PndmError, match=re.escape(problem)):
        load_module(f"{nets}:make", image_shape=(3, 8, 8), **options)


@pytest.mark.parametrize("factory, picked", [
    ("tuple_output", "element 0"), ("dict_output", "'sample'"), ("namespace_output", "'sample'")])
def test_a_forward_returning_more_than_the_prediction_gives_it_on(nets, factory, picked):
    """A tuple's element 0, a dict's or output's 'sample': the prediction, in PyTorch and in the exported
    graph, whose layers keep the user's names (a hook, not a wrapper); a note says what was taken."""
    import onnxruntime as ort

    from pndm.export.batch import parse_batch
    from pndm.export.onnx_export import export_onnx

    plain, _ = load_module(f"{nets}:make", image_shape=(3, 8, 8))  # same weights: both seeded with 0
    model, spec = load_module(f"{nets}:{factory}", image_shape=(3, 8, 8))
    assert spec.notes == (f"forward returns more than the prediction: pndm takes its {picked}",)
    x, t = torch.randn(3, 3, 8, 8), torch.tensor([0.0, 10.5, 999.0])
    with torch.no_grad():
        assert torch.equal(model(x, t), plain(x, t))
    graph = export_onnx(model, (3, 8, 8), parse_batch("1:2:4"), 20)
    assert {"inp.weight", "out.weight"} <= {init.name for init in graph.graph.initializer}
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    (eps,) = session.run(None, {"x": x.numpy(), "t": t.numpy()})
    assert torch.allclose(torch.from_numpy(eps), plain(x, t).detach(), atol=1e-5)


def test_a_forward_with_no_single_prediction_is_one_line(nets):
    with pytest.raises(PndmError) as exc:
        load_module(f"{nets}:two_candidates", image_shape=(3, 8, 8))
    message = str(exc.value)
    assert "forward returned a dict with keys 'eps', 'var' for x (2, 3, 8, 8)" in message
    assert "or a tuple with it first, or a dict or output with it as 'sample'" in message
    assert "\n" not in message
