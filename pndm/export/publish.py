"""Publishing an export into DIR: afterwards DIR is the previous complete folder or the new complete one.

- **One export at a time** per DIR (:func:`pndm.fileio.folder_lock`: an ``flock`` on a lock file
  beside DIR holding the owner's pid). A second concurrent export is refused with one line naming
  that pid; the lock of a dead process is released by the kernel and simply taken over.
- **Staging**: the export writes its files into a hidden sibling ``.DIR.pndm-export-<pid>``. DIR is
  not touched until everything is written and verified.
- **Publish**: the entries of DIR the export does not replace (older engines of the same model, the
  user's own files) are hard-linked into the staging folder (no bytes copied; a copy where links are
  impossible), then :func:`pndm.fileio.replace_dir` swaps staging and DIR in one step (Linux ``renameat2``
  ``RENAME_EXCHANGE``): a reader, or a kill at any moment, sees the old folder or the new one. Where
  the kernel cannot swap, DIR is renamed aside and the staging folder renamed in; a crash between
  the two renames is undone by the next export. The previous folder is then removed.
- **Stale state**: holding the lock, an export first removes the staging folders of dead exports
  (siblings ``.DIR.pndm-export-*``, and ``.pndm-export-*`` folders inside DIR from older pndm
  versions) and undoes an interrupted swap (a ``.DIR.pndm-old-*`` symbolic link, left by older versions
  that swapped a linked DIR itself, is unlinked, never followed). The temporary files of killed atomic
  writes in DIR (``.NAME.pndm-<pid>_<random>.tmp``) are not carried over.
- **A linked DIR**: DIR is resolved first, so a symbolic link to a folder keeps pointing at it and that
  folder is what is replaced (as for ``pndm-run sample --out``).

Fault points (``PNDM_FAULT``, :mod:`pndm.faults`): ``export.publish`` (everything staged, just before
the swap) and fileio's ``publish.between`` / ``write``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from pndm.faults import fault_point
from pndm.fileio import (
    clean_stale_siblings,
    folder_lock,
    parents_undone_on_error,
    recover_dir,
    remove_dead_temp,
    remove_entry,
    replace_dir,
    resolved_out,
)


def _staging_name(out: Path, pid: int | str) -> Path:
    return out.parent / f".{out.name}.pndm-export-{pid}"


def _old_name(out: Path) -> Path:
    return out.parent / f".{out.name}.pndm-old-{os.getpid()}"


def clean_stale(out: Path) -> None:
    """Remove what dead exports into ``out`` left behind and undo an interrupted swap (lock held): the
    staging folders beside ``out`` (:func:`pndm.fileio.clean_stale_siblings`) and inside it (older pndm)."""
    clean_stale_siblings(out, "export")
    for folder in out.glob(".pndm-export-*") if out.is_dir() else ():
        with contextlib.suppress(OSError):
            remove_entry(folder)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError:
        shutil.copy2(source, target, follow_symlinks=False)


def _carry_over(out: Path, staging: Path, left_out: set[str]) -> None:
    """Link every entry of ``out`` that ``staging`` does not replace, and ``left_out`` does not name, into
    ``staging``; the temporary file of a killed atomic write (:func:`pndm.fileio.remove_dead_temp`) is
    removed, not carried over."""
    if not out.is_dir():
        return
    for entry in out.iterdir():
        target = staging / entry.name
        if entry.name in left_out or target.exists() or target.is_symlink() or remove_dead_temp(entry):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, target, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(entry), str(target))


@contextlib.contextmanager
def staged_export(out: str | os.PathLike, left_out: set[str] | None = None) -> Iterator[Path]:
    """Hold ``out``'s lock and yield an empty staging folder; when the body returns, publish it as
    ``out`` together with the entries of ``out`` it does not replace, but those named in ``left_out``
    (a set the body may fill: the engines of another model). On any error, interrupt or kill
    ``out`` keeps its previous content (module docstring). An ``out`` that is a symbolic link to a folder
    publishes into that folder and stays a link (:func:`pndm.fileio.resolved_out`)."""
    out = resolved_out(out)
    with parents_undone_on_error(out), folder_lock(out):
        clean_stale(out)
        staging = _staging_name(out, os.getpid())
        staging.mkdir()
        try:
            yield staging
            _carry_over(out, staging, left_out or set())
            fault_point("export.publish", out)
            old = _old_name(out)
            try:
                replace_dir(staging, out, old)
            finally:  # success: the previous folder goes; an error between two renames: it comes back
                recover_dir(out, old)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
