"""Atomic file output: write to a temporary name in the same folder, then rename.

A crash or an error half-way never leaves a truncated checkpoint, engine or image
where a user (or the next run) would pick it up. Whole folders are published the same way
(:func:`replace_dir`), under a lock that one writer holds at a time (:func:`folder_lock`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import glob
import hashlib
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pndm.errors import PndmError
from pndm.faults import fault_point


def _default_file_mode() -> int:
    """The mode a plainly created file gets (0o666 less the umask); mkstemp files start at 0o600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


# The temporary name of an atomic write: ``.<name>.pndm-<pid>_<8 random characters>.tmp`` (mkstemp's
# characters); the ``pndm-`` marker keeps a user's own ``.x.123_abcdefgh.tmp`` out of the cleanup.
_TEMP_NAME = re.compile(r"\..+\.pndm-(?P<pid>\d+)_[a-z0-9_]{8}\.tmp", re.DOTALL)
_swept: set[str] = set()  # folders this process already rid of dead writers' temporary files


def _pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs (another user's counts; so does an impossible pid, to be safe)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError, ValueError):
        return True
    return True


def remove_dead_temp(path: str | os.PathLike) -> bool:
    """Remove ``path`` and return True if it is the temporary file of an atomic write (:func:`atomic_path`)
    whose writer is gone (e.g. killed): the pid in its name runs no process here, and no one holds the
    ``flock`` its writer takes on it (which a writer in another pid namespace, e.g. another container
    sharing the folder, still holds). Anything else (a live writer's file, any other file) is kept: False."""
    path = Path(path)
    found = _TEMP_NAME.fullmatch(path.name)
    if found is None or _pid_alive(int(found["pid"])):
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        path.unlink()
    except OSError:  # held by a live writer, gone meanwhile, or no flock on this file system: keep it
        return False
    finally:
        os.close(fd)
    return True


def remove_dead_temps(folder: str | os.PathLike) -> list[str]:
    """Remove from ``folder`` the temporary files of atomic writes whose writers died
    (:func:`remove_dead_temp`); a running writer's file is kept. Returns the names removed."""
    removed = []
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            if remove_dead_temp(entry.path):
                removed.append(entry.name)
    return removed


def _sweep_once(folder: Path) -> None:
    """:func:`remove_dead_temps` the first time this process writes into ``folder`` (one listing per folder
    and process: a run writing many files into one folder lists it once)."""
    key = os.path.abspath(folder)
    if key not in _swept:
        _swept.add(key)
        remove_dead_temps(folder)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` on success.

    The temporary file is removed if the body raises. Parent folders are created. The final
    file gets the usual permissions (0o666 less the umask), not mkstemp's private 0o600. A file
    error that names no file (a failed ``write()``, e.g. a full disk) or the temporary file is raised
    naming ``final``: the user knows that path, not the temporary one.

    The temporary file, ``.<name>.pndm-<pid>_<random>.tmp``, carries the writer's pid, and the writer
    holds an ``flock`` on it while it writes. One a killed writer left behind (nothing runs at a
    SIGKILL) is removed by the first atomic write of a later process into that folder
    (:func:`remove_dead_temps`); a live writer's is never touched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _sweep_once(final.parent)
    try:
        prefix = f".{final.name}.pndm-{os.getpid()}_"
        fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=final.parent)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(final)) from e
    tmp = Path(tmp_name)
    try:
        with contextlib.suppress(OSError):  # a file system without flock: the pid in the name still tells
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield tmp
        os.chmod(tmp, _default_file_mode())
        fault_point("write", final)
        os.replace(tmp, final)
    except OSError as e:
        named = e.filename
        if named is not None and not (isinstance(named, (str, os.PathLike)) and os.fspath(named) == tmp_name):
            raise
        raise OSError(e.errno, e.strerror, str(final)) from e  # a failed write() names no file
    finally:
        os.close(fd)
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(final: str | os.PathLike, data: bytes) -> None:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(final: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(final, text.encode("utf-8"))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (the "content hash" recorded in specs and manifests)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class FolderBusyError(PndmError):
    """Another live process holds the lock of an output folder."""


@contextlib.contextmanager
def parents_undone_on_error(path: str | os.PathLike) -> Iterator[None]:
    """The body may create ``path``'s missing parent folders; if it fails or is interrupted, those that
    are still empty are removed again, so a failed run leaves no trace."""
    created = [p for p in Path(path).absolute().parents if not p.exists()]  # innermost first
    try:
        yield
    except BaseException:
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


MOUNTINFO = Path("/proc/self/mountinfo")


def is_mount_point(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is a mount point: :func:`os.path.ismount`, which misses a bind mount from the same
    file system (e.g. ``docker run -v`` of a host folder on the same disk), or, on Linux, a mount point
    listed in ``/proc/self/mountinfo`` (its 5th field, with spaces and the like octal-escaped)."""
    if os.path.ismount(folder):
        return True
    try:
        lines = MOUNTINFO.read_text().splitlines()
    except OSError:  # not Linux, or no /proc
        return False
    target = os.path.realpath(folder)
    for line in lines:
        fields = line.split(" ")
        if len(fields) > 4 and re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4]) == target:
            return True
    return False


def check_replaceable(folder: str | os.PathLike, what: str = "--out") -> None:
    """Refuse a ``folder`` that :func:`replace_dir` could not replace (a mount point, e.g. a Docker volume:
    no rename can replace it), before the work rather than after it."""
    if is_mount_point(folder):
        raise PndmError(f"{what} {folder} is a mount point, which pndm cannot replace with the finished "
                        f"folder; use a folder inside it, e.g. {what} {Path(folder) / 'out'}")


def _lock_path(folder: Path) -> Path:
    """The lock file of ``folder``, the same however the folder is named (``.``, a symbolic link to it)."""
    folder = Path(os.path.realpath(folder))
    return folder.parent / f".{folder.name}.pndm-lock"


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "--out", *, replaced: bool = True) -> Iterator[Path]:
    """Hold the lock of ``folder`` (a ``.<name>.pndm-lock`` file beside it) for the body.

    The lock is an ``flock`` on that file, which also holds the holder's pid: the kernel drops it
    when the holder dies, however it dies, so a stale lock file is simply taken over. A live holder
    makes this raise :class:`FolderBusyError` naming its pid. The file is removed on release.
    ``replaced``: the holder publishes ``folder`` whole (:func:`replace_dir`): see :func:`check_replaceable`.
    """
    folder = Path(folder)
    if replaced:
        check_replaceable(folder, what)
    lock = _lock_path(folder)
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise FolderBusyError(
                f"{what} {folder}: another pndm process (pid {holder}) is writing there; "
                f"wait for it or choose another {what}"
            ) from None
        try:  # the file we locked may have been released and removed meanwhile: then lock the new one
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield lock
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def replace_dir(staging: Path, final: Path, old: Path) -> None:
    """Publish the complete folder ``staging`` as ``final``; ``final``'s previous content ends up in ``old``.

    Where the kernel can swap two folders in one step, readers see the previous folder or the new
    one, never neither. Elsewhere ``final`` is first renamed to ``old``: a crash between the two
    renames leaves ``old`` for :func:`recover_dir` to put back. The caller removes ``old``.
    """
    if final.exists() and _exchange(staging, final):
        os.replace(staging, old)  # staging now names the previous content
        return
    if final.exists():
        os.replace(final, old)
        fault_point("publish.between", final)
    os.replace(staging, final)


def remove_entry(path: str | os.PathLike) -> None:
    """Remove ``path``: a folder with everything in it, or a file or symbolic link itself (never the folder
    a link points to; ``shutil.rmtree`` refuses a link)."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def recover_dir(final: Path, old: Path) -> None:
    """After a crash inside :func:`replace_dir`: put ``old`` back if ``final`` is gone, else drop it.

    ``old`` may be a symbolic link (older pndm versions swapped a linked ``--out`` itself): it is removed as
    a link, never followed."""
    if not os.path.lexists(old):
        return
    if not final.exists():
        os.replace(old, final)
    else:
        remove_entry(old)


def clean_stale_siblings(out: Path, staging_tag: str) -> None:
    """Undo a folder swap a crash interrupted (a ``.OUT.pndm-old-*`` beside ``out``: :func:`recover_dir`) and
    remove the staging folders of dead runs (``.OUT.pndm-<staging_tag>-*``). Call it holding ``out``'s
    :func:`folder_lock`, so no live run's staging folder is there."""
    name = glob.escape(out.name)
    for old in out.parent.glob(f".{name}.pndm-old-*"):
        recover_dir(out, old)
    for stale in out.parent.glob(f".{name}.pndm-{staging_tag}-*"):
        with contextlib.suppress(OSError):  # removed by a later run if this one cannot
            remove_entry(stale)


def resolved_out(out: str | os.PathLike, what: str = "--out") -> Path:
    """The absolute folder an output path names, symbolic links followed. A run or an export publishes its
    folder by renaming, which would replace a link ``--out`` itself (the user's link lost, its target left
    stale): resolved, the folder it points to is replaced and the link kept. Shared by every command that
    publishes a folder (sample, interpolate, sweep, export). A folder that holds the current directory
    is refused: replacing it would leave the shell in a deleted folder."""
    try:
        resolved = Path(out).resolve()
    except (OSError, RuntimeError) as e:  # a loop of links: RuntimeError up to Python 3.12, OSError after
        raise PndmError(f"{what} {out}: its symbolic links form a loop; fix the link or choose another "
                        f"{what}") from e
    try:
        cwd = Path.cwd()
    except OSError:  # the current directory was deleted: nothing to protect
        return resolved
    if resolved == cwd or resolved in cwd.parents:
        raise PndmError(f"{what} {resolved} holds the current directory, and the whole folder is replaced; "
                        f"run from outside it or choose another {what}")
    return resolved
