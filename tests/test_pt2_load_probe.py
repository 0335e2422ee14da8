"""bench/pt2_load_probe.py: the CUDA package loading diagnosis, up to what runs without a GPU."""

from __future__ import annotations

import shutil
import signal
import subprocess

import pytest
from bench_scripts import load_bench_script


def test_a_file_without_a_manifest_is_one_line(tmp_path, capsys):
    (tmp_path / "unet.fp16.cuda.pt2").write_bytes(b"not a package")
    assert load_bench_script("pt2_load_probe").main([str(tmp_path / "unet.fp16.cuda.pt2")]) == 2
    err = capsys.readouterr().err
    assert "no package with a manifest.json beside it" in err and err.count("\n") == 1


def test_each_outcome_is_named_with_its_stage(monkeypatch, tmp_path):
    """A crashed variant reads 'segfault', a failed one its last error line, a hung one 'timeout', each
    with the stage it stopped in; a finished one 'ok'."""
    probe = load_bench_script("pt2_load_probe")
    outcomes = iter([
        subprocess.CompletedProcess([], -signal.SIGSEGV, "", ""),
        subprocess.CompletedProcess([], -signal.SIGSEGV, "loaded\n", ""),
        subprocess.CompletedProcess([], 1, "", "Traceback ...\nRuntimeError: no kernel image\n"),
        subprocess.CompletedProcess([], 0, "loaded\nok\n", ""),
    ])

    def fake_run(*args, **kwargs):
        if kwargs.get("timeout") == 0.5:
            raise subprocess.TimeoutExpired("python", 0.5, output=b"loaded\n")
        return next(outcomes)

    monkeypatch.setattr(probe.subprocess, "run", fake_run)
    variant = ("plain", "pndm's loader, device index -1")
    results = [probe.probe(tmp_path / "p.pt2", "cuda", *variant, 10) for _ in range(4)]
    assert results == ["segfault while loading", "segfault in the first call",
                       "RuntimeError: no kernel image while loading", "ok"]
    assert probe.probe(tmp_path / "p.pt2", "cuda", *variant, 0.5) == "timeout in the first call"


def test_cuda_only_variants_do_not_apply_to_a_cpu_package():
    probe = load_bench_script("pt2_load_probe")
    assert not probe.applies("cpu", "cuda context first", "pndm's loader, device index -1")
    assert not probe.applies("cpu", "plain", "pndm's loader, device index 0")
    assert probe.applies("cpu", "plain", "torch's runner on the extracted files")
    assert all(probe.applies("cuda", *variant) for variant in probe.VARIANTS)


@pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="needs a C compiler")
def test_backtrace_without_gdb_prints_the_native_stack(monkeypatch, tmp_path):
    probe = load_bench_script("pt2_load_probe")
    monkeypatch.setitem(probe.PREPARE, "a crash", "import ctypes; ctypes.string_at(0)")
    (tmp_path / "manifest.json").write_text("{}")
    stack = probe.backtrace(tmp_path / "p.pt2", "cpu", "a crash", "pndm's loader, device index -1", 120,
                            use_gdb=False)
    assert "SIGSEGV at address (nil)" in stack and "_ctypes" in stack
    assert "LD_DEBUG=files, last lines:" in stack and "file=" in stack
