"""``manifest.json``: what the engines in an export directory are (format ``pndm-engine/1``).

The schema is the one in docs/CONTRACTS.md. ``pndm.runtime`` loads engines through
:func:`read_manifest`, which validates the file and names the first problem it finds.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
from pathlib import Path
from typing import Any

from pndm.errors import EngineError
from pndm.fileio import atomic_write_text

FORMAT = "pndm-engine/1"
MANIFEST_NAME = "manifest.json"
ENGINE_KINDS = ("onnx", "aoti", "tensorrt")
ENGINE_PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8")
SOURCE_KINDS = ("default", "named", "checkpoint", "random")
VERSIONED_PACKAGES = ("torch", "onnx", "onnxruntime", "tensorrt")


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def tool_versions() -> dict[str, str | None]:
    """Versions of pndm and the tools that made the engines (None for what is not installed)."""
    from pndm import __version__

    return {"pndm": __version__, **{name: package_version(name) for name in VERSIONED_PACKAGES}}


def io_description(image_shape: tuple[int, int, int]) -> dict[str, list[dict[str, Any]]]:
    """Engine inputs ``x`` (B, C, H, W), ``t`` (B,) and output ``eps`` (B, C, H, W), all float32."""
    image = ["batch", *image_shape]
    return {"inputs": [{"name": "x", "dtype": "float32", "shape": image},
                       {"name": "t", "dtype": "float32", "shape": ["batch"]}],
            "outputs": [{"name": "eps", "dtype": "float32", "shape": list(image)}]}


def new_manifest(*, architecture: str, config: dict, source: dict, image_shape: tuple[int, int, int],
                 schedule: str, T: int, batch: dict[str, int]) -> dict[str, Any]:
    """A manifest with no engines yet; the pipeline adds ``engines``, ``verification``, ``reference``."""
    channels, height, width = image_shape
    return {
        "format": FORMAT,
        "model": {"architecture": architecture, "config": config, "source": source},
        "image": {"channels": channels, "height": height, "width": width},
        "schedule": {"name": schedule, "T": T},
        "io": io_description(image_shape),
        "batch": dict(batch),
        "engines": {},
        "verification": {},
        "versions": tool_versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _require(condition: bool, where: str, problem: str) -> None:
    if not condition:
        raise EngineError(f"{where}: {problem}; re-export the engine with `pndm-export build`")


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def validate_manifest(manifest: Any, where: str = MANIFEST_NAME) -> dict[str, Any]:
    """Return ``manifest`` if it follows ``pndm-engine/1``; else raise EngineError naming the problem."""
    _require(isinstance(manifest, dict), where, "the manifest must be a JSON object")
    _require(manifest.get("format") == FORMAT, where,
             f"format is {manifest.get('format')!r}, expected {FORMAT!r}")
    for key in ("model", "image", "schedule", "io", "batch", "engines", "versions"):
        _require(isinstance(manifest.get(key), dict), where, f"missing or malformed {key!r} section")
    model = manifest["model"]
    _require(isinstance(model.get("architecture"), str), where, "model.architecture is missing")
    _require(isinstance(model.get("config"), dict), where, "model.config is missing")
    _require(isinstance(model.get("source"), dict) and model["source"].get("kind") in SOURCE_KINDS, where,
             f"model.source.kind must be one of {', '.join(SOURCE_KINDS)}")
    for key in ("channels", "height", "width"):
        _require(_is_positive_int(manifest["image"].get(key)), where,
                 f"image.{key} must be a positive integer")
    _require(isinstance(manifest["schedule"].get("name"), str), where, "schedule.name is missing")
    _require(_is_positive_int(manifest["schedule"].get("T")), where, "schedule.T must be a positive integer")
    batch = manifest["batch"]
    _require(all(_is_positive_int(batch.get(k)) for k in ("min", "opt", "max"))
             and batch["min"] <= batch["opt"] <= batch["max"], where,
             "batch must hold 1 <= min <= opt <= max")
    io = manifest["io"]
    for side, names in (("inputs", ["x", "t"]), ("outputs", ["eps"])):
        entries = io.get(side)
        named = [e.get("name") for e in entries if isinstance(e, dict)] if isinstance(entries, list) else None
        _require(named == names, where, f"io.{side} must be named {names}")
    for name, entry in manifest["engines"].items():
        _require(isinstance(entry, dict) and entry.get("kind") in ENGINE_KINDS, where,
                 f"engines[{name!r}].kind must be one of {', '.join(ENGINE_KINDS)}")
        _require(entry.get("precision") in ENGINE_PRECISIONS, where,
                 f"engines[{name!r}].precision must be one of {', '.join(ENGINE_PRECISIONS)}")
    return manifest


def manifest_path(dir_or_engine_path: str | Path) -> Path:
    """``DIR/manifest.json`` for an export directory or for any engine file inside one."""
    path = Path(dir_or_engine_path)
    return path / MANIFEST_NAME if path.is_dir() else path.parent / MANIFEST_NAME


def read_manifest(dir_or_engine_path: str | Path) -> dict[str, Any]:
    """The validated manifest of an export directory or of the engine file ``dir_or_engine_path``."""
    path = manifest_path(dir_or_engine_path)
    if not path.is_file():
        raise EngineError(f"{path}: no manifest beside the engine; export it with `pndm-export build`")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        first = str(exc).splitlines()[0]
        raise EngineError(f"{path}: unreadable manifest ({first}); re-export the engine") from None
    return validate_manifest(manifest, str(path))


def engine_entry(manifest: dict[str, Any], engine_path: str | Path) -> dict[str, Any]:
    """The ``engines`` entry for ``engine_path``; EngineError if the manifest does not list it."""
    name = Path(engine_path).name
    if name not in manifest["engines"]:
        listed = ", ".join(manifest["engines"]) or "none"
        raise EngineError(f"{name}: not listed in its manifest (engines: {listed}); re-export it")
    return manifest["engines"][name]


def write_manifest(directory: str | Path, manifest: dict[str, Any]) -> Path:
    """Validate and write ``DIR/manifest.json`` atomically; return its path."""
    path = Path(directory) / MANIFEST_NAME
    validate_manifest(manifest, str(path))
    atomic_write_text(path, json.dumps(manifest, indent=2) + "\n")
    return path
