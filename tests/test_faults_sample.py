"""``pndm-run sample`` output under faults: --out holds its previous complete run or the new one, never a mix.

Faults (``PNDM_FAULT``, :mod:`pndm.faults`) hit a forked child running the command: SIGKILL and
SIGINT and SIGTERM while images are written or just before publishing, a full disk, a read-only file
system.
"""

from __future__ import annotations

import json
import os
import signal
from collections import Counter

import pytest

from pndm import faults, fileio
from pndm.cli import run_cli
from pndm.errors import PndmError
from pndm.fileio import folder_lock


@pytest.fixture(autouse=True)
def _fresh_fault_counts(monkeypatch):
    monkeypatch.setattr(faults, "_hits", Counter())


def _args(out, num=2, seed=0):
    return ["sample", "--engine", "default", "--method", "ddim", "--steps", "4", "-n", str(num),
            "--batch", "3", "--seed", str(seed), "--device", "cpu", "--threads", "1", "--no-progress",
            "--out", str(out)]


def _sample(out, num=2, seed=0):
    run_cli.main(_args(out, num, seed), standalone_mode=False)


def _forked(args, fault=None):
    """Run ``pndm-run args`` (with its one-line error handling) in a forked child; its wait status."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            if fault:
                os.environ["PNDM_FAULT"] = fault
            run_cli.main(args)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            code = 3
        os._exit(code)
    return os.waitpid(pid, 0)[1]


def _content(out):
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())} if out.exists() else None


def _leftovers(parent, out):
    return sorted(p.name for p in parent.iterdir() if p.name != out.name)


def _assert_whole(out):
    run = json.loads((out / "run.json").read_text())
    pngs = sorted(p.name for p in out.glob("seed*.png"))
    first = run["seeds"]["first"]
    assert pngs == [f"seed{s:06d}.png" for s in range(first, first + run["num_images"])]
    assert (out / "grid.png").is_file()


def test_reused_out_is_replaced_whole(tmp_path):
    out = tmp_path / "samples"
    _sample(out, num=3)
    _sample(out, num=2, seed=10)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["grid.png", "run.json", "seed000010.png", "seed000011.png"]
    _assert_whole(out)
    assert _leftovers(tmp_path, out) == []


def test_out_with_foreign_files_is_refused_and_kept(tmp_path):
    out = tmp_path / "samples"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "seed000000.png").write_bytes(b"old")
    with pytest.raises(PndmError, match=r"holds files pndm-run does not write \(notes.txt\)"):
        _sample(out)
    assert _content(out) == {"notes.txt": b"mine", "seed000000.png": b"old"}
    assert _leftovers(tmp_path, out) == []


@pytest.mark.parametrize(("theirs", "command"), [
    (["sweep.json", "sweep.md", "sweep.png"], "sweep"),
    (["frame_000.png", "strip.png", "run.json"], "interpolate"),
])
def test_another_commands_results_are_refused_and_kept(tmp_path, theirs, command):
    """sample never replaces a sweep's or an interpolation's folder (a mistyped --out would lose them)."""
    out = tmp_path / "results"
    out.mkdir()
    for name in theirs:
        (out / name).write_bytes(name.encode())
    with pytest.raises(PndmError) as exc:
        _sample(out)
    assert f"holds the results of a pndm-run {command} ({theirs[0]}), which this sample would replace" in str(
        exc.value)
    assert _content(out) == {name: name.encode() for name in theirs}
    assert _leftovers(tmp_path, out) == []


def test_a_run_into_the_current_directory_is_refused(tmp_path, monkeypatch):
    """sample --out . from inside a previous run's folder would leave the shell in a deleted folder."""
    out = tmp_path / "samples"
    _sample(out)
    before = _content(out)
    monkeypatch.chdir(out)
    with pytest.raises(PndmError, match=r"--out .*samples holds the current directory, and the whole "
                                        "folder is replaced; run from outside it or choose another --out"):
        _sample(".")
    assert _content(out) == before


@pytest.mark.parametrize("previous", [True, False], ids=["over-a-run", "fresh"])
@pytest.mark.parametrize(("fault", "exit_code"), [
    ("write@2:kill", -signal.SIGKILL), ("sample.publish:kill", -signal.SIGKILL),
    ("write@2:sigint", 128 + signal.SIGINT), ("sample.publish:sigint", 128 + signal.SIGINT),
    ("write@2:sigterm", 128 + signal.SIGTERM), ("sample.publish:sigterm", 128 + signal.SIGTERM),
    ("write@3:enospc", 2), ("write@1:erofs", 2),
])
def test_a_failed_run_leaves_the_previous_state(fault, exit_code, previous, tmp_path, capfd):
    out = tmp_path / "nested" / "samples"
    if previous:
        _sample(out, num=2)
    before = _content(out)
    status = _forked(_args(out, num=3, seed=5), fault)
    code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    assert code == exit_code
    assert _content(out) == before  # the complete previous run, or still nothing
    err = capfd.readouterr().err.strip().splitlines()
    if exit_code == 2:
        word = "no space left on device" if "enospc" in fault else "read-only file system"
        fix = "free space or choose another --out" if "enospc" in fault else "choose a writable --out"
        assert err[-1].startswith(f"error: {word}: ") and err[-1].endswith(fix)
    if exit_code != -signal.SIGKILL:  # cleaned up at once
        assert _leftovers(tmp_path, tmp_path) == (["nested"] if previous else [])
        assert not previous or _leftovers(out.parent, out) == []
    _sample(out, num=1, seed=7)  # the next run cleans up after a killed one and publishes whole
    _assert_whole(out)
    assert _leftovers(out.parent, out) == []


def test_a_second_run_into_a_busy_out_is_refused(tmp_path):
    out = tmp_path / "samples"
    _sample(out)
    before = _content(out)
    with folder_lock(out):
        with pytest.raises(PndmError, match=f"another pndm process \\(pid {os.getpid()}\\) is writing there"):
            _sample(out, num=3, seed=5)
    assert _content(out) == before


def test_two_concurrent_runs_are_refused_or_both_whole(tmp_path, capfd):
    out = tmp_path / "samples"
    pids = []
    for seed in (0, 100):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 0
            try:
                run_cli.main(_args(out, num=3, seed=seed))
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            os._exit(code)
        pids.append(pid)
    codes = [os.WEXITSTATUS(os.waitpid(pid, 0)[1]) for pid in pids]
    assert 0 in codes and set(codes) <= {0, 2}
    refused = [line for line in capfd.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(refused) == codes.count(2)
    assert all("another pndm process" in line for line in refused)
    _assert_whole(out)
    assert _leftovers(tmp_path, out) == []


def test_a_stale_lock_is_taken_over(tmp_path):
    out = tmp_path / "samples"
    (tmp_path / ".samples.pndm-lock").write_text("999999999\n")
    _sample(out)
    _assert_whole(out)
    assert _leftovers(tmp_path, out) == []


def test_a_swap_interrupted_between_renames_is_undone(tmp_path, monkeypatch):
    """Without an atomic folder swap, a kill between the two renames leaves --out moved aside: put back."""
    out = tmp_path / "samples"
    _sample(out)
    before = _content(out)
    monkeypatch.setattr(fileio, "_exchange", lambda a, b: False)
    status = _forked(_args(out, num=3, seed=5), "publish.between:kill")
    assert os.WIFSIGNALED(status) and not out.exists()
    monkeypatch.setenv("PNDM_FAULT", "sample.publish:enospc")
    with pytest.raises(OSError):
        _sample(out, num=1, seed=9)
    assert _content(out) == before
    assert _leftovers(tmp_path, out) == []


def test_a_mount_point_out_is_refused_before_the_run(tmp_path, monkeypatch):
    """A Docker volume as --out: the final folder swap could not replace it, so refuse at once."""
    out = tmp_path / "volume"
    out.mkdir()
    monkeypatch.setattr(os.path, "ismount", lambda p: os.fspath(p) == str(out))
    with pytest.raises(PndmError, match=f"--out {out} is a mount point.*use a folder inside it"):
        _sample(out)
    assert _content(out) == {} and _leftovers(tmp_path, out) == []
    _sample(out / "run")  # ... as the message advises
    _assert_whole(out / "run")
