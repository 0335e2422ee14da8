"""The demo path end to end: pndm-export the embedded default model, then pndm-run sample / check."""

import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def run(*args, timeout=900):
    return subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("precision", "engines"), [("fp16", ["unet.onnx", "unet.fp16.onnx"]), ("bf16", ["unet.bf16.pt2"])]
)
def test_export_default_then_sample_and_check(tmp_path, precision, engines):
    out = tmp_path / "engines"
    built = run("pndm-export", "build", "--precision", precision, "--batch", "1:4:8", "--out", str(out))
    assert built.returncode == 0, built.stderr[-2000:]
    for engine in engines:
        checked = run(
            "pndm-run", "check", "--engine", str(out / engine), "--steps", "20", "--num", "4", "--no-progress"
        )
        assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-2000:]
        assert "PASS" in checked.stdout
    samples = []
    for name in ("a", "b"):
        sampled = run(
            "pndm-run",
            "sample",
            "--engine",
            str(out / engines[-1]),
            "--steps",
            "20",
            "-n",
            "4",
            "--batch",
            "4",
            "--out",
            str(tmp_path / name),
            "--no-progress",
        )
        assert sampled.returncode == 0, sampled.stderr[-2000:]
        samples.append(sorted((tmp_path / name).glob("seed*.png")))
    assert len(samples[0]) == 4
    assert [p.read_bytes() for p in samples[0]] == [p.read_bytes() for p in samples[1]]
