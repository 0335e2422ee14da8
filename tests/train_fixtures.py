"""What the pndm-train fault and checkpoint tests share: a tiny architecture and data set (the ``inputs``
fixture) and fresh fault-point counts per test. Import the fixtures into the test module."""

import json
from collections import Counter

import numpy as np
import pytest

from pndm import faults

ARCH = {"ch": 32, "out_ch": 1, "ch_mult": [1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0,
        "in_channels": 1, "resolution": 8, "resamp_with_conv": True}


@pytest.fixture(scope="module", name="inputs")
def tiny_inputs(tmp_path_factory):
    """A folder with ``data.npz`` (16 random 8x8 grey images) and ``arch.json`` (:data:`ARCH`)."""
    folder = tmp_path_factory.mktemp("inputs")
    images = np.random.default_rng(0).integers(0, 256, (16, 8, 8), dtype=np.uint8)
    np.savez(folder / "data.npz", images=images)
    (folder / "arch.json").write_text(json.dumps(ARCH))
    return folder


@pytest.fixture(autouse=True)
def fresh_fault_counts(monkeypatch):
    monkeypatch.setattr(faults, "_hits", Counter())
