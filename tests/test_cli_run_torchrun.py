"""``torchrun --nproc_per_node=2 pndm-run sample``: seeds split across ranks, same images as one process."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from runtime_fixtures import make_engine_dir

BIN = Path(sys.executable).parent


@pytest.mark.slow
def test_torchrun_two_ranks_match_one_process(tmp_path):
    torchrun = BIN / "torchrun"
    if not torchrun.exists() and shutil.which("torchrun") is None:
        pytest.skip("torchrun not installed")
    engine = make_engine_dir(tmp_path / "engine") / "unet.onnx"
    common = [
        "sample",
        "--engine",
        str(engine),
        "--steps",
        "5",
        "--method",
        "ddim",
        "-n",
        "5",
        "--batch",
        "2",
        "--no-progress",
    ]
    single = subprocess.run(
        [str(BIN / "pndm-run"), *common, "--out", str(tmp_path / "one")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert single.returncode == 0, single.stderr
    multi = subprocess.run(
        [
            str(torchrun),
            "--nproc_per_node=2",
            "--standalone",
            str(BIN / "pndm-run"),
            *common,
            "--out",
            str(tmp_path / "two"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert multi.returncode == 0, multi.stderr
    one = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert one == sorted(p.name for p in (tmp_path / "two").iterdir())
    for name in one:
        if name.endswith(".png"):
            assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    info = json.loads((tmp_path / "two" / "run.json").read_text())
    assert info["world_size"] == 2 and info["num_images"] == 5
    assert sorted(r["num_images"] for r in info["ranks"]) == [2, 3]
