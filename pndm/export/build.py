"""The export pipeline behind ``pndm-export build``.

1. Load the model (:func:`pndm.models.load`) and check every option before any work.
2. Collect calibration pairs (x_t, t) and the fp32 model's eps along real solver trajectories.
3. Export ``unet.onnx`` (fp32) and verify it with the runtime's engine (ONNX Runtime, loaded through
   :func:`pndm.runtime.loader.open_engine`): relative L2 <= 1e-5 or fail.
4. Per ``--precision``: ``unet.fp16.onnx`` (precision policy checked, verified per t range),
   ``unet.bf16.pt2`` (AOTInductor, verified per t range), int8/fp8 Q/DQ graphs; with
   ``--pt2-device cuda`` instead ``unet.<precision>.cuda.pt2`` (fp32/fp16/bf16, verified on the GPU).
5. ``unet.<precision>.plan`` when TensorRT and a CUDA device are present (``--trt auto|on|off``).
6. ``manifest.json`` (written last; :func:`pndm.engine_format.merge` keeps the engines of an earlier
   export of the same model), ``calibration.safetensors``, and for exports of random weights
   ``reference.safetensors`` + ``.json`` (the weights the engines hold, for the checker).

Everything is written into a hidden staging folder beside DIR and published by one folder swap
(:mod:`pndm.export.publish`): DIR is the previous complete folder or the new complete one, never a
mix, whatever fails or kills the export; one export at a time writes into DIR. Files from older
runs that this run does not produce are kept.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from pndm.calibration import CalibrationSet, check_method, collect_pairs, forward_process_pairs, save_pairs
from pndm.engine_format import (
    BatchSpec,
    EngineEntry,
    Manifest,
    ModelInfo,
    Source,
    engine_file_name,
    merge,
    read_manifest,
    write_manifest,
)
from pndm.errors import EngineError, PndmError
from pndm.export import tensorrt as trt_build
from pndm.export.aoti import compile_aoti
from pndm.export.batch import DEFAULT_BATCH, BatchRange, parse_batch
from pndm.export.fp16_graph import convert_to_fp16
from pndm.export.onnx_export import DEFAULT_OPSET, check_opset, export_onnx, save_onnx
from pndm.export.precision import PRECISIONS, check_onnx_policy, require_export_accuracy
from pndm.export.publish import staged_export
from pndm.export.quantize import (
    CALIBRATORS,
    DEFAULT_CALIBRATOR,
    PLACEMENTS,
    QUANT_PRECISIONS,
    check_quant_opset,
    quantize_engines,
)
from pndm.export.trajectory_guard import GUARD_SEEDS, trajectory_guard
from pndm.export.verify import (
    compare,
    evaluate,
    format_table,
    onnx_native,
    require_finite,
    require_fp32_agreement,
)
from pndm.fileio import check_replaceable, sha256_file
from pndm.trust import record_built

TRT_MODES = ("auto", "on", "off")
# The AOTInductor packages written per device (--pt2-device): on the CPU the bf16 engine; on CUDA any
# torch-level precision (unet.<precision>.cuda.pt2).
PT2_PRECISIONS = {"cpu": ("bf16",), "cuda": ("fp32", "fp16", "bf16")}
CALIBRATION_FILE = "calibration.safetensors"
REFERENCE_FILE = "reference.safetensors"


@dataclass(frozen=True)
class ExportOptions:
    """What ``pndm-export build`` was asked for (CLI defaults)."""

    out: Path
    precision: str = "fp32"
    batch: BatchRange = field(default_factory=lambda: parse_batch(DEFAULT_BATCH))
    opset: int = DEFAULT_OPSET
    trt: str = "auto"
    timing_cache: Path | None = None
    lean: bool = False
    trt_optimization_level: int = trt_build.DEFAULT_OPTIMIZATION_LEVEL
    calibration_method: str = "ddim"
    calibration_steps: int = 10
    calibration_count: int = 2
    seed: int = 0
    calibrator: str = DEFAULT_CALIBRATOR
    keep_float: tuple[str, ...] = ()
    placements: tuple[str, ...] = PLACEMENTS
    pt2_device: str = "cpu"


@dataclass
class ExportResult:
    out: Path
    manifest: Manifest
    files: list[str]
    table: str
    notes: list[str]


def check_options(options: ExportOptions) -> str | None:
    """Fail fast on bad options; return why a TensorRT plan will be skipped (None if it will be built)."""
    if options.precision not in PRECISIONS:
        raise PndmError(f"unknown precision {options.precision!r}; choose one of {', '.join(PRECISIONS)}")
    if options.calibrator not in CALIBRATORS:
        raise PndmError(f"unknown calibrator {options.calibrator!r}; choose one of {', '.join(CALIBRATORS)}")
    if options.keep_float and options.precision not in QUANT_PRECISIONS:
        raise PndmError(f"--keep-float applies to --precision int8 or fp8, not {options.precision}")
    if options.precision in QUANT_PRECISIONS:
        check_quant_opset(options.precision, options.opset)
    if not options.placements or any(p not in PLACEMENTS for p in options.placements):
        raise PndmError(f"int8 placements must be among {', '.join(PLACEMENTS)}, got {options.placements}")
    check_pt2_device(options.pt2_device, options.precision)
    check_method(options.calibration_method)
    if options.trt not in TRT_MODES:
        raise PndmError(f"unknown TensorRT mode trt={options.trt!r}; choose one of {', '.join(TRT_MODES)}")
    check_opset(options.opset)
    check_out_dir(Path(options.out))
    if options.trt == "off":
        return "trt=off"
    _, reason = trt_build.import_builder()
    if reason is not None and options.trt == "on":
        raise PndmError(f"trt=on: cannot build a TensorRT plan: {reason}; use trt=auto or trt=off to skip it")
    return reason


def check_pt2_device(device: str, precision: str) -> None:
    """Refuse a ``--pt2-device`` that is unknown, that has no package at ``precision``, or that this
    machine does not have (a CUDA package is compiled on, and for, the GPU that will run it)."""
    if device not in PT2_PRECISIONS:
        raise PndmError(f"unknown --pt2-device {device!r}; choose one of {', '.join(PT2_PRECISIONS)}")
    if device == "cuda":
        if precision not in PT2_PRECISIONS["cuda"]:
            raise PndmError(f"--pt2-device cuda compiles {', '.join(PT2_PRECISIONS['cuda'])} packages, "
                            f"not {precision} (int8/fp8 engines are ONNX and TensorRT); choose another "
                            "--precision")
        if not torch.cuda.is_available():
            raise PndmError(f"--pt2-device cuda: torch {torch.__version__} sees no CUDA device; compile the "
                            "CUDA package on the GPU machine that will run it")


def check_out_dir(out: Path) -> None:
    """Refuse an ``out`` that is a file or a mount point, or whose parent (nearest existing one) is not a
    writable folder: the export is staged beside ``out`` and swapped in (:mod:`pndm.export.publish`)."""
    out = out.absolute()
    if out.exists() and not out.is_dir():
        raise PndmError(f"output directory {out} is a file, not a directory; choose a directory as out=DIR")
    check_replaceable(out)
    existing = next(p for p in out.parents if p.exists())
    if not existing.is_dir():
        problem = f"{existing} is a file"
        raise PndmError(f"output directory {out} is not writable ({problem}); choose another out=DIR")
    if not os.access(existing, os.W_OK | os.X_OK):
        read_only = os.statvfs(existing).f_flag & os.ST_RDONLY
        problem = "read-only file system" if read_only else "permission denied"
        raise PndmError(f"output directory {out} is not writable ({problem}); choose another out=DIR")


def check_keep_float(model: nn.Module, names: tuple[str, ...]) -> None:
    """Refuse, before any work, a ``--keep-float`` name that can be no layer of ``model``. A layer is named
    after the module path of its weight or is a node of the ONNX graph (``node_...``); the names are
    checked against the graph itself once it is exported (:func:`pndm.export.quantize.resolve_keep_float`)."""
    layers = [key.removesuffix(".weight") for key in model.state_dict() if key.endswith(".weight")]
    for name in names:
        if name not in layers and not name.startswith("node_"):
            raise PndmError(f"--keep-float {name!r} is no layer of this model; give module paths of layers "
                            f"with weights, like {', '.join(layers[:3])}")


class _Stages:
    """Timed, one-line progress messages on stderr."""

    def __init__(self, log: Callable[[str], None]):
        self.log, self.start = log, time.perf_counter()

    def __call__(self, message: str) -> None:
        self.log(f"[{time.perf_counter() - self.start:6.1f}s] {message}")


def _verify(path: Path, manifest: Manifest, pairs: CalibrationSet, labels=None) -> dict:
    """Run the staged engine ``path`` as ``pndm-run`` would (on the device it was built for, else the CPU)
    on the calibration pairs; the errors of
    its native output (``pairs.eps``: pndm.export.model_calls)."""
    from pndm.runtime.loader import open_engine

    name = path.name
    with open_engine(path, manifest, manifest.engines[name].device or "cpu") as engine:
        candidate = evaluate(engine.native, pairs.x, pairs.t, manifest.batch.max, labels)
    stats = compare(candidate, pairs.eps, pairs.t, manifest.schedule.T)
    precision = manifest.engines[name].precision
    if precision == "fp32":
        require_fp32_agreement(name, stats)
    require_finite(name, candidate)
    if precision != "fp32":
        require_export_accuracy(name, precision, stats, manifest.schedule.T)
    return stats


def _built(path: Path) -> str:
    """SHA-256 of a code-carrying engine this export just built, recorded as built here (pndm.trust)."""
    digest = sha256_file(path)
    record_built(digest, path)
    return digest


def previous_manifest(out: Path) -> Manifest | None:
    """The manifest an earlier export left in ``out`` (None if there is none or it is unreadable)."""
    try:
        return read_manifest(out) if (out / "manifest.json").is_file() else None
    except EngineError:
        return None


def _verify_graph(graph, pairs: CalibrationSet, subset, manifest: Manifest) -> dict:
    """Errors of an in-memory ONNX graph on the calibration pairs (``subset``: indices, None for all)."""
    if subset is not None:
        index = torch.as_tensor(subset)
        pairs = CalibrationSet(pairs.x[index], pairs.t[index], pairs.eps[index])
    candidate = evaluate(onnx_native(graph), pairs.x, pairs.t, manifest.batch.max)
    return compare(candidate, pairs.eps, pairs.t, manifest.schedule.T)


def build_engines(model: nn.Module, spec, options: ExportOptions, *,
                  log: Callable[[str], None] = print) -> ExportResult:
    """Run the pipeline (module docstring) for ``model`` described by ``spec`` (a ModelSpec)."""
    from pndm.export.model_calls import ModelCalls
    from pndm.models import save_checkpoint

    trt_skip = check_options(options)
    check_keep_float(model, options.keep_float)
    stage = _Stages(log)
    out = Path(options.out)
    dropped_engines: set[str] = set()  # older engines the new manifest does not list: not published again
    with staged_export(out, dropped_engines) as staging:
        files, notes = [], list(spec.notes)
        image_shape = tuple(spec.image_shape)
        manifest = Manifest.new(
            model=ModelInfo(architecture=spec.architecture, config=spec.config,
                            source=Source.from_dict(spec.manifest_source(), "model spec"),
                            prediction=spec.prediction, num_classes=spec.num_classes, notes=list(spec.notes)),
            image_shape=image_shape,
            schedule=spec.schedule_spec,
            batch=BatchSpec(**options.batch.to_dict()))
        model = model.float().eval()
        calls = ModelCalls(model, spec, options.calibration_count)

        stage(f"collecting calibration pairs ({options.calibration_method}, "
              f"{options.calibration_steps} steps, {options.calibration_count} trajectories)")
        schedule = calls.schedule
        if spec.source_kind == "random" and options.precision in QUANT_PRECISIONS:
            stage("random weights: calibrating on forward-process pairs (their own trajectories blow up)")
            pairs = forward_process_pairs(calls.eps, image_shape, schedule,
                                          steps=options.calibration_steps, count=options.calibration_count,
                                          seed=options.seed)
        else:
            pairs = collect_pairs(calls.eps, image_shape, schedule,
                                  method=options.calibration_method, steps=options.calibration_steps,
                                  count=options.calibration_count, seed=options.seed)
        calls.store_native(pairs, options.batch.max)
        labels = calls.labels(len(pairs))
        save_pairs(staging / CALIBRATION_FILE, pairs)
        files.append(CALIBRATION_FILE)
        manifest.calibration = {"file": CALIBRATION_FILE, **pairs.info, "pairs": len(pairs)}

        name = engine_file_name("onnx", "fp32")
        stage(f"exporting {name} (opset {options.opset})")
        started = time.perf_counter()
        graph = export_onnx(model, image_shape, options.batch, options.opset, spec.num_classes)
        save_onnx(graph, staging / name)
        extra = {"opset": options.opset, "build_seconds": round(time.perf_counter() - started, 1)}
        manifest.engines[name] = EngineEntry("onnx", "fp32", sha256_file(staging / name), extra=extra)
        stage(f"verifying {name} in ONNX Runtime on {len(pairs)} calibration pairs")
        manifest.verification[name] = _verify(staging / name, manifest, pairs, labels)
        files.append(name)

        if options.precision == "fp16":
            name = engine_file_name("onnx", "fp16")
            stage(f"writing {name} (fp16 graph rewrite, fp32 islands)")
            started = time.perf_counter()
            graph16, islands = convert_to_fp16(graph)
            extra = {"opset": options.opset, "op_input_dtypes": check_onnx_policy(graph16),
                     "fp32_islands": islands.summary()}
            save_onnx(graph16, staging / name)
            extra["build_seconds"] = round(time.perf_counter() - started, 1)
            manifest.engines[name] = EngineEntry("onnx", "fp16", sha256_file(staging / name), extra=extra)
            stage(f"verifying {name} in ONNX Runtime on {len(pairs)} calibration pairs")
            manifest.verification[name] = _verify(staging / name, manifest, pairs, labels)
            files.append(name)

        if options.precision in QUANT_PRECISIONS:
            end_to_end = None  # random weights: trajectories blow up, their images say nothing
            if spec.source_kind != "random" and not options.keep_float:
                stage(f"sampling {GUARD_SEEDS} fp32 reference images for the end-to-end guard")
                end_to_end = trajectory_guard(calls, options.precision)
            how = options.calibrator if options.precision == "int8" else "distribution"  # fp8: ORT's method
            stage(f"quantizing to {options.precision} ({how} calibration, {len(pairs)} pairs)")
            started = time.perf_counter()
            engines = quantize_engines(
                graph, pairs.x.numpy(), pairs.t.numpy(), pairs.eps.numpy(), precision=options.precision,
                calibrator=options.calibrator, keep_float=options.keep_float,
                T=manifest.schedule.T, batch=options.batch.max,
                error_of=lambda g, subset: _verify_graph(g, pairs, subset, manifest), log=stage,
                placements=options.placements, end_to_end=end_to_end)
            seconds = round(time.perf_counter() - started, 1)
            for engine in engines:
                name = engine_file_name("onnx", engine.precision, cpu_form=engine.placement == "cpu")
                save_onnx(engine.model, staging / name)
                manifest.engines[name] = EngineEntry(
                    "onnx", engine.precision, sha256_file(staging / name),
                    quantization=engine.manifest_entry(),
                    extra={"opset": options.opset, "build_seconds": seconds})
                stage(f"verifying {name} in ONNX Runtime on {len(pairs)} calibration pairs")
                manifest.verification[name] = _verify(staging / name, manifest, pairs, labels)
                files.append(name)

        if options.precision in PT2_PRECISIONS[options.pt2_device]:
            name = engine_file_name("aoti", options.precision, device=options.pt2_device)
            stage(f"compiling {name} with AOTInductor for {options.pt2_device} "
                  "(a minute or two for a CIFAR-10 UNet)")
            started = time.perf_counter()
            compile_aoti(model, image_shape, options.batch, staging / name, options.precision,
                         options.pt2_device, spec.num_classes)
            seconds = round(time.perf_counter() - started, 1)
            manifest.engines[name] = EngineEntry("aoti", options.precision, _built(staging / name),
                                                 device=options.pt2_device, extra={"build_seconds": seconds})
            stage(f"verifying {name} on {len(pairs)} calibration pairs")
            manifest.verification[name] = _verify(staging / name, manifest, pairs, labels)
            files.append(name)

        if trt_skip is None:
            caps = trt_build.detect_capabilities(trt_build.import_builder()[0])
            plan_precision = options.precision if options.precision in ("fp16", *QUANT_PRECISIONS) else "fp32"
            plan = trt_build.plan_build(caps, precision=plan_precision,
                                        batch=options.batch, image_shape=image_shape, lean=options.lean,
                                        optimization_level=options.trt_optimization_level)
            name = engine_file_name("tensorrt", plan.precision)
            stage(f"building {name} with TensorRT {caps.version} from {plan.onnx_file}")
            entry = dict(trt_build.build_plan(plan, staging, staging / name, options.timing_cache, log=stage))
            manifest.engines[name] = EngineEntry(entry.pop("kind"), entry.pop("precision"),
                                                 _built(staging / name), extra=entry)
            manifest.versions["tensorrt"] = entry["tensorrt"]
            files.append(name)
        else:
            notes.append(f"TensorRT plan skipped: {trt_skip}")
            stage(notes[-1])

        if spec.source_kind == "random":
            save_checkpoint(staging / REFERENCE_FILE, model.state_dict(),
                            {"architecture": spec.architecture, "model": spec.config,
                             "diffusion": {"schedule": spec.schedule, **{
                                 k: v for k, v in spec.schedule_spec.to_dict().items() if k != "name"}}})
            manifest.reference = REFERENCE_FILE
            # Random weights are identified by the reference file they were saved to (for merge()).
            manifest.model.source.sha256 = sha256_file(staging / REFERENCE_FILE)
            files += [REFERENCE_FILE, Path(REFERENCE_FILE).with_suffix(".json").name]

        previous = previous_manifest(out)
        manifest, dropped = merge(previous, manifest, out)
        for name in dropped:
            path = out / name
            if path.is_file() and sha256_file(path) == previous.engines[name].sha256:  # as pndm wrote it
                dropped_engines.add(name)
                notes.append(f"{name}: removed from {out} with its manifest entry (an engine of the model "
                             "exported there before)")
            else:
                notes.append(f"{name}: dropped from the manifest (its file is gone or was changed since it "
                             "was exported; a changed file is kept)")
        write_manifest(staging, manifest)
        files.append("manifest.json")
    table = format_table({n: manifest.verification[n] for n in files if n in manifest.verification})
    return ExportResult(out=out, manifest=manifest, files=files, table=table, notes=notes)
