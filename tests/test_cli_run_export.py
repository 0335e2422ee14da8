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
def test_export_default_then_sample_and_check(tmp_path, precision, engines):
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
