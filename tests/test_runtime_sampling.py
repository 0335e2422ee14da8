"""load_engine + the batch loop on a tiny exported UNet: determinism, backends agreeing, bad engines."""

import json
import shutil

import pytest
import torch
from runtime_fixtures import make_engine_dir, one_torch_thread  # noqa: F401

from pndm.errors import EngineError
from pndm.images import to_uint8
from pndm.runtime import load_engine
from pndm.runtime.sampling import sample_seeds


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory):
    return make_engine_dir(tmp_path_factory.mktemp("engine"))


def test_load_engine_reads_the_manifest(engine_dir):
    engine = load_engine(engine_dir / "unet.onnx", device="cpu")
    assert engine.backend == "onnxruntime"
    assert engine.image_shape == (3, 16, 16)
    assert (engine.schedule.name, engine.schedule.T, engine.batch_range, engine.precision) == (
        "linear",
        1000,
        (1, 8),
        "fp32",
    )
    assert engine.device == torch.device("cpu")
    assert engine.manifest.format == "pndm-engine/1"  # the fixture writes format 1: still read
    assert load_engine(engine_dir, device="cpu").path == str(
        engine_dir / "unet.onnx"
    )  # a folder: its fp32 ONNX


def test_load_engine_torch_reference(engine_dir):
    engine = load_engine(engine_dir / "reference.safetensors", device="cpu")
    assert (engine.backend, engine.precision, engine.image_shape, engine.schedule.T) == (
        "torch",
        "fp32",
        (3, 16, 16),
        1000,
    )
    assert engine.manifest is None


def test_same_seeds_same_images_for_any_batch_size(engine_dir):
    engine = load_engine(engine_dir / "unet.onnx", device="cpu")
    seeds = [7, 8, 9, 10, 11]
    kwargs = dict(method="ddim", steps=10, progress=False)
    by4 = sample_seeds(engine, seeds, batch=4, **kwargs)
    by1 = sample_seeds(engine, seeds, batch=1, **kwargs)
    assert by4.images.shape == (5, 3, 16, 16)
    assert (by4.images - by1.images).abs().max() < 1e-4
    assert torch.equal(to_uint8(by4.images), to_uint8(by1.images))
    alone = sample_seeds(engine, [9], batch=1, **kwargs)
    assert torch.equal(alone.images[0], by1.images[2])
    assert (by4.nfe, by4.model_calls, by1.model_calls) == (10, 20, 50)
    assert by4.stats()["latency_per_nfe_ms"] > 0


def test_torch_and_onnx_agree_within_one_grey_level(engine_dir):
    onnx = load_engine(engine_dir / "unet.onnx", device="cpu")
    ref = load_engine(engine_dir / "reference.safetensors", device="cpu")
    seeds = [0, 1, 2, 3]
    a = sample_seeds(onnx, seeds, method="f-pndm", steps=10, batch=4, progress=False)
    b = sample_seeds(ref, seeds, method="f-pndm", steps=10, batch=4, progress=False)
    assert a.nfe == 19
    diff = (to_uint8(a.images).int() - to_uint8(b.images).int()).abs()
    assert diff.max() <= 1
    assert not torch.equal(a.images[0], a.images[1])  # different seeds, different images


def test_batch_outside_profile_fails_before_sampling(engine_dir):
    engine = load_engine(engine_dir / "unet.onnx", device="cpu")
    calls = []
    with pytest.raises(EngineError, match=r"\[1, 8\]"):
        sample_seeds(
            engine,
            list(range(12)),
            method="ddim",
            steps=5,
            batch=12,
            progress=False,
            eps=lambda x, t: calls.append(1) or engine(x, t),
        )
    assert calls == []


def copy_dir(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_manifest(engine_dir, tmp_path):
    shutil.copy(engine_dir / "unet.onnx", tmp_path / "unet.onnx")
    with pytest.raises(EngineError, match="no manifest"):
        load_engine(tmp_path / "unet.onnx", device="cpu")


def test_truncated_engine_is_refused_by_its_hash(engine_dir, tmp_path):
    folder = copy_dir(engine_dir, tmp_path / "e")
    data = (folder / "unet.onnx").read_bytes()
    (folder / "unet.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(EngineError, match="truncated, corrupt"):
        load_engine(folder / "unet.onnx", device="cpu")


def test_manifest_that_disagrees_with_the_file(engine_dir, tmp_path):
    folder = copy_dir(engine_dir, tmp_path / "e")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["image"]["height"] = manifest["image"]["width"] = 32
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EngineError, match="does not belong to this file"):
        load_engine(folder / "unet.onnx", device="cpu")
    manifest["image"]["height"] = manifest["image"]["width"] = 16
    manifest["engines"]["unet.onnx"]["kind"] = "aoti"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EngineError, match="file type"):
        load_engine(folder / "unet.onnx", device="cpu")


def test_unlisted_engine_file(engine_dir, tmp_path):
    folder = copy_dir(engine_dir, tmp_path / "e")
    shutil.copy(folder / "unet.onnx", folder / "other.onnx")
    with pytest.raises(EngineError, match="not listed"):
        load_engine(folder / "other.onnx", device="cpu")


def test_missing_engine_file(tmp_path):
    with pytest.raises(EngineError, match="not found"):
        load_engine(tmp_path / "nothing.onnx")


def test_stochastic_ddim_is_reproducible(engine_dir):
    engine = load_engine(engine_dir / "unet.onnx", device="cpu")
    kwargs = dict(method="ddim", steps=5, batch=2, progress=False)
    a = sample_seeds(engine, [0, 1], eta=1.0, **kwargs)
    b = sample_seeds(engine, [0, 1], eta=1.0, **kwargs)
    deterministic = sample_seeds(engine, [0, 1], **kwargs)
    assert torch.equal(a.images, b.images)
    assert (a.images - deterministic.images).abs().max() > 1e-2


def test_stochastic_ddim_images_do_not_depend_on_the_batch():
    """eta > 0: image i's step noise continues its own seed's stream, so batching does not change it."""
    from pndm.runtime.seeds import draw_noise, image_generators
    from pndm.schedules import make_schedule
    from pndm.solvers import sample
    from pndm.solvers.testbeds import GaussianTestbed

    schedule = make_schedule("linear")
    testbed = GaussianTestbed.random(schedule, shape=(1, 4, 4), dtype=torch.float32)

    def run(seeds):
        generators = image_generators(seeds)
        x_T = draw_noise(generators, (1, 4, 4))
        return sample(testbed.eps, x_T, "ddim", 10, schedule, eta=1.0, generator=generators)

    together = run([3, 4, 5])
    assert torch.equal(run([4])[0], together[1])
    assert torch.equal(run([5, 3])[1], together[0])
    deterministic = sample(testbed.eps, draw_noise(image_generators([3]), (1, 4, 4)), "ddim", 10, schedule)
    assert not torch.allclose(together[0], deterministic[0])  # the step noise is really drawn
