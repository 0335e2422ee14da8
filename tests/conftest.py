"""Shared test fixtures and skip rules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# One intra-op thread: tests use tiny models, and on a shared 2-core machine OpenMP threads
# oversubscribe badly (a tiny forward pass went from 0.04 s to 2.5 s with 2 threads under load).
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
TESTDATA = REPO.parent / "shared" / "testdata"


def _has_cuda() -> bool:
    return torch.cuda.is_available()


def _has_tensorrt_builder() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:
        return False
    return hasattr(tensorrt, "Builder")


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
    skip_trt = pytest.mark.skip(reason="needs TensorRT (full builder) and a CUDA device")
    for item in items:
        if "cuda" in item.keywords and not _has_cuda():
            item.add_marker(skip_cuda)
        if "trt" in item.keywords and not (_has_cuda() and _has_tensorrt_builder()):
            item.add_marker(skip_trt)


@pytest.fixture(autouse=True, scope="session")
def pndm_cache_dir(tmp_path_factory) -> Path:
    """$PNDM_CACHE_DIR (trust record, caches) in a temporary folder for the whole session, set before
    any module fixture runs, so no test reads or writes the user's ~/.cache/pndm. A test that needs
    its own empty cache monkeypatches the variable to its tmp_path."""
    folder = tmp_path_factory.mktemp("pndm-cache")
    patch = pytest.MonkeyPatch()
    patch.setenv("PNDM_CACHE_DIR", str(folder))
    yield folder
    patch.undo()


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    """An empty $PNDM_CACHE_DIR of this test's own (modules that need one use it for every test)."""
    monkeypatch.setenv("PNDM_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def testdata() -> Path:
    if not TESTDATA.is_dir():
        pytest.skip(f"shared test data not found at {TESTDATA}")
    return TESTDATA
