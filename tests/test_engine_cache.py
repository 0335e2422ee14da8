"""Engine load caches (pndm.runtime.engine_cache): reused when intact, rebuilt when not."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from runtime_fixtures import (  # noqa: F401
    export_tiny_onnx,
    make_engine_dir,
    one_torch_thread,
    tiny_model,
    write_manifest,
)

from pndm.runtime.engine_cache import ENTRY_RECORD, cached_folder, take_cache_events
from pndm.runtime.loader import load_engine


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PNDM_CACHE_DIR", str(tmp_path / "cache"))
    take_cache_events()
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory):
    return make_engine_dir(tmp_path_factory.mktemp("engine"))


def _statuses():
    return [(e["kind"], e["status"]) for e in take_cache_events()]


def _eps(engine):
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    return engine(x, torch.tensor([10.0, 700.0])).clone()


def test_second_load_uses_the_optimized_graph(engine_dir, cache_dir):
    first = _eps(load_engine(engine_dir / "unet.onnx", "cpu", threads=1))
    assert _statuses() == [("onnxruntime", "built")]
    (entry,) = (cache_dir / "engines" / "onnxruntime").iterdir()
    assert (entry / "optimized.onnx").is_file() and (entry / ENTRY_RECORD).is_file()
    second = _eps(load_engine(engine_dir / "unet.onnx", "cpu", threads=1))
    assert _statuses() == [("onnxruntime", "hit")]
    torch.testing.assert_close(second, first, rtol=0, atol=1e-6)


def test_a_tampered_entry_is_rebuilt_not_used(engine_dir, cache_dir):
    reference = _eps(load_engine(engine_dir / "unet.onnx", "cpu", threads=1))
    (entry,) = (cache_dir / "engines" / "onnxruntime").iterdir()
    optimized = entry / "optimized.onnx"
    optimized.write_bytes(optimized.read_bytes()[:1000])  # truncated: ORT would fail on it
    take_cache_events()
    again = _eps(load_engine(engine_dir / "unet.onnx", "cpu", threads=1))
    (event,) = take_cache_events()
    assert (event["status"], event["reason"]) == ("rebuilt", "optimized.onnx changed")
    torch.testing.assert_close(again, reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize("blocked", ["cache is a file", "entry is a file"])
def test_a_cache_that_cannot_be_written_is_skipped_not_blamed_on_the_engine(engine_dir, cache_dir, blocked,
                                                                            capsys):
    """A read-only/full disk or a file in the way: the engine loads without the cache, run.json's
    cache says why, one note on stderr; a file where one entry goes is replaced by the entry."""
    from pndm.runtime import engine_cache

    reference = _eps(load_engine(engine_dir / "unet.onnx", "cpu", threads=1))
    (entry,) = (cache_dir / "engines" / "onnxruntime").iterdir()
    shutil.rmtree(cache_dir)
    if blocked == "cache is a file":
        cache_dir.write_text("not a folder")
    else:
        entry.parent.mkdir(parents=True)
        entry.write_text("not an entry")
    take_cache_events()
    engine_cache._NOTED.clear()
    for _ in range(2):
        torch.testing.assert_close(_eps(load_engine(engine_dir / "unet.onnx", "cpu", threads=1)), reference,
                                   rtol=0, atol=1e-6)
    events = take_cache_events()
    if blocked == "cache is a file":
        assert [e["status"] for e in events] == ["unavailable", "unavailable"]
        assert "Not a directory" in events[0]["reason"]
        assert capsys.readouterr().err.count("engine cache") == 1  # said once per process
    else:
        assert [(e["status"], e.get("reason")) for e in events] == [("rebuilt", "incomplete"), ("hit", None)]


def test_aoti_cache_on_a_disk_that_fails_loads_a_private_copy(monkeypatch):
    import io
    import zipfile

    from pndm.runtime import engine_cache

    def full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(engine_cache, "cached_folder", full)
    monkeypatch.setattr(torch._C._aoti, "AOTIModelPackageLoader",
                        lambda path, *args: ("loader", Path(path).name))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as package:
        package.writestr("unet/data/aotinductor/model/a.so", b"")
    runner, private = engine_cache.aoti_runner(buffer.getvalue(), "0" * 64, torch.device("cpu"))
    shutil.rmtree(private)
    assert runner == ("loader", "unet.pt2")
    (event,) = take_cache_events()
    assert (event["kind"], event["status"]) == ("aoti", "unavailable") and "No space" in event["reason"]


def test_a_changed_source_gets_its_own_entry(engine_dir, tmp_path, cache_dir):
    load_engine(engine_dir / "unet.onnx", "cpu", threads=1)
    other = tmp_path / "other"
    other.mkdir()
    export_tiny_onnx(tiny_model(seed=1), other / "unet.onnx")
    write_manifest(other, {"unet.onnx": {"kind": "onnx", "precision": "fp32", "opset": 17}}, reference=None)
    take_cache_events()
    load_engine(other / "unet.onnx", "cpu", threads=1)
    assert _statuses() == [("onnxruntime", "built")]
    assert len(list((cache_dir / "engines" / "onnxruntime").iterdir())) == 2


@pytest.mark.parametrize("damage", ["extra file", "record edited", "record missing"])
def test_cached_folder_rebuilds_on_any_mismatch(cache_dir, damage):
    def build(folder):
        (folder / "a.bin").write_bytes(b"abc")
        return "built"

    folder, value = cached_folder("test", "k1", build)
    assert value == "built" and (folder / "a.bin").read_bytes() == b"abc"
    assert cached_folder("test", "k1", build) == (folder, None)
    if damage == "extra file":
        (folder / "b.bin").write_bytes(b"x")
    elif damage == "record edited":
        record = json.loads((folder / ENTRY_RECORD).read_text())
        record["key"] = "k2"
        (folder / ENTRY_RECORD).write_text(json.dumps(record))
    else:
        (folder / ENTRY_RECORD).unlink()
    assert cached_folder("test", "k1", build) == (folder, "built")
    assert [e["status"] for e in take_cache_events()] == ["built", "hit", "rebuilt"]
    assert not (folder / "b.bin").exists()
    shutil.rmtree(folder)


def test_aoti_package_without_a_single_library_goes_through_a_private_copy(tmp_path, monkeypatch):
    """Such a package (CUDA cubins, weights beside the library) is not cached; its private copy of the
    checked bytes, and what torch's C++ loader extracted from it, are removed when loading fails."""
    import io
    import tempfile
    import zipfile

    from pndm.runtime.engine_cache import aoti_runner

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as package:
        package.writestr("unet/data/aotinductor/model/a.so", b"not a library")
        package.writestr("unet/data/weights/w.bin", b"\0" * 8)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # where the C++ loader extracts, unless told otherwise
    with pytest.raises(Exception):  # noqa: B017 - torch's loader raises its own RuntimeError types
        aoti_runner(buffer.getvalue(), "0" * 64, torch.device("cpu"))
    assert list(tmp_path.iterdir()) == []
    assert os.environ["TMPDIR"] == str(tmp_path)
    assert take_cache_events() == []


@pytest.mark.parametrize("beside", ["a_weights.blob", "w.bin"])
def test_aoti_package_with_weights_beside_its_library_is_not_cached(beside, monkeypatch):
    """Weights stored as a file beside the library (``package_constants_in_so=False``) are loaded by
    torch's package loader: the cached library alone crashed the runner."""
    import io
    import zipfile

    from pndm.runtime import engine_cache

    loaded = []

    class Loader:
        def __init__(self, path, model, single_threaded, runners, index):
            loaded.append((Path(path).name, os.environ["TMPDIR"] == str(Path(path).parent)))

    monkeypatch.setattr(torch._C._aoti, "AOTIModelPackageLoader", Loader)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as package:
        package.writestr("unet/data/aotinductor/model/a.cpp", b"")
        package.writestr("unet/data/aotinductor/model/a_metadata.json", b"{}")
        package.writestr("unet/data/aotinductor/model/a.so", b"")
        package.writestr(f"unet/data/aotinductor/model/{beside}", b"\0" * 8)
    runner, private = engine_cache.aoti_runner(buffer.getvalue(), "0" * 64, torch.device("cpu"))
    shutil.rmtree(private)
    assert loaded == [("unet.pt2", True)]
    assert take_cache_events() == []


def test_onnxruntime_is_imported_before_a_cuda_package_loads(monkeypatch):
    """The CUDA package crash workaround (before_cuda_package_load) runs first; CPU loads skip it."""
    import io
    import zipfile

    from pndm.runtime import engine_cache

    steps = []
    monkeypatch.setattr(engine_cache.importlib, "import_module", lambda name: steps.append(f"import {name}"))

    class Loader:
        def __init__(self, path, model, single_threaded, runners, index):
            steps.append(f"load on device {index}")

    monkeypatch.setattr(torch._C._aoti, "AOTIModelPackageLoader", Loader)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as package:
        package.writestr("unet/data/aotinductor/model/a.wrapper.so", b"")
        package.writestr("unet/data/aotinductor/model/a.cubin", b"")
    runner, private = engine_cache.aoti_runner(buffer.getvalue(), "0" * 64, torch.device("cuda", 0))
    shutil.rmtree(private)
    assert steps == ["import onnxruntime", "load on device 0"]
    steps.clear()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as package:  # weights apart: the package loader on the CPU too
        package.writestr("unet/data/aotinductor/model/a.wrapper.so", b"")
        package.writestr("unet/data/weights/w", b"")
    runner, private = engine_cache.aoti_runner(buffer.getvalue(), "0" * 64, torch.device("cpu"))
    shutil.rmtree(private)
    assert steps == ["load on device -1"]
