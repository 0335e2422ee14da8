"""bench/bench_command.py: which runners it times, up to what runs without the long benchmark."""

from __future__ import annotations

from bench_scripts import load_bench_script


def test_runners_follow_the_engines_the_export_wrote(tmp_path):
    bench = load_bench_script("bench_command")
    (tmp_path / "unet.onnx").write_bytes(b"")
    assert set(bench.commands(tmp_path, tmp_path / "unet", 20, None)) == {"onnx", "diffusers"}
    (tmp_path / "unet.int8-cpu.onnx").write_bytes(b"")
    runners = bench.commands(tmp_path, tmp_path / "unet", 20, 1)
    assert set(runners) == {"int8", "onnx", "diffusers"}
    argv = runners["int8"][1](4, tmp_path / "out")
    assert argv[argv.index("--engine") + 1] == str(tmp_path / "unet.int8-cpu.onnx")
    assert argv[argv.index("--steps") + 1] == "20" and argv[-2:] == ["--threads", "1"]
