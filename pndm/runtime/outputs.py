"""Writing a sampling run: one PNG per image (or one .npz), ``grid.png`` and ``run.json``.

A run is all or nothing (:func:`staged_output`): its files are written into a staging folder
beside ``--out`` and published at the end by one folder swap, so ``--out`` holds either its
previous complete content or the new complete run, never a mix, and an interrupted run leaves
nothing behind (a killed run's staging folder is removed by the next run into that ``--out``).
One run at a time writes to an ``--out`` (:func:`pndm.fileio.folder_lock`). A reused ``--out`` is
replaced whole, so no image of an older run stays beside the new ``run.json``; an ``--out`` that
holds files pndm did not write, or another command's results (:data:`RUN_KINDS`), is refused rather
than deleted.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import platform
import re
import shutil
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from pndm.errors import PndmError, os_error_message
from pndm.faults import fault_point
from pndm.fileio import (
    atomic_path,
    atomic_write_text,
    clean_stale_siblings,
    folder_lock,
    parents_undone_on_error,
    replace_dir,
    resolved_out,
)
from pndm.images import GRID_PNG, STRIP_PNG, TRAJECTORY_PNG, make_grid, save_png

GRID_MAX_IMAGES = 64  # grid.png shows the first 64 seeds; every image is still written on its own
# What a run of each command writes into --out, beside the run.json of sample and interpolate: a run
# replaces a folder of its own command's files only, never another command's results.
RUN_KINDS = {
    "sample": re.compile(
        rf"seed\d{{6,}}\.png|samples\.npz|{re.escape(GRID_PNG)}|{re.escape(TRAJECTORY_PNG)}"),
    "interpolate": re.compile(rf"frame_\d{{3,}}\.png|{re.escape(STRIP_PNG)}"),
    "sweep": re.compile(r"sweep\.(json|md|png)"),
}
# Every name a run writes (and the temporary names of pndm's earlier versions).
_NAMES = "(" + "|".join([r"run\.json", *(kind.pattern for kind in RUN_KINDS.values())]) + ")"
RUN_FILES = re.compile(rf"^({_NAMES}|\.{_NAMES}\.[\w-]+\.tmp|\.pndm-write-test)$")


def _named(out: str | os.PathLike, what: str) -> Path:
    """``out`` as a path; an empty one (which would mean the current folder) is refused."""
    if not str(out).strip():
        raise PndmError(f"{what} is empty: name the file or folder to write")
    return Path(out)


def prepare_out_file(path: str | os.PathLike, what: str = "--out") -> Path:
    """Prove before the work that the file ``path`` (option ``what``) can be written: not a folder, and
    the nearest existing folder above it writable. Nothing is created (the write makes the folders), so
    a run refused later leaves nothing behind."""
    path = _named(path, what)
    if path.is_dir():
        raise PndmError(f"{what} {path} is a folder: give the path of a file to write")
    existing = next(parent for parent in path.absolute().parents if parent.exists())
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise _unwritable(path, e, what, folder=existing) from e
    return path


def _file_in_the_way(out: Path, *, is_file: bool) -> Path | None:
    """The file that stands where ``out`` needs a folder (``out`` itself too unless ``is_file``), if any."""
    out = out.absolute()
    for path in (out.parents if is_file else (out, *out.parents)):
        if path.exists():
            return None if path.is_dir() else path
    return None


def _unwritable(out: Path, e: OSError, what: str = "--out", *, folder: Path | None = None) -> PndmError:
    """The one line for a failed write into ``out``, the path the user gave with ``what``: a folder, or with
    ``folder`` (the nearest existing folder above it, where the write was tried) a file. The line names these
    paths, never the temporary file the probe wrote."""
    blocker = _file_in_the_way(out, is_file=folder is not None)
    if blocker == out.absolute():
        return PndmError(f"{what} {out} is a file, not a folder; choose another {what}")
    if blocker is not None:
        return PndmError(f"{what} {out}: {blocker} is a file, not a folder; choose another {what}")
    folder = out if folder is None else folder
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return PndmError(os_error_message(OSError(e.errno, e.strerror, str(folder)), what))
    return PndmError(f"cannot write to the output folder {folder} ({e.strerror or e}): "
                     f"choose a writable {what}")


def _check_run_folder(out: Path, kind: str) -> None:
    """Refuse an existing ``out`` that is not the folder of an earlier ``kind`` run (:data:`RUN_KINDS`):
    pndm never deletes foreign files, nor another command's results."""
    if not out.is_dir():
        raise PndmError(f"--out {out}: exists and is not a folder; choose another --out")
    names = sorted(p.name for p in out.iterdir())
    foreign = [name for name in names if not RUN_FILES.match(name)]
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise PndmError(
            f"--out {out} holds files pndm-run does not write ({foreign[0]}{more}); "
            "choose an empty or new --out"
        )
    for other, pattern in RUN_KINDS.items():
        theirs = next((name for name in names if other != kind and pattern.fullmatch(name)), None)
        if theirs is not None:
            raise PndmError(f"--out {out} holds the results of a pndm-run {other} ({theirs}), which this "
                            f"{kind} would replace; choose another --out, or delete that folder first")


@contextlib.contextmanager
def staged_output(out: str | os.PathLike, kind: str) -> Iterator[Path]:
    """Yield an empty staging folder for a ``kind`` run (sample, interpolate or sweep) into ``out``;
    publish it as ``out`` if the body succeeds.

    Before the body: take ``out``'s lock, clean up after dead runs, and check that an existing
    ``out`` holds only the files of an earlier ``kind`` run. On any error or interrupt the staging folder (and
    any parent folder this call created) is removed and ``out`` is left as it was.
    """
    out = resolved_out(_named(out, "--out"))
    staging = out.parent / f".{out.name}.pndm-staging-{os.getpid()}"
    with parents_undone_on_error(out):
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(folder_lock(out))
                clean_stale_siblings(out, "staging")
                if out.exists():
                    _check_run_folder(out, kind)
                staging.mkdir()
            except OSError as e:
                raise _unwritable(out, e) from e
            try:
                yield staging
                fault_point("sample.publish", out)
                old = out.parent / f".{out.name}.pndm-old-{os.getpid()}"
                replace_dir(staging, out, old)
                if old.exists():
                    shutil.rmtree(old)
            finally:
                if staging.exists():
                    shutil.rmtree(staging)


def image_name(seed: int) -> str:
    return f"seed{seed:06d}.png"


def write_pngs(pixels: torch.Tensor, seeds: list[int], out: Path) -> None:
    """One ``seedNNNNNN.png`` per (H, W, C) uint8 image."""
    for image, seed in zip(pixels, seeds, strict=True):
        save_png(image, out / image_name(seed))


def write_npz(pixels: torch.Tensor, seeds: list[int], out: Path) -> Path:
    """``samples.npz`` with ``images`` (N, H, W, C) uint8 and ``seeds`` (N,) int64."""
    path = out / "samples.npz"
    buffer = io.BytesIO()
    np.savez(buffer, images=pixels.numpy(), seeds=np.asarray(seeds, dtype=np.int64))
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return path


def write_grid(pixels: torch.Tensor, out: Path) -> None:
    save_png(make_grid(pixels[:GRID_MAX_IMAGES]), out / GRID_PNG)


def versions() -> dict:
    """Versions of the packages that decide a run's numbers."""
    found = {"python": platform.python_version()}
    for package in ("pndm", "torch", "onnxruntime", "onnxruntime-gpu", "tensorrt", "onnx"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


def write_json(data: dict, path: Path) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
