"""Output paths under faults (audit E, F2, F5 and F6).

- An ``--out`` that is a symbolic link to a folder: the export, like ``pndm-run sample``, replaces the folder
  it points to and keeps the link (:func:`pndm.fileio.resolved_out`, shared by both); a ``.DIR.pndm-old-*``
  link an older version left is unlinked, never followed, so the next export is not stuck.
- A killed atomic write (``tune``'s recipe.json, ``score --json``, ...) leaves
  ``.NAME.pndm-<pid>_<random>.tmp``: the next write into that folder removes it, never a live writer's,
  and an export does not carry it over.
- A file where ``--out`` needs a folder, and a read-only file system: the line names the user's path.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import tempfile
from collections import Counter
from pathlib import Path

import pytest

from pndm import faults
from pndm.cli import _run_guarded, export_cli, run_cli
from pndm.errors import PndmError
from pndm.export.publish import staged_export
from pndm.fileio import atomic_path, atomic_write_text, recover_dir, remove_dead_temps, resolved_out
from pndm.runtime.outputs import prepare_out_file, staged_output


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture
def linked(tmp_path) -> tuple[Path, Path]:
    """``engines -> v3``: v3 holds an earlier export's manifest and a file of the user's."""
    target = tmp_path / "v3"
    target.mkdir()
    (target / "manifest.json").write_text("old")
    (target / "notes.txt").write_text("mine")
    link = tmp_path / "engines"
    link.symlink_to("v3")
    return link, target


def _publish(out: Path, text: str = "new") -> None:
    with staged_export(out) as staging:
        (staging / "manifest.json").write_text(text)


# F2: a symlinked --out ------------------------------------------------------------------------------------

def test_an_export_into_a_link_replaces_its_target_and_keeps_the_link(linked, tmp_path):
    link, target = linked
    _publish(link)
    assert link.is_symlink() and os.readlink(link) == "v3"  # the user's link is kept
    assert (target / "manifest.json").read_text() == "new"  # ... and its target holds the new export
    assert (target / "notes.txt").read_text() == "mine"  # with the user's file carried over
    assert hidden(tmp_path) == []  # no .engines.pndm-old-* link, no lock, no staging
    _publish(link, "newer")  # and the next export into the link works the same
    assert link.is_symlink() and (target / "manifest.json").read_text() == "newer"
    assert hidden(tmp_path) == []


def test_the_export_command_into_a_link_exits_0_and_keeps_the_link(linked, tmp_path, monkeypatch):
    from pndm.models import save_checkpoint
    from pndm.models.ddpm_unet import DDPMUNet, DDPMUNetConfig

    monkeypatch.delenv("PNDM_FAULT", raising=False)
    config = DDPMUNetConfig(ch=32, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), resolution=8)
    checkpoint = save_checkpoint(tmp_path / "tiny.safetensors", DDPMUNet(config).state_dict(),
                                 {"architecture": "ddpm", "model": config.to_dict(),
                                  "diffusion": {"schedule": "linear", "T": 1000}})
    link, target = linked
    (target / "manifest.json").unlink()
    args = ["build", "--checkpoint", str(checkpoint), "--out", str(link), "--precision", "fp32",
            "--trt", "off", "--batch", "1:1:2", "--calibration-steps", "2", "--calibration-count", "1"]
    _run_guarded(export_cli.main, args, command=export_cli)  # raises SystemExit on an error
    assert link.is_symlink() and (target / "manifest.json").is_file() and (target / "unet.onnx").is_file()
    assert (target / "notes.txt").read_text() == "mine"
    assert hidden(tmp_path) == []


def test_a_link_left_aside_by_an_older_version_is_unlinked_and_the_export_works(linked, tmp_path):
    """What an older pndm left after exporting into a link: the link replaced by a real folder, and the
    link renamed to a hidden ``.engines.pndm-old-<pid>``: every later export failed on rmtree of it."""
    link, target = linked
    link.unlink()
    link.mkdir()
    (link / "manifest.json").write_text("published by the older version")
    aside = tmp_path / ".engines.pndm-old-4242"
    aside.symlink_to("v3")
    _publish(link)
    assert not os.path.lexists(aside)  # the leftover link is gone ...
    assert (target / "manifest.json").read_text() == "old" and (target / "notes.txt").read_text() == "mine"
    assert (link / "manifest.json").read_text() == "new"  # ... the folder it pointed to kept whole
    assert hidden(tmp_path) == []


def test_recover_dir_puts_a_link_back_or_unlinks_it(tmp_path):
    target = tmp_path / "v3"
    target.mkdir()
    (target / "a").write_text("a")
    final, old = tmp_path / "engines", tmp_path / ".engines.pndm-old-1"
    old.symlink_to("v3")
    recover_dir(final, old)  # a kill between the renames: the link goes back where it was
    assert final.is_symlink() and not os.path.lexists(old)
    final.unlink()
    final.mkdir()
    old.symlink_to("v3")
    recover_dir(final, old)  # the new folder is in place: the old link goes, never its target
    assert not os.path.lexists(old) and (target / "a").read_text() == "a"
    dangling = tmp_path / ".engines.pndm-old-2"
    dangling.symlink_to("gone")
    recover_dir(final, dangling)
    assert not os.path.lexists(dangling)


def test_sample_and_export_resolve_a_linked_out_the_same_way(linked, tmp_path):
    link, target = linked
    (target / "manifest.json").unlink()
    (target / "notes.txt").unlink()
    assert resolved_out(link) == target.resolve()
    with staged_output(link, "sample") as staging:
        (staging / "run.json").write_text("{}")
    assert link.is_symlink() and (target / "run.json").is_file() and hidden(tmp_path) == []


def test_a_loop_of_links_is_one_line(tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to("loop")
    with pytest.raises(PndmError, match=r"--out .*loop: its symbolic links form a loop; fix the link or"):
        resolved_out(loop)


# F5: temporary files of killed atomic writes ----------------------------------------------------------------

def _killed_write(target: Path) -> int:
    """A child that dies by SIGKILL inside an atomic write of ``target``; its pid (the child is reaped)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.environ["PNDM_FAULT"] = "write:kill"
        faults._hits = Counter()
        atomic_write_text(target, "half")
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9
    return pid


def test_the_next_write_removes_a_killed_writers_temporary_file_only(tmp_path):
    recipe = tmp_path / "recipe.json"
    recipe.write_text("previous")
    dead = _killed_write(recipe)
    left = [p.name for p in tmp_path.iterdir() if p.name != "recipe.json"]
    assert len(left) == 1 and re.fullmatch(rf"\.recipe\.json\.pndm-{dead}_\w{{8}}\.tmp", left[0])
    assert recipe.read_text() == "previous"
    live = tmp_path / f".recipe.json.pndm-{os.getpid()}_abcdefgh.tmp"  # a running writer's (this one)
    live.write_text("being written")
    elsewhere = tmp_path / f".recipe.json.pndm-{dead}_zzzzzzzz.tmp"  # a writer whose pid is unseen: flock
    elsewhere.write_text("being written")
    mine = [tmp_path / ".recipe.json.bak", tmp_path / f".recipe.json.{dead}.tmp",  # the user's own names
            tmp_path / f".backup.{dead}_abcdefgh.tmp"]
    for path in mine:
        path.write_text("keep")
    fd = os.open(elsewhere, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        atomic_write_text(recipe, "new")  # e.g. pndm-run tune again
    finally:
        os.close(fd)
    assert recipe.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["recipe.json", live.name, elsewhere.name, *(p.name for p in mine)])
    assert remove_dead_temps(tmp_path) == [elsewhere.name]  # its writer gone, it goes too


def test_a_write_error_names_the_file_not_its_temporary_name(tmp_path):
    final = tmp_path / "r.json"
    with pytest.raises(OSError) as caught, atomic_path(final) as tmp:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp))
    assert caught.value.filename == str(final) and caught.value.errno == errno.EROFS
    assert list(tmp_path.iterdir()) == []


def test_an_export_does_not_carry_a_killed_writers_temporary_file_over(linked, tmp_path):
    _, target = linked
    dead = _killed_write(target / "recipe.json")
    assert any(p.name.startswith(f".recipe.json.pndm-{dead}_") for p in target.iterdir())
    _publish(target)
    assert sorted(p.name for p in target.iterdir()) == ["manifest.json", "notes.txt"]


# F6: the user's path in the message ---------------------------------------------------------------------

def test_a_file_in_the_way_of_out_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("afile").write_text("x")
    afile = re.escape(str(tmp_path / "afile"))
    expected = rf"--out .*afile/sub.*: {afile} is a file, not a folder; choose another --out"
    for call in (lambda: prepare_out_file("afile/sub/r.json"),
                 lambda: staged_output("afile/sub", "sample").__enter__()):
        with pytest.raises(PndmError, match=expected):
            call()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_the_sample_command_names_the_file_in_the_way(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PNDM_FAULT", raising=False)
    (tmp_path / "afile").write_text("x")
    args = ["sample", "--engine", "default", "--method", "ddim", "--steps", "2", "-n", "1", "--device", "cpu",
            "--threads", "1", "--no-progress", "--out", str(tmp_path / "afile" / "sub")]
    with pytest.raises(SystemExit) as exit_info:
        _run_guarded(run_cli.main, args, command=run_cli)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exit_info.value.code == 2
    assert lines[-1] == (f"error: --out {tmp_path / 'afile' / 'sub'}: {tmp_path / 'afile'} is a file, "
                         "not a folder; choose another --out")


def _read_only(*args, dir=None, **kwargs):
    """What tempfile raises on a read-only file system: the random name it tried."""
    raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.path.join(dir, "tmpwy_io2fa"))


def test_a_read_only_file_system_names_the_out_folder_not_a_temporary_file(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PNDM_FAULT", raising=False)
    monkeypatch.setattr(tempfile, "TemporaryFile", _read_only)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    args = ["tune", "--engine", "default", "--nfe", "6", "--out", str(mnt / "r.json")]
    with pytest.raises(SystemExit) as exit_info:
        _run_guarded(run_cli.main, args, command=run_cli)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exit_info.value.code == 2
    assert lines[-1] == f"error: read-only file system: {mnt}; choose a writable --out"


def test_one_lock_however_the_folder_is_named(tmp_path, monkeypatch):
    """A folder's lock is the same through a symbolic link and as '.' from inside it (pndm-train locks
    --out as typed), so a second writer is refused whichever name it uses."""
    from pndm.fileio import FolderBusyError, folder_lock

    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "runlink").symlink_to(run)
    monkeypatch.chdir(run)
    with folder_lock(run, replaced=False):
        for other in (tmp_path / "runlink", Path(".")):
            with pytest.raises(FolderBusyError), folder_lock(other, replaced=False):
                pass
