"""AOTInductor engines: ``torch.export`` + AOTInductor package (``unet.bf16.pt2`` for the CPU,
``unet.<precision>.cuda.pt2`` for a CUDA GPU).

The module of :func:`pndm.export.precision.engine_module` (fp32, or weights in bf16/fp16 behind a
float32 interface) is exported with a dynamic batch axis and compiled ahead of time for one
device into a ``.pt2`` package that ``torch._inductor.aoti_load_package`` runs without Python model
code. On an AVX-512-BF16 CPU the bf16 package is about twice as fast as fp32 eager; a CUDA package
runs Inductor's Triton kernels and can be captured, with the solver updates, into one CUDA graph
(:mod:`pndm.runtime.graph_loop`).
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import torch
from torch import nn

from pndm.errors import PndmError
from pndm.export.batch import BatchRange
from pndm.export.onnx_export import example_inputs, quiet_exporter, trace
from pndm.export.precision import engine_module
from pndm.fileio import atomic_path

LOW_SPACE = 256 * 1024**2  # bytes: less than this free after a failed compile means the disk filled up


def full_disk(folders: list[Path]) -> Path | None:
    """The first of ``folders`` (each, or its nearest existing parent) with less than :data:`LOW_SPACE`
    free: torch's compile and packager report a full disk as a generic RuntimeError (a failed C++ compile,
    "unexpected pos" from the zip writer), so the free space says what happened."""
    for folder in folders:
        existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if existing is not None and shutil.disk_usage(existing).free < LOW_SPACE:
            return folder
    return None


def compile_aoti(model: nn.Module, image_shape: tuple[int, int, int], batch: BatchRange, path: Path,
                 precision: str = "bf16", device: str = "cpu", num_classes: int | None = None) -> Path:
    """Export and AOT-compile ``model`` at ``precision`` for ``device`` into the package ``path``
    (atomically). ``model`` is not moved: a copy goes to ``device``."""
    module = engine_module(model, precision)
    if device != "cpu":  # the mixed-precision wrapper holds its own copy; fp32 is the caller's model
        module = (copy.deepcopy(module) if module is model else module).to(device)
    inputs = tuple(value.to(device) for value in example_inputs(image_shape, num_classes=num_classes))
    with torch.no_grad(), quiet_exporter():
        program = trace(module, inputs, batch, num_classes)
        with atomic_path(path) as tmp:
            package = tmp.with_suffix(".pt2")  # the packager insists on the .pt2 suffix
            try:
                torch._inductor.aoti_compile_and_package(program, package_path=str(package))
                package.replace(tmp)
            except Exception as e:
                from torch._inductor.runtime.cache_dir_utils import cache_dir

                full = full_disk([package.parent, Path(cache_dir())])
                if full is None:
                    raise
                raise PndmError(f"no space left on device while compiling {Path(path).name} ({full} has less "
                                f"than {LOW_SPACE // 1024**2} MiB free); free space (TORCHINDUCTOR_CACHE_DIR "
                                "moves torch's compile folder) or choose another --out") from e
            finally:
                package.unlink(missing_ok=True)
    return Path(path)
