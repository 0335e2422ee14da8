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
:mod:`pndm.export.manifest`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pndm.errors import EngineError
from pndm.export.manifest import MANIFEST_NAME, engine_entry, read_manifest
from pndm.fileio import sha256_file
from pndm.runtime.engines.base import Engine, EngineInfo

ENGINE_KINDS = {".onnx": "onnx", ".plan": "tensorrt", ".pt2": "aoti"}
DEFAULT_ENGINE = "unet.onnx"


def resolve_device(device: str | torch.device | None, kind: str | None = None) -> torch.device:
    """``auto``/None -> CUDA when torch sees a GPU (and, for ONNX, ORT has its CUDA provider), else CPU."""
    if device not in (None, "auto"):
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise EngineError("--device cuda was asked for but torch sees no CUDA device: use --device cpu")
        return device
    if not torch.cuda.is_available():
        return torch.device("cpu")
    if kind == "onnx":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return torch.device("cpu")
    return torch.device("cuda")


def engine_info(engine_path: Path, manifest: dict) -> EngineInfo:
    """What the manifest says about one of its engine files.

    Refuses files the manifest does not list, of another kind, or whose SHA-256 differs.
    """
    entry = engine_entry(manifest, engine_path)
    expected_kind = ENGINE_KINDS[engine_path.suffix]
    if entry.get("kind") != expected_kind:
        raise EngineError(
            f"the manifest says {engine_path.name} is a {entry.get('kind')!r} engine, but the file type is "
            f"{expected_kind!r}: the manifest does not belong to this file, re-export"
        )
    expected_hash = entry.get("sha256")
    if expected_hash and sha256_file(engine_path) != expected_hash:
        raise EngineError(
            f"{engine_path} does not match the SHA-256 in its manifest: the file is truncated, corrupt "
            "or was replaced; re-export it with pndm-export build"
        )
    image, schedule, batch = manifest["image"], manifest["schedule"], manifest["batch"]
    return EngineInfo(
        path=str(engine_path),
        image_shape=(int(image["channels"]), int(image["height"]), int(image["width"])),
        schedule_name=schedule["name"],
        T=int(schedule["T"]),
        batch_range=(int(batch["min"]), int(batch["max"])),
        precision=entry.get("precision", "fp32"),
        manifest=manifest,
    )


def io_names(manifest: dict) -> tuple[tuple[str, str], str]:
    """((x name, t name), eps name) from the manifest's ``io`` section."""
    inputs = [i["name"] for i in manifest["io"]["inputs"]]
    outputs = [o["name"] for o in manifest["io"]["outputs"]]
    if len(inputs) != 2 or len(outputs) != 1:
        raise EngineError(
            f"the manifest lists inputs {inputs} and outputs {outputs}; an eps engine has (x, t) -> eps"
        )
    return (inputs[0], inputs[1]), outputs[0]


def load_torch_model(source: str | Path, device="auto") -> Engine:
    """The PyTorch fp32 model behind a checkpoint path, diffusers directory or model name."""
    from pndm.models import load

    model, spec = load(str(source))
    return torch_engine(model, spec, source, device)


def torch_engine(model, spec, source: str | Path, device="auto") -> Engine:
    """A loaded model (with its ModelSpec) as an fp32 PyTorch engine."""
    from pndm.runtime.engines.torch_engine import TORCH_BATCH_RANGE, TorchEngine

    info = EngineInfo(
        path=str(source),
        image_shape=tuple(spec.image_shape),
        schedule_name=spec.schedule,
        T=int(spec.T),
        batch_range=TORCH_BATCH_RANGE,
        precision="fp32",
        manifest=None,
    )
    return TorchEngine(info, resolve_device(device), model)


def load_engine(
    path: str | Path,
    device: str | torch.device | None = "auto",
    *,
    cuda_graph: bool = True,
    threads: int | None = None,
) -> Engine:
    """Load an engine file, engine directory, checkpoint or model name as an eps callable (see module doc).

    ``cuda_graph``: TensorRT only. ``threads``: ONNX Runtime's intra-op threads on the CPU
    (default: one per core); the torch and AOTInductor backends use torch's thread count.
    """
    path = Path(path)
    if path.is_dir() and (path / MANIFEST_NAME).is_file():
        path = path / DEFAULT_ENGINE
    kind = ENGINE_KINDS.get(path.suffix)
    if kind is None:
        return load_torch_model(path, device)
    if not path.is_file():
        raise EngineError(f"engine file not found: {path}")
    manifest = read_manifest(path)
    info = engine_info(path, manifest)
    if kind == "aoti":
        from pndm.runtime.engines.aoti_engine import AotiEngine

        # A package is compiled for one device type: "auto" means the one it was built for.
        built_for = engine_entry(manifest, path).get("device", "cpu")
        dev = resolve_device(built_for if device in (None, "auto") else device)
        if dev.type != torch.device(built_for).type:
            raise EngineError(f"{path} was compiled for {built_for}, not {dev}: use --device {built_for}")
        return AotiEngine(info, dev)
    dev = resolve_device(device, kind)
    inputs, output = io_names(manifest)
    if kind == "onnx":
        from pndm.runtime.engines.ort_engine import OrtEngine

        return OrtEngine(info, dev, input_names=inputs, output_name=output, threads=threads)
    from pndm.runtime.engines.trt_engine import TrtEngine

    return TrtEngine(info, dev, input_names=inputs, output_name=output, cuda_graph=cuda_graph)
