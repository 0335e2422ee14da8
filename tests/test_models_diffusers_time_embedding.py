"""UNet2DModel's learned time embedding (read at fractional t by linear interpolation) and class labels
embedded through the time projection (class_embed_type="timestep"), against diffusers' own module."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from pndm.errors import CheckpointError
from pndm.models import load
from pndm.schedules import ScheduleSpec

diffusers = pytest.importorskip("diffusers")

ROWS = 1000  # num_train_timesteps: the learned table's rows, and the default schedule's T
# one level, no attention in the blocks: a tiny UNet that still runs every part of UNet2DModel's forward
TINY = dict(sample_size=8, block_out_channels=(16,), layers_per_block=1, norm_num_groups=8,
            down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",))
LEARNED = dict(time_embedding_type="learned", num_train_timesteps=ROWS)


def _folder(tmp_path, name="unet", **options):
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(**TINY, **options).eval()
    with torch.no_grad():  # zero-initialised layers would hide mistakes: perturb all
        for p in unet.parameters():
            p.add_(0.02 * torch.randn_like(p))
    unet.save_pretrained(tmp_path / name)
    return unet, tmp_path / name


def _x(batch=3):
    return torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def _rel(got, expected):
    return ((got - expected).abs().max() / expected.abs().max()).item()


class _Fixed(nn.Module):
    """A time projection that returns given embeddings (the hand-computed mix)."""

    def __init__(self, embedding):
        super().__init__()
        self.embedding = embedding

    def forward(self, t):
        return self.embedding


def test_learned_time_embedding_is_diffusers_at_integer_t(tmp_path):
    unet, folder = _folder(tmp_path, **LEARNED)
    model, spec = load(folder)
    assert spec.architecture == "diffusers" and spec.num_classes is None
    assert "time_embedding_type='learned'" in spec.notes[0]
    assert torch.equal(model.state_dict()["unet.time_proj.weight"], unet.time_proj.weight)  # same key
    x, t = _x(), torch.tensor([0.0, 417.0, ROWS - 1.0])
    with torch.no_grad():
        assert _rel(model(x, t), unet(x, t.long()).sample) <= 1e-5


def test_learned_time_embedding_interpolates_at_fractional_t(tmp_path):
    """e(t) = E[floor t] + (t - floor t) (E[ceil t] - E[floor t]), t clamped to [0, ROWS - 1]."""
    unet, folder = _folder(tmp_path, **LEARNED)
    model, _ = load(folder)
    table = unet.time_proj.weight.detach()
    t = torch.tensor([417.25, -3.0, ROWS + 5.5])
    mix = torch.stack([0.75 * table[417] + 0.25 * table[418], table[0], table[ROWS - 1]])
    x = _x()
    with torch.no_grad():
        assert torch.allclose(model.unet.time_proj(t), mix, rtol=1e-6, atol=1e-7)
        got = model(x, t)
        unet.time_proj = _Fixed(mix)
        assert _rel(got, unet(x, t).sample) <= 1e-5


@pytest.mark.parametrize("time", ["positional", "learned"])
def test_timestep_class_labels_are_diffusers(tmp_path, time):
    """Labels go through the time projection; the config holds no class count, so every label it embeds
    (the schedule's T steps, or the learned table's rows) is taken, and a note says how to state it."""
    options = {"class_embed_type": "timestep", **(LEARNED if time == "learned" else {})}
    unet, folder = _folder(tmp_path, **options)
    model, spec = load(folder)
    assert spec.num_classes == ROWS
    assert any("add num_class_embeds=K to config.json" in note for note in spec.notes)
    x, t, labels = _x(), torch.tensor([0.0, 417.0, 999.0]), torch.tensor([0, 5, ROWS - 1])
    with torch.no_grad():
        assert _rel(model(x, t, labels), unet(x, t.long(), class_labels=labels).sample) <= 1e-5
        assert _rel(model(x, t, labels), model(x, t, labels.flip(0))) > 1e-3  # the labels matter
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_class_embeds": 10}))
    _, stated = load(folder)
    assert stated.num_classes == 10 and not any("num_class_embeds=K" in note for note in stated.notes)


@pytest.mark.parametrize("options, config, schedule, named", [
    ({}, {"class_embed_type": "identity"}, None, "not an integer label"),
    ({}, {"class_embed_type": "timestep", "time_embedding_type": "fourier"}, None,
     "log(label), -inf at label 0; use num_class_embeds"),
    ({}, {"class_embed_type": "projection"}, None, "class_embed_type='projection' is not supported"),
    (LEARNED, {"num_train_timesteps": None}, None, "needs num_train_timesteps"),
    (LEARNED, {}, ScheduleSpec("linear", 2 * ROWS), f"at most {ROWS} steps (--T {ROWS})"),
    (LEARNED, {"class_embed_type": "timestep", "num_class_embeds": ROWS + 1}, None, f"give at most {ROWS}"),
])
def test_what_cannot_run_is_refused_in_one_line_saying_why(tmp_path, options, config, schedule, named):
    _, folder = _folder(tmp_path, **options)
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **config}))
    with pytest.raises(CheckpointError) as exc:
        load(folder, schedule=schedule)
    assert named in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.slow  # exports a UNet2DModel to ONNX (~10 s on a loaded 2-core machine)
def test_onnx_graph_of_learned_and_timestep_class_embedding(tmp_path):
    """The exported graph (dynamic batch) against diffusers at integer t and the module at fractional t."""
    ort = pytest.importorskip("onnxruntime")
    from pndm.export.batch import parse_batch
    from pndm.export.onnx_export import export_onnx

    unet, folder = _folder(tmp_path, class_embed_type="timestep", **LEARNED)
    model, spec = load(folder)
    graph = export_onnx(model, spec.image_shape, parse_batch("1:2:4"), 20, spec.num_classes)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])

    def engine(x, t, labels):
        feeds = {"x": x.numpy(), "t": t.numpy(), "class_labels": labels.numpy()}
        return torch.from_numpy(session.run(None, feeds)[0])

    x, labels = _x(), torch.tensor([0, 5, ROWS - 1])
    t = torch.tensor([0.0, 417.0, 999.0])
    with torch.no_grad():
        assert _rel(engine(x, t, labels), unet(x, t.long(), class_labels=labels).sample) <= 1e-5
        fractional = torch.tensor([0.5, 417.25, 998.75])
        assert _rel(engine(x, fractional, labels), model(x, fractional, labels)) <= 1e-5
        assert np.allclose(engine(x[:1], t[:1], labels[:1]), engine(x, t, labels)[:1], atol=1e-6)


@pytest.mark.slow  # exports a UNet2DModel to ONNX (~10 s on a loaded 2-core machine)
def test_fp16_graph_reads_the_learned_table_at_float32_t(tmp_path):
    """fp16 keeps t's floor/ceil and the fraction t - floor(t) in float32, as it keeps sin/cos: an fp16 t
    would read the table at 998.5 for t = 998.3. ONNX Runtime's CPU runs those small fp16 ops in float32
    anyway (it has no fp16 kernels for them), so the rounding would show only on fp16 kernels (TensorRT,
    CUDA): the graph's types are the check, the CPU output only a check of the rest."""
    ort = pytest.importorskip("onnxruntime")
    from pndm.export.batch import parse_batch
    from pndm.export.fp16_graph import convert_to_fp16
    from pndm.export.onnx_export import export_onnx

    _, folder = _folder(tmp_path, **LEARNED)
    model, spec = load(folder)
    graph, report = convert_to_fp16(export_onnx(model, spec.image_shape, parse_batch("1:2:4"), 20))
    kept = {node.op_type for node in graph.graph.node if report.kept.get(node.name) == "timestep embedding"}
    assert {"Floor", "Ceil", "Sub", "Clip"} <= kept
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    x, t = _x(2), torch.tensor([998.3, 0.7])
    got = torch.from_numpy(session.run(None, {"x": x.numpy(), "t": t.numpy()})[0])
    with torch.no_grad():
        assert _rel(got, model(x, t)) <= 2e-3
