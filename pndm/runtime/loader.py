"""``load_engine(path, device=...)``: pick the backend from the file type, configure it from the manifest.

- ``.onnx``  -> ONNX Runtime (CUDA provider when asked for / available, else CPU)
- ``.plan``  -> TensorRT (CUDA only)
- ``.pt2``   -> AOTInductor package
- anything else (a checkpoint, a diffusers directory, ``default``, a model name) -> the PyTorch
  model in float32, through :func:`pndm.models.load`.
- an engine directory (holding ``manifest.json``) -> its fp32 ``unet.onnx``.

Engine files need the ``manifest.json`` written beside them by ``pndm-export``; its recorded
SHA-256 must match the file (a truncated or swapped file is refused before it is run), and the
file's inputs/outputs must match what the manifest says. The manifest is read and validated by
:mod:`pndm.engine_format`, which export and runtime share. ``.pt2`` packages and TensorRT plans
carry native code: they load only if this machine's pndm built them or ``trust=True``
(:mod:`pndm.trust`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from pndm.engine_format import (
    MANIFEST_NAME,
    IOSpec,
    Manifest,
    check_engine_file,
    kind_of,
    read_manifest,
)
from pndm.errors import EngineError
from pndm.runtime.engines.base import Engine, EngineInfo

DEFAULT_ENGINE = "unet.onnx"


def resolve_device(device: str | torch.device | None, kind: str | None = None) -> torch.device:
    """``auto``/None -> CUDA when torch sees a GPU (and, for ONNX, ORT has its CUDA provider), else CPU."""
    if device not in (None, "auto"):
        from pndm.validate import available_device

        return available_device(str(device))
    if not torch.cuda.is_available():
        return torch.device("cpu")
    if kind == "onnx":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return torch.device("cpu")
    return torch.device("cuda")


def engine_info(engine_path: Path, manifest: Manifest) -> EngineInfo:
    """What the manifest says about one of its engine files.

    Refuses files the manifest does not list, of another kind, or whose SHA-256 differs.
    """
    entry = check_engine_file(engine_path, manifest)
    return EngineInfo(
        path=str(engine_path),
        image_shape=tuple(manifest.image_shape),
        schedule=manifest.schedule,
        batch_range=(manifest.batch.min, manifest.batch.max),
        precision=entry.precision,
        io=manifest.io,
        manifest=manifest,
        sha256=entry.sha256,
        prediction=manifest.model.prediction,
    )


def load_torch_model(source: str | Path, device="auto", **load_options) -> Engine:
    """The PyTorch fp32 model behind a checkpoint path, diffusers directory or model name (opened);
    ``load_options`` go to :func:`pndm.models.load` (schedule/prediction overrides, allow_pickle)."""
    from pndm.models import load

    model, spec = load(str(source), **load_options)
    return torch_engine(model, spec, source, device)


def torch_engine(model, spec, source: str | Path, device="auto") -> Engine:
    """A loaded model with its ModelSpec as an opened fp32 PyTorch engine (schedule, prediction and
    class input from the spec)."""
    from pndm.runtime.engines.torch_engine import TORCH_BATCH_RANGE, TorchEngine

    image_shape = tuple(spec.image_shape)
    info = EngineInfo(
        path=str(source),
        image_shape=image_shape,
        schedule=spec.schedule_spec,
        batch_range=TORCH_BATCH_RANGE,
        precision="fp32",
        io=IOSpec.for_image(image_shape, spec.num_classes),
        manifest=None,
        prediction=spec.prediction,
    )
    return TorchEngine(info, resolve_device(device), model).open()


def open_engine(
    path: str | Path,
    manifest: Manifest,
    device: str | torch.device | None = "auto",
    *,
    cuda_graph: bool = True,
    threads: int | None = None,
    trust: bool = False,
) -> Engine:
    """The opened engine for the engine file ``path`` described by ``manifest`` (checked against it).

    ``trust``: load a ``.pt2`` / ``.plan`` this machine's pndm did not build (:mod:`pndm.trust`)."""
    path = Path(path)
    kind = kind_of(path)
    info = engine_info(path, manifest)
    if kind == "aoti":
        from pndm.runtime.engines.aoti_engine import AotiEngine

        # A package is compiled for one device type: "auto" means the one it was built for.
        built_for = manifest.entry(path).device or "cpu"
        dev = resolve_device(built_for if device in (None, "auto") else device)
        if dev.type != torch.device(built_for).type:
            raise EngineError(f"{path} was compiled for {built_for}, not {dev}: use device='{built_for}'")
        return AotiEngine(info, dev, trust=trust).open()
    dev = resolve_device(device, kind)
    if kind == "onnx":
        from pndm.runtime.engines.ort_engine import OrtEngine

        return OrtEngine(info, dev, threads=threads).open()
    from pndm.runtime.engines.trt_engine import TrtEngine

    return TrtEngine(info, dev, cuda_graph=cuda_graph, trust=trust).open()


def load_engine(
    path: str | Path,
    device: str | torch.device | None = "auto",
    *,
    cuda_graph: bool = True,
    threads: int | None = None,
    trust: bool = False,
) -> Engine:
    """Load an engine file, engine directory, checkpoint or model name as an opened eps callable
    (see module doc); use it as a context manager, or call ``close()``, to release it.

    ``cuda_graph``: TensorRT only. ``threads``: ONNX Runtime's intra-op threads on the CPU
    (default: one per core); the torch and AOTInductor backends use torch's thread count.
    ``trust``: load a ``.pt2`` package or TensorRT plan that this machine's pndm did not build
    (they carry native code; see :mod:`pndm.trust`).
    """
    path = Path(path)
    if path.is_dir() and (path / MANIFEST_NAME).is_file():
        path = path / DEFAULT_ENGINE
    if kind_of(path) is None:
        return load_torch_model(path, device)
    if path.is_dir():
        raise EngineError(f"{path} is a folder, not an engine file; give the engine file (or its folder)")
    if not path.is_file():
        raise EngineError(f"engine file not found: {path}")
    return open_engine(path, read_manifest(path), device, cuda_graph=cuda_graph, threads=threads, trust=trust)
