"""Engine backends on a tiny exported UNet: ONNX Runtime with I/O binding, error paths of the others."""

from dataclasses import replace

import pytest
import torch
from runtime_fixtures import TINY, export_tiny_onnx, one_torch_thread, tiny_model  # noqa: F401

from pndm.engine_format import IOSpec, TensorSpec
from pndm.errors import EngineError
from pndm.fileio import sha256_file
from pndm.runtime.engines.base import EngineInfo
from pndm.runtime.engines.ort_engine import OrtEngine
from pndm.runtime.engines.torch_engine import TorchEngine
from pndm.schedule_spec import ScheduleSpec


def info(path, precision="fp32", batch_range=(1, 8)) -> EngineInfo:
    return EngineInfo(
        path=str(path),
        image_shape=(3, TINY.resolution, TINY.resolution),
        schedule=ScheduleSpec("linear", 1000),
        batch_range=batch_range,
        precision=precision,
        io=IOSpec.for_image((3, TINY.resolution, TINY.resolution)),
    )


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("ort") / "unet.onnx"
    model = tiny_model()
    export_tiny_onnx(model, path)
    return path, model


def test_ort_engine_matches_torch(tiny_onnx):
    path, model = tiny_onnx
    engine = OrtEngine(info(path), torch.device("cpu")).open()
    assert engine.backend == "onnxruntime" and engine.image_shape == (3, 16, 16)
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.0, 499.5, 999.0])
    with torch.no_grad():
        expected = model(x, t)
    got = engine(x, t)
    assert got.dtype == torch.float32 and got.shape == x.shape
    rel = ((got - expected).norm() / expected.norm()).item()
    assert rel < 1e-5, rel


def test_ort_engine_reuses_its_output_buffer_per_batch(tiny_onnx):
    path, _ = tiny_onnx
    engine = OrtEngine(info(path), torch.device("cpu")).open()
    x = torch.randn(2, 3, 16, 16)
    first = engine(x, torch.tensor([10.0, 10.0]))
    kept = first.clone()
    second = engine(-x, torch.tensor([900.0, 900.0]))
    assert second.data_ptr() == first.data_ptr()  # documented: the same buffer comes back
    assert not torch.allclose(kept, second)  # ... holding the new result
    other = engine(x[:1], torch.tensor([10.0]))
    assert other.data_ptr() != first.data_ptr()
    assert torch.allclose(other[0], kept[0], atol=1e-5)  # batch composition does not change results


def test_a_cpu_call_runs_its_batch_in_parts_at_the_same_time(tiny_onnx, monkeypatch):
    """Two threads: the batch is split in two parts (uneven batches too) run on two threads at once,
    into one output; every image's eps is what a whole-batch run on one thread gives."""
    import threading

    path, _ = tiny_onnx
    whole = OrtEngine(info(path), torch.device("cpu"), threads=1).open()
    split = OrtEngine(info(path), torch.device("cpu"), threads=2).open()
    assert (whole.streams, split.streams) == (1, 2)
    assert split.describe()["threads"] == 2 and split.describe()["streams"] == 2  # what run.json says
    runs = []
    run = split.session.run_with_iobinding
    both_started = threading.Barrier(2, timeout=10)

    def recording(binding):
        runs.append(threading.current_thread().name)
        both_started.wait()  # fails unless the two parts are in flight together
        run(binding)

    monkeypatch.setattr(split.session, "run_with_iobinding", recording)
    x = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([3.0, 250.0, 500.0, 750.0, 990.0])
    got = split(x, t).clone()
    assert len(runs) == 2 and any(name.startswith("pndm-ort") for name in runs)
    assert torch.equal(got, whole(x, t))
    monkeypatch.undo()
    assert torch.equal(split(x[:1], t[:1]), whole(x[:1], t[:1]))  # one image: one part
    split.close()
    whole.close()


def test_batch_outside_profile_names_the_range(tiny_onnx):
    path, _ = tiny_onnx
    engine = OrtEngine(info(path, batch_range=(1, 2)), torch.device("cpu")).open()
    with pytest.raises(EngineError, match=r"batch size 3 is outside the engine's profile \[1, 2\]"):
        engine(torch.zeros(3, 3, 16, 16), torch.zeros(3))


def test_wrong_image_shape_is_refused(tiny_onnx):
    path, _ = tiny_onnx
    engine = OrtEngine(info(path), torch.device("cpu")).open()
    with pytest.raises(EngineError, match="image shape"):
        engine(torch.zeros(1, 3, 8, 8), torch.zeros(1))


def test_manifest_names_that_do_not_match_the_file(tiny_onnx):
    path, _ = tiny_onnx
    renamed = IOSpec([TensorSpec("sample", "float32", ["batch", 3, 16, 16]),
                      TensorSpec("timestep", "float32", ["batch"])], IOSpec.for_image((3, 16, 16)).outputs)
    with pytest.raises(EngineError, match="does not belong to this file"):
        OrtEngine(EngineInfo(str(path), (3, 16, 16), ScheduleSpec("linear", 1000), (1, 8), "fp32", renamed),
                  torch.device("cpu")).open()
    wrong = EngineInfo(str(path), (3, 32, 32), ScheduleSpec("linear", 1000), (1, 8), "fp32",
                       IOSpec.for_image((3, 32, 32)))
    with pytest.raises(EngineError, match="does not belong to this file"):
        OrtEngine(wrong, torch.device("cpu")).open()


def test_corrupt_onnx_is_an_engine_error(tmp_path, tiny_onnx):
    path, _ = tiny_onnx
    bad = tmp_path / "unet.onnx"
    bad.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(EngineError, match="corrupt or truncated"):
        OrtEngine(info(bad), torch.device("cpu")).open()


def test_torch_engine_is_the_model_in_fp32():
    model = tiny_model()
    engine = TorchEngine(info("tiny"), torch.device("cpu"), model).open()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3.0, 700.0])
    with torch.no_grad():
        assert torch.equal(engine(x, t), model(x, t))


def test_aoti_corrupt_package_is_an_engine_error(tmp_path):
    from pndm.runtime.engines.aoti_engine import AotiEngine

    bad = tmp_path / "unet.bf16.pt2"
    bad.write_bytes(b"PK\x03\x04 not really a package")
    with pytest.raises(EngineError, match="corrupt, truncated"):
        checked = replace(info(bad, "bf16"), sha256=sha256_file(bad))
        AotiEngine(checked, torch.device("cpu"), trust=True).open()


def test_tensorrt_without_cuda_is_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from pndm.runtime.engines.trt_engine import TrtEngine

    plan = tmp_path / "unet.plan"
    plan.write_bytes(b"\0" * 16)
    with pytest.raises(EngineError, match="needs a CUDA device"):
        TrtEngine(info(plan, "fp16"), torch.device("cpu")).open()


def test_open_close_life_cycle(tiny_onnx):
    """An engine is usable between open and close; the context manager closes it and drops its buffers."""
    path, _ = tiny_onnx
    engine = OrtEngine(info(path), torch.device("cpu"))
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([5.0])
    with pytest.raises(EngineError, match="the engine is closed"):
        engine(x, t)
    with engine as opened:
        assert opened is engine and engine.is_open
        first = engine(x, t).clone()
        assert engine._buffers
    assert not engine.is_open and not engine._buffers and not hasattr(engine, "session")
    with pytest.raises(EngineError, match="the engine is closed"):
        engine(x, t)
    with engine:  # reopens
        assert torch.equal(engine(x, t), first)
    engine.close()  # idempotent


def test_class_labels_follow_the_io_spec(tiny_onnx):
    path, _ = tiny_onnx
    with OrtEngine(info(path), torch.device("cpu")) as engine:
        with pytest.raises(EngineError, match="unconditional: drop class_labels"):
            engine(torch.zeros(1, 3, 16, 16), torch.zeros(1), torch.zeros(1, dtype=torch.int64))
