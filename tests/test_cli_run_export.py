"""The demo path end to end: pndm-export the embedded default model, then pndm-run sample / check."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def run(*args, timeout=900, env=None):
    return subprocess.run(
        [str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("precision", "engines"), [("fp16", ["unet.onnx", "unet.fp16.onnx"]), ("bf16", ["unet.bf16.pt2"])]
)
def test_export_default_then_sample_and_check(tmp_path, monkeypatch, precision, engines):
    env = {**os.environ, "PNDM_CACHE_DIR": str(tmp_path / "cache")}
    out = tmp_path / "engines"
    built = run(
        "pndm-export", "build", "--precision", precision, "--batch", "1:4:8", "--out", str(out), env=env
    )
    assert built.returncode == 0, built.stderr[-2000:]
    for engine in engines:
        checked = run(
            "pndm-run", "check", "--engine", str(out / engine), "--steps", "20", "--num", "4",
            "--no-progress", env=env,
        )
        assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-2000:]
        assert "PASS" in checked.stdout
    samples = []
    for name in ("a", "b", "c"):
        if name == "c":  # damage the engine cache: it must be rebuilt, not used
            for cached in (tmp_path / "cache" / "engines").rglob("*.*"):
                if cached.is_file() and cached.name != "entry.json":
                    cached.write_bytes(cached.read_bytes()[:-1])
        sampled = run(
            "pndm-run",
            "sample",
            "--engine",
            str(out / engines[-1]),
            "--steps",
            "5",  # the cache and determinism checks below need few steps (the check above ran 20)
            "-n",
            "4",
            "--batch",
            "4",
            "--out",
            str(tmp_path / name),
            "--no-progress",
            env=env,
        )
        assert sampled.returncode == 0, sampled.stderr[-2000:]
        samples.append(sorted((tmp_path / name).glob("seed*.png")))
    assert len(samples[0]) == 4
    assert [p.read_bytes() for p in samples[0]] == [p.read_bytes() for p in samples[1]]
    assert [p.read_bytes() for p in samples[0]] == [p.read_bytes() for p in samples[2]]
    # check built the engine's cache entry; both samples used it; the damaged one was rebuilt
    records = [json.loads((tmp_path / n / "run.json").read_text()) for n in "abc"]
    statuses = [[e["status"] for e in record["cache"]] for record in records]
    assert statuses == [["hit"], ["hit"], ["rebuilt"]]
    if precision == "bf16":  # the suite's one bf16 compile (a minute or more) also covers this
        monkeypatch.setenv("PNDM_CACHE_DIR", env["PNDM_CACHE_DIR"])  # where this machine's export is trusted
        _assert_the_package_runs_any_batch_in_range(out / "unet.bf16.pt2")


def _assert_the_package_runs_any_batch_in_range(package: Path) -> None:
    """bf16, really (not fp32) yet close to the fp32 model, at every batch of its range 1..8."""
    import torch

    from pndm.engine_format import read_manifest
    from pndm.runtime import load_engine

    manifest = read_manifest(package.parent)
    entry = manifest.engines[package.name]
    assert (entry.kind, entry.precision, entry.device) == ("aoti", "bf16", "cpu")
    assert 1e-4 < manifest.verification[package.name]["rel_l2"] < 3e-2  # against PyTorch fp32
    torch.manual_seed(0)
    x, t = torch.randn(8, *manifest.image_shape), torch.rand(8) * 999
    with load_engine(package, device="cpu") as engine:
        whole = engine(x, t)
        assert whole.dtype == torch.float32 and whole.shape == x.shape
        for batch in (1, 3):
            part = engine(x[:batch], t[:batch])
            assert ((part - whole[:batch]).norm() / whole[:batch].norm()).item() < 1e-2
