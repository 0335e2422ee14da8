"""A local cache of the work loading an engine would otherwise redo on every run.

Entries live in ``$PNDM_CACHE_DIR/engines/<kind>/<key>/`` (default ``~/.cache/pndm``), where the
key starts with the SHA-256 of the engine file they were made from (plus whatever else decides
their content: the ONNX Runtime version, the CPU). Each entry holds ``entry.json`` with the
SHA-256 of every file in it, written last; an entry is used only when every file still has its
recorded hash, and is otherwise rebuilt from the engine file (never used half-built, edited or
truncated: built in a temporary folder beside it, then renamed into place). The cache holds only
what the engine file itself produces, so it decides nothing about trust: whether the engine file
may be loaded at all is decided before the cache is consulted.

Every decision is recorded (:func:`take_cache_events`: ``hit``, ``built``, ``rebuilt`` with the
reason) and ends up in run.json's ``cache``. Deleting the folder is always safe.

The cache only saves time: where it cannot be used (a read-only or full disk, ``$PNDM_CACHE_DIR``
a file), the engine loads without it, the decision is ``unavailable`` with the reason, and one
note says so on stderr; only an engine that also fails to load without the cache is an error.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from pndm.fileio import sha256_file
from pndm.trust import cache_root

ENTRY_RECORD = "entry.json"
_EVENTS: list[dict] = []
_NOTED: list[bool] = []  # the stderr note of cache_unavailable was printed in this process


def take_cache_events() -> list[dict]:
    """The cache decisions made since the last call (for run.json), oldest first."""
    events = list(_EVENTS)
    _EVENTS.clear()
    return events


def _problem(folder: Path, key: str) -> str | None:
    """None if ``folder`` is a complete entry for ``key`` whose files all match their hashes."""
    record_path = folder / ENTRY_RECORD
    if not record_path.is_file():
        return "missing" if not folder.exists() else "incomplete"
    try:
        record = json.loads(record_path.read_text())
        files = record["files"]
        if record.get("key") != key:
            return "made for another source"
    except (OSError, ValueError, KeyError, TypeError):
        return "unreadable record"
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {ENTRY_RECORD}
    if present != set(files):
        return "files added or removed"
    for name, digest in files.items():
        if sha256_file(folder / name) != digest:
            return f"{name} changed"
    return None


def cached_folder(kind: str, key: str, build: Callable[[Path], object]) -> tuple[Path, object]:
    """A verified cache folder for (``kind``, ``key``): reused when intact, else made by ``build``.

    ``build(folder)`` writes the entry's files into an empty folder and may return a value (e.g.
    the session it loaded while building, so a first run does the work once); the result is
    ``(folder, that value)``, or ``(folder, None)`` when the entry was reused.
    """
    final = cache_root() / "engines" / kind / key
    problem = _problem(final, key)
    if problem is None:
        _EVENTS.append({"kind": kind, "key": key, "status": "hit"})
        return final, None
    final.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=".build-", dir=final.parent))
    try:
        value = build(building)
        files = {
            p.relative_to(building).as_posix(): sha256_file(p) for p in building.rglob("*") if p.is_file()
        }
        (building / ENTRY_RECORD).write_text(json.dumps({"key": key, "files": files}, indent=1) + "\n")
        if final.is_dir():
            shutil.rmtree(final)
        elif final.exists():  # a file where the entry goes
            final.unlink()
        try:
            os.rename(building, final)
        except OSError:  # another process put a complete entry there first: use it if it is intact
            if _problem(final, key) is not None:
                raise
            shutil.rmtree(building, ignore_errors=True)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    event = {"kind": kind, "key": key, "status": "built"}
    if problem != "missing":
        event.update(status="rebuilt", reason=problem)
    _EVENTS.append(event)
    return final, value


def cache_unavailable(kind: str, key: str, error: BaseException) -> None:
    """Record that the (``kind``, ``key``) entry could not be used or made (``error``), and say once
    per process on stderr that engines load without the cache."""
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    _EVENTS.append({"kind": kind, "key": key, "status": "unavailable", "reason": reason})
    if not _NOTED:
        _NOTED.append(True)
        print(f"note: the engine cache in {cache_root() / 'engines'} cannot be used ({reason}); loading "
              "without it (slower starts). Set PNDM_CACHE_DIR to a writable folder to cache", file=sys.stderr)


def cpu_fingerprint() -> str:
    """A short hash of this CPU's model name and feature flags (what CPU-specific code depends on)."""
    import hashlib
    import platform

    text = platform.machine() + platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f.read().split("\n\n")[0].splitlines()
                     if line.startswith(("model name", "flags", "Features", "CPU part"))]
        text += "\n".join(lines)
    except OSError:
        pass
    return hashlib.sha256(text.encode()).hexdigest()[:16]


OPTIMIZED_ONNX = "optimized.onnx"


def onnxruntime_session(path: str | os.PathLike, source_sha256: str, options, providers: list):
    """An ONNX Runtime CPU session for ``path`` whose graph optimization is done once per machine.

    The first load optimizes as usual (``options``' level) and saves the optimized graph
    (``SessionOptions.optimized_model_filepath``) into the cache entry keyed by the file's SHA-256,
    the ONNX Runtime version and :func:`cpu_fingerprint` (ORT's fused CPU kernels and layouts are
    specific to the CPU); later loads read that graph with optimizations off.
    """
    import onnxruntime as ort

    key = f"{source_sha256}-ort{ort.__version__}-{cpu_fingerprint()}"

    def build(folder: Path):
        options.optimized_model_filepath = str(folder / OPTIMIZED_ONNX)
        try:
            return ort.InferenceSession(str(path), sess_options=options, providers=providers)
        finally:
            options.optimized_model_filepath = ""

    try:
        folder, session = cached_folder("onnxruntime", key, build)
    except Exception as error:  # noqa: BLE001 - ORT reports a full disk as INVALID_PROTOBUF, not OSError
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)  # the engine's
        cache_unavailable("onnxruntime", key, error)  # own fault raises above; this one was the cache's
        return session
    if session is None:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        optimized = str(folder / OPTIMIZED_ONNX)
        session = ort.InferenceSession(optimized, sess_options=options, providers=providers)
    return session


AOTI_MODEL_DIR = "data/aotinductor/model/"
# What an AOTInductor package keeps beside its library for reading, not loading (sources, metadata).
AOTI_SOURCE_SUFFIXES = (".cpp", ".h", ".json")


@contextlib.contextmanager
def _temp_dir_of_native_code(folder: Path):
    """Native code run inside (torch's C++ package loader) makes its temporary folders in ``folder``:
    it reads ``$TMPDIR``, not Python's :func:`tempfile.gettempdir`."""
    previous = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(folder)
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TMPDIR"]
        else:
            os.environ["TMPDIR"] = previous


# Imported before a CUDA AOTInductor package loads (:func:`before_cuda_package_load`).
CUDA_PACKAGE_PRELOADS = ("onnxruntime",)


def before_cuda_package_load() -> None:
    """Import onnxruntime (a dependency of pndm anyway) before torch loads a CUDA package's library.

    Without it, in a fresh process, the library crashed while torch created its model container
    (H100 and H200, torch 2.11+cu130; ``bench/pt2_load_probe.py``, docs/BENCHMARKS.md "GPU"): a call
    through a null pointer inside the ``std::regex`` that AOTInductor's ``parse_device_str`` compiles,
    in ``AOTInductorModelContainerCreateWithDevice``. Every loader crashed the same way (torch's
    package loader, ``aoti_load_package``, the container runner on the extracted files), also after
    creating a CUDA context, after cuBLAS/cuDNN work, or after importing torch's inductor, triton,
    onnx or diffusers; after importing onnxruntime it loaded and ran, which is why the export's and
    gpu-check's processes never crashed. Why it helps is not established (the crash looks like C++
    runtime locale state that onnxruntime's library sets up at import); the GPU test
    ``test_cuda_pt2_export_sample_with_the_graph_loop_and_check`` loads a package in a fresh process.
    """
    for name in CUDA_PACKAGE_PRELOADS:
        importlib.import_module(name)


def aoti_runner(data: bytes, source_sha256: str, device):
    """(runner, private folder or None) for the AOTInductor package whose checked bytes are ``data``.

    ``torch._inductor.aoti_load_package`` imports the whole compiler stack (seconds) and extracts
    the package into a new temporary folder on every load. On the CPU the package's compiled
    library (weights included) is extracted from ``data`` once into the cache entry keyed by
    ``source_sha256`` (the hash of ``data``, checked by the caller) and the torch version, and
    loaded from there with torch's C++ runner. On CUDA (kernels in separate cubin files), or when the
    library is not all the package holds (weights in ``data/weights/`` or a ``*_weights.blob`` beside
    the library, which that runner cannot find: it crashed), a private copy of ``data`` is loaded by
    torch's C++ package loader (no inductor import; single-threaded runs, as a CUDA graph capture
    needs). That loader extracts the package into a folder of its own under ``$TMPDIR``, which it
    removes when the runner is deleted but leaves behind when loading fails, so it extracts into the
    private folder; the caller removes the private folder when done. The runner is called as
    ``run([x, t]) -> [eps]``.

    Before a CUDA package loads, :func:`before_cuda_package_load` imports onnxruntime (see there).
    """
    import io
    import zipfile

    import torch

    with zipfile.ZipFile(io.BytesIO(data)) as package:
        names = package.namelist()
    payload = [m for m in names if AOTI_MODEL_DIR in m and not m.endswith(AOTI_SOURCE_SUFFIXES)]
    weights_apart = any("/data/weights/" in f"/{m}" or "/data/constants/" in f"/{m}" for m in names)
    if device.type == "cuda" or len(payload) != 1 or not payload[0].endswith(".so") or weights_apart:
        return _private_package_loader(data, device)
    key = f"{source_sha256}-torch{torch.__version__}"

    def build(folder: Path) -> None:
        with zipfile.ZipFile(io.BytesIO(data)) as package, package.open(payload[0]) as source:
            with open(folder / "model.so", "wb") as target:
                shutil.copyfileobj(source, target, 1 << 20)

    try:
        folder, _ = cached_folder("aoti", key, build)
    except OSError as error:  # the cache's disk, not the package: load a private copy instead
        runner = _private_package_loader(data, device)
        cache_unavailable("aoti", key, error)
        return runner
    return torch._C._aoti.AOTIModelContainerRunnerCpu(str(folder / "model.so"), 1), None


def _private_package_loader(data: bytes, device):
    """(torch's C++ package loader for a private copy of ``data``, that copy's folder): see
    :func:`aoti_runner`."""
    import torch

    if device.type == "cuda":
        before_cuda_package_load()
    private = Path(tempfile.mkdtemp(prefix="pndm-aoti-"))
    try:
        (private / "unet.pt2").write_bytes(data)
        index = device.index if device.type == "cuda" and device.index is not None else -1
        with _temp_dir_of_native_code(private):
            loader = torch._C._aoti.AOTIModelPackageLoader(str(private / "unet.pt2"), "model", True, 1, index)
        return loader, private
    except BaseException:
        shutil.rmtree(private, ignore_errors=True)
        raise
