"""Every TensorRT attribute pndm calls exists on the real modules (nothing is created: no GPU needed).

The runtime side is checked on the ``tensorrt_lean`` wheel from PyPI (installs and imports
without a GPU); the builder side on the full ``tensorrt`` package where it is installed.
"""

from __future__ import annotations

import pytest

from pndm.export.tensorrt import BUILDER_API, RUNTIME_API


def missing_attributes(trt, api: dict[str, tuple[str, ...]]) -> list[str]:
    missing = []
    for owner, names in api.items():
        target = trt if owner == "module" else getattr(trt, owner, None)
        if target is None:
            missing.append(owner)
            continue
        missing += [f"{owner}.{name}" for name in names if not hasattr(target, name)]
    return missing


def test_lean_runtime_has_every_runtime_attribute():
    trt = pytest.importorskip("tensorrt_lean")
    assert missing_attributes(trt, RUNTIME_API) == []


def test_lean_runtime_cannot_build():
    trt = pytest.importorskip("tensorrt_lean")
    assert not hasattr(trt, "Builder") and not hasattr(trt, "OnnxParser")


def test_full_tensorrt_has_every_builder_and_runtime_attribute():
    trt = pytest.importorskip("tensorrt")
    if not hasattr(trt, "Builder"):
        pytest.skip("the installed tensorrt package is runtime-only")
    assert missing_attributes(trt, {**RUNTIME_API, **BUILDER_API}) == []
