"""The engine format shared by export, runtime and checker: ``manifest.json`` beside the engine files.

One neutral module (no torch, no export or runtime imports) owns what an export directory is:

- the typed manifest (:class:`Manifest` and its parts), format ``pndm-engine/2``; ``pndm-engine/1``
  files are still read (as epsilon models with a named schedule);
- the I/O spec of an engine: inputs ``x`` (B, C, H, W) and ``t`` (B,) float32, plus ``class_labels``
  int64 (B,) when the model is class-conditional; one float32 output of x's shape;
- engine file names per kind and precision (:func:`engine_file_name`);
- SHA-256 checks (an entry without ``sha256`` is refused);
- read / validate / write (atomic), and :func:`merge` on re-export: a new export keeps the older
  engines of the same model that are still on disk, and drops entries whose file is gone.

The schema is documented in docs/CONTRACTS.md. Every problem is an :class:`EngineError` naming the
file and the fix in one line.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pndm.errors import EngineError, PndmError
from pndm.fileio import atomic_write_text, sha256_file
from pndm.schedule_spec import ScheduleSpec

FORMAT = "pndm-engine/2"
FORMAT_V1 = "pndm-engine/1"
MANIFEST_NAME = "manifest.json"
ENGINE_KINDS = ("onnx", "aoti", "tensorrt")
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8")
SOURCE_KINDS = ("default", "named", "checkpoint", "random", "diffusers", "module")
PREDICTIONS = ("epsilon", "v_prediction", "sample")
SUFFIX_KINDS = {".onnx": "onnx", ".pt2": "aoti", ".plan": "tensorrt"}
KIND_SUFFIXES = {kind: suffix for suffix, kind in SUFFIX_KINDS.items()}
VERSIONED_PACKAGES = ("torch", "onnx", "onnxruntime", "tensorrt")
X, T_INPUT, CLASS_LABELS, OUTPUT = "x", "t", "class_labels", "eps"


def engine_file_name(kind: str, precision: str, *, cpu_form: bool = False, device: str = "cpu") -> str:
    """The file name of an engine: ``unet.onnx`` (fp32 ONNX), ``unet.<precision>.onnx``,
    ``unet.int8-cpu.onnx`` (the CPU form of int8), ``unet.<precision>.pt2`` (CPU package),
    ``unet.<precision>.cuda.pt2`` (CUDA package), ``unet.<precision>.plan``."""
    if kind not in ENGINE_KINDS or precision not in PRECISIONS:
        raise EngineError(f"no engine file name for kind {kind!r} and precision {precision!r}")
    if kind == "onnx" and precision == "fp32":
        return "unet.onnx"
    form = "-cpu" if cpu_form else ""
    if kind == "aoti" and device != "cpu":
        form = f".{device}"
    return f"unet.{precision}{form}{KIND_SUFFIXES[kind]}"


def kind_of(path: str | Path) -> str | None:
    """The engine kind a file name stands for (by suffix), None if it is no engine file."""
    return SUFFIX_KINDS.get(Path(path).suffix)


def _fail(where: str, problem: str) -> EngineError:
    return EngineError(f"{where}: {problem}; re-export the engine with `pndm-export build`")


def _require(condition: bool, where: str, problem: str) -> None:
    if not condition:
        raise _fail(where, problem)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _split(data: Any, where: str, section: str, known: tuple[str, ...]) -> tuple[dict, dict]:
    """(known fields, the rest) of a JSON object; the rest is kept so writers of newer fields round-trip."""
    _require(isinstance(data, dict), where, f"missing or malformed {section!r} section")
    return ({k: data[k] for k in known if k in data}, {k: v for k, v in data.items() if k not in known})


def _with_extra(fields: dict, extra: dict) -> dict:
    return {**{k: v for k, v in fields.items() if v is not None}, **extra}


def _schedule(data: Any, where: str) -> ScheduleSpec:
    """``schedule``: :class:`pndm.schedule_spec.ScheduleSpec`'s object, with ``name`` and ``T`` required."""
    _require(isinstance(data, dict) and "name" in data and "T" in data, where, "schedule needs name and T")
    try:
        return ScheduleSpec.from_dict(data, "schedule")
    except PndmError as exc:
        raise _fail(where, str(exc)) from None


@dataclass
class Source:
    """``model.source``: where the exported weights came from, with the hash of every file the
    reference needs (``path``/``sha256``: the weights; ``spec``: a user module's "module:factory")."""

    kind: str
    name: str | None = None
    path: str | None = None
    sha256: str | None = None
    spec: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "path": self.path, "sha256": self.sha256,
                **({"spec": self.spec} if self.spec is not None else {}), **self.extra}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Source:
        known, extra = _split(data, where, "model.source", ("kind", "name", "path", "sha256", "spec"))
        _require(known.get("kind") in SOURCE_KINDS, where,
                 f"model.source.kind must be one of {', '.join(SOURCE_KINDS)}")
        return cls(**known, extra=extra)


@dataclass
class ModelInfo:
    """``model``: architecture and config, weights source, what the network predicts, classes, and
    the notes of its loading (e.g. a diffusers scheduler's sampling settings that pndm-run does not
    apply by default)."""

    architecture: str
    config: dict[str, Any]
    source: Source
    prediction: str = "epsilon"
    num_classes: int | None = None
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"architecture": self.architecture, "config": self.config, "source": self.source.to_dict(),
                "prediction": self.prediction, "num_classes": self.num_classes,
                **({"notes": list(self.notes)} if self.notes else {}), **self.extra}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> ModelInfo:
        known, extra = _split(data, where, "model",
                              ("architecture", "config", "source", "prediction", "num_classes", "notes"))
        _require(isinstance(known.get("architecture"), str), where, "model.architecture is missing")
        _require(isinstance(known.get("config"), dict), where, "model.config is missing")
        source = Source.from_dict(known.get("source"), where)
        prediction = known.get("prediction") or "epsilon"
        _require(prediction in PREDICTIONS, where,
                 f"model.prediction must be one of {', '.join(PREDICTIONS)}")
        num_classes = known.get("num_classes")
        _require(num_classes is None or _positive_int(num_classes), where,
                 "model.num_classes must be a positive integer or null")
        notes = known.get("notes") or []
        _require(isinstance(notes, list) and all(isinstance(n, str) for n in notes), where,
                 "model.notes must be a list of strings")
        return cls(known["architecture"], known["config"], source, prediction, num_classes, notes, extra)


@dataclass
class TensorSpec:
    name: str
    dtype: str
    shape: list[Any]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass
class IOSpec:
    """``io``: engine inputs ``x``, ``t`` (and ``class_labels`` for class-conditional models), one output."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    @classmethod
    def for_image(cls, image_shape: tuple[int, int, int], num_classes: int | None = None) -> IOSpec:
        image = ["batch", *image_shape]
        inputs = [TensorSpec(X, "float32", image), TensorSpec(T_INPUT, "float32", ["batch"])]
        if num_classes is not None:
            inputs.append(TensorSpec(CLASS_LABELS, "int64", ["batch"]))
        return cls(inputs, [TensorSpec(OUTPUT, "float32", list(image))])

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.inputs)

    @property
    def output_name(self) -> str:
        return self.outputs[0].name

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": [i.to_dict() for i in self.inputs], "outputs": [o.to_dict() for o in self.outputs]}

    @classmethod
    def from_dict(cls, data: Any, where: str, num_classes: int | None) -> IOSpec:
        _require(isinstance(data, dict), where, "missing or malformed 'io' section")
        sides = {}
        for side in ("inputs", "outputs"):
            entries = data.get(side)
            ok = isinstance(entries, list) and all(
                isinstance(e, dict) and isinstance(e.get("name"), str) and isinstance(e.get("shape"), list)
                for e in entries)
            _require(ok, where, f"io.{side} must be a list of {{name, dtype, shape}}")
            sides[side] = [TensorSpec(e["name"], e.get("dtype", "float32"), e["shape"]) for e in entries]
        names = [X, T_INPUT] + ([CLASS_LABELS] if num_classes is not None else [])
        _require([i.name for i in sides["inputs"]] == names, where, f"io.inputs must be named {names}")
        _require(len(sides["outputs"]) == 1, where, "io.outputs must hold one output")
        return cls(sides["inputs"], sides["outputs"])


@dataclass
class BatchSpec:
    min: int
    opt: int
    max: int

    def to_dict(self) -> dict[str, int]:
        return {"min": self.min, "opt": self.opt, "max": self.max}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> BatchSpec:
        known, _ = _split(data, where, "batch", ("min", "opt", "max"))
        _require(all(_positive_int(known.get(k)) for k in ("min", "opt", "max"))
                 and known["min"] <= known["opt"] <= known["max"], where,
                 "batch must hold 1 <= min <= opt <= max")
        return cls(**known)


@dataclass
class EngineEntry:
    """``engines[<file name>]``: kind, precision, sha256 (required), device, int8/fp8 ``quantization``;
    ``extra`` holds what a backend adds (opset, TensorRT version, GPU, build time, ...)."""

    kind: str
    precision: str
    sha256: str
    device: str | None = None
    quantization: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return _with_extra({"kind": self.kind, "precision": self.precision, "sha256": self.sha256,
                            "device": self.device, "quantization": self.quantization}, self.extra)

    @classmethod
    def from_dict(cls, data: Any, where: str, name: str) -> EngineEntry:
        label = f"engines[{name!r}]"
        known, extra = _split(data, where, label, ("kind", "precision", "sha256", "device", "quantization"))
        _require(known.get("kind") in ENGINE_KINDS, where,
                 f"{label}.kind must be one of {', '.join(ENGINE_KINDS)}")
        _require(known.get("precision") in PRECISIONS, where,
                 f"{label}.precision must be one of {', '.join(PRECISIONS)}")
        _require(isinstance(known.get("sha256"), str) and len(known["sha256"]) == 64, where,
                 f"{label} has no sha256, so the file cannot be checked (refused)")
        _require(kind_of(name) == known["kind"], where,
                 f"{label}.kind is {known['kind']!r} but the file type is {kind_of(name)!r}")
        return cls(**known, extra=extra)


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def tool_versions() -> dict[str, str | None]:
    """Versions of pndm and the tools that made the engines (None for what is not installed)."""
    from pndm import __version__

    return {"pndm": __version__, **{name: package_version(name) for name in VERSIONED_PACKAGES}}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Manifest:
    """``manifest.json`` of an export directory (docs/CONTRACTS.md)."""

    model: ModelInfo
    image_shape: tuple[int, int, int]
    schedule: ScheduleSpec
    io: IOSpec
    batch: BatchSpec
    engines: dict[str, EngineEntry] = field(default_factory=dict)
    verification: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, Any] = field(default_factory=tool_versions)
    created: str = field(default_factory=_now)
    reference: str | None = None
    calibration: dict[str, Any] | None = None
    format: str = FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def new(cls, *, model: ModelInfo, image_shape: tuple[int, int, int], schedule: ScheduleSpec,
            batch: BatchSpec) -> Manifest:
        """A manifest with no engines yet, its I/O spec derived from the image shape and classes."""
        return cls(model=model, image_shape=tuple(image_shape), schedule=schedule,
                   io=IOSpec.for_image(tuple(image_shape), model.num_classes), batch=batch)

    def entry(self, engine_path: str | Path) -> EngineEntry:
        """The ``engines`` entry for ``engine_path``; EngineError if the manifest does not list it."""
        name = Path(engine_path).name
        if name not in self.engines:
            listed = ", ".join(self.engines) or "none"
            raise EngineError(f"{name}: not listed in its manifest (engines: {listed}); re-export it")
        return self.engines[name]

    def identity(self) -> dict[str, Any]:
        """What makes two exports the same model: engines of equal identity may share a manifest."""
        return {"model": self.model.to_dict(), "image": list(self.image_shape),
                "schedule": self.schedule.to_dict(), "io": self.io.to_dict(), "batch": self.batch.to_dict()}

    def to_dict(self) -> dict[str, Any]:
        channels, height, width = self.image_shape
        data = {
            "format": FORMAT,
            "model": self.model.to_dict(),
            "image": {"channels": channels, "height": height, "width": width},
            "schedule": self.schedule.to_dict(),
            "io": self.io.to_dict(),
            "batch": self.batch.to_dict(),
            "engines": {name: entry.to_dict() for name, entry in self.engines.items()},
            "verification": self.verification,
            "versions": self.versions,
            "created": self.created,
        }
        if self.reference is not None:
            data["reference"] = self.reference
        if self.calibration is not None:
            data["calibration"] = self.calibration
        return {**data, **self.extra}

    @classmethod
    def from_dict(cls, data: Any, where: str = MANIFEST_NAME) -> Manifest:
        """Validate a parsed ``manifest.json`` (format /2, or /1 read as an epsilon model)."""
        _require(isinstance(data, dict), where, "the manifest must be a JSON object")
        fmt = data.get("format")
        _require(fmt in (FORMAT, FORMAT_V1), where, f"format is {fmt!r}, expected {FORMAT!r}")
        known = ("format", "model", "image", "schedule", "io", "batch", "engines", "verification", "versions",
                 "created", "reference", "calibration")
        for key in ("engines", "versions"):
            _require(isinstance(data.get(key), dict), where, f"missing or malformed {key!r} section")
        model = ModelInfo.from_dict(data.get("model"), where)
        image, _ = _split(data.get("image"), where, "image", ("channels", "height", "width"))
        for key in ("channels", "height", "width"):
            _require(_positive_int(image.get(key)), where, f"image.{key} must be a positive integer")
        return cls(
            model=model,
            image_shape=(image["channels"], image["height"], image["width"]),
            schedule=_schedule(data.get("schedule"), where),
            io=IOSpec.from_dict(data.get("io"), where, model.num_classes),
            batch=BatchSpec.from_dict(data.get("batch"), where),
            engines={name: EngineEntry.from_dict(entry, where, name)
                     for name, entry in data["engines"].items()},
            verification=dict(data.get("verification") or {}),
            versions=dict(data["versions"]),
            created=str(data.get("created", "")),
            reference=data.get("reference"),
            calibration=data.get("calibration"),
            format=fmt,
            extra={k: v for k, v in data.items() if k not in known},
        )

    def validate(self, where: str = MANIFEST_NAME) -> Manifest:
        """Check this manifest as a reader would (a round trip through JSON)."""
        Manifest.from_dict(json.loads(json.dumps(self.to_dict())), where)
        return self


def manifest_path(dir_or_engine_path: str | Path) -> Path:
    """``DIR/manifest.json`` for an export directory or for any engine file inside one."""
    path = Path(dir_or_engine_path)
    return path / MANIFEST_NAME if path.is_dir() else path.parent / MANIFEST_NAME


def read_manifest(dir_or_engine_path: str | Path) -> Manifest:
    """The validated manifest of an export directory or of the engine file ``dir_or_engine_path``."""
    path = manifest_path(dir_or_engine_path)
    if not path.is_file():
        raise EngineError(f"{path}: no manifest beside the engine; export it with `pndm-export build`")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        first = str(exc).splitlines()[0]
        raise EngineError(f"{path}: unreadable manifest ({first}); re-export the engine") from None
    return Manifest.from_dict(data, str(path))


def write_manifest(directory: str | Path, manifest: Manifest) -> Path:
    """Validate and write ``DIR/manifest.json`` atomically; return its path."""
    path = Path(directory) / MANIFEST_NAME
    manifest.validate(str(path))
    atomic_write_text(path, json.dumps(manifest.to_dict(), indent=2) + "\n")
    return path


def check_engine_file(engine_path: str | Path, manifest: Manifest) -> EngineEntry:
    """The manifest's entry for ``engine_path`` once the file's kind and SHA-256 match it."""
    engine_path = Path(engine_path)
    entry = manifest.entry(engine_path)
    if entry.kind != kind_of(engine_path):
        raise EngineError(
            f"the manifest says {engine_path.name} is a {entry.kind!r} engine, but the file type is "
            f"{kind_of(engine_path)!r}: the manifest does not belong to this file, re-export"
        )
    if sha256_file(engine_path) != entry.sha256:
        raise EngineError(
            f"{engine_path} does not match the SHA-256 in its manifest: the file is truncated, corrupt "
            "or was replaced; re-export it with pndm-export build"
        )
    return entry


def merge(old: Manifest | None, new: Manifest, directory: str | Path) -> tuple[Manifest, list[str]]:
    """The manifest to publish into ``directory`` over ``old``: ``new`` plus the older engines it keeps.

    An older engine is kept when it belongs to the same model (equal :meth:`Manifest.identity`), ``new``
    does not replace its file, and its file is still in ``directory`` with the recorded hash. Returns
    (merged manifest, names of older entries dropped).
    """
    if old is None:
        return new, []
    directory = Path(directory)
    same_model = old.identity() == new.identity()
    kept, dropped = {}, []
    for name, entry in old.engines.items():
        if name in new.engines:
            continue
        path = directory / name
        if same_model and path.is_file() and sha256_file(path) == entry.sha256:
            kept[name] = entry
        else:
            dropped.append(name)
    verification = {n: v for n, v in old.verification.items() if n in kept}
    merged = dataclasses.replace(new, engines={**kept, **new.engines},
                                 verification={**verification, **new.verification})
    return merged, dropped
