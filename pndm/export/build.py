"""The export pipeline behind ``pndm-export build``.

1. Load the model (:func:`pndm.models.load`) and check every option before any work.
2. Collect calibration pairs (x_t, t) and the fp32 model's eps along real solver trajectories.
3. Export ``unet.onnx`` (fp32) and verify it in ONNX Runtime: relative L2 <= 1e-5 or fail.
4. Per ``--precision``: ``unet.fp16.onnx`` (precision policy checked, verified per t range) or
   ``unet.bf16.pt2`` (AOTInductor, verified per t range).
5. ``unet.plan`` when TensorRT and a CUDA device are present (``--trt auto|on|off``).
6. ``manifest.json`` (written last), ``calibration.safetensors``, and for exports of random
   weights ``reference.safetensors`` + ``.json`` (the weights the engines hold, for the checker).

Everything is written into a hidden staging folder inside DIR and moved into place at the end;
on any error the staging folder is removed, so DIR never holds a half-written or unverified
file. Files from older runs that this run does not produce are left alone.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pndm.calibration import CalibrationSet, collect_pairs, forward_process_pairs, save_pairs
from pndm.errors import PndmError
from pndm.export import tensorrt as trt_build
from pndm.export.aoti import compile_aoti, load_aoti
from pndm.export.batch import DEFAULT_BATCH, BatchRange, parse_batch
from pndm.export.fp16_graph import convert_to_fp16
from pndm.export.manifest import new_manifest, write_manifest
from pndm.export.onnx_export import DEFAULT_OPSET, check_opset, export_onnx, save_onnx
from pndm.export.precision import EXPORT_REL_L2_LIMITS, PRECISIONS, check_onnx_policy, require_export_accuracy
from pndm.export.quantize import CALIBRATORS, DEFAULT_CALIBRATOR, QUANT_PRECISIONS, quantize_engines
from pndm.export.quantize import ENGINE_FILES as QUANT_ENGINE_FILES
from pndm.export.verify import (
    compare,
    evaluate,
    format_table,
    onnxruntime_eps,
    require_fp32_agreement,
)
from pndm.fileio import sha256_file

TRT_MODES = ("auto", "on", "off")
ENGINE_FILES = {"fp32": "unet.onnx", "fp16": "unet.fp16.onnx", "bf16": "unet.bf16.pt2", "plan": "unet.plan"}
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


@dataclass
class ExportResult:
    out: Path
    manifest: dict[str, Any]
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
    if options.trt not in TRT_MODES:
        raise PndmError(f"unknown --trt mode {options.trt!r}; choose one of {', '.join(TRT_MODES)}")
    check_opset(options.opset)
    check_out_dir(Path(options.out))
    if options.trt == "off":
        return "--trt off"
    _, reason = trt_build.import_builder()
    if reason is not None and options.trt == "on":
        raise PndmError(f"--trt on: cannot build a TensorRT plan: {reason}; use --trt auto or off to skip it")
    return reason


def check_out_dir(out: Path) -> None:
    """Refuse an ``--out`` that is a file, or whose nearest existing parent is not a writable folder."""
    if out.exists() and not out.is_dir():
        raise PndmError(f"--out {out} is a file, not a directory; choose a directory path")
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        problem = f"{existing} is a file"
        raise PndmError(f"output directory {out} is not writable ({problem}); choose another --out")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PndmError(f"output directory {out} is not writable (permission denied); choose another --out")


def make_staging(out: Path) -> tuple[Path, bool]:
    """A fresh hidden folder inside ``out`` (created if needed); (staging, whether ``out`` was created)."""
    check_out_dir(out)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".pndm-export-", dir=out))
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise PndmError(f"output directory {out} is not writable ({reason}); choose another --out") from None
    return staging, created


def publish(staging: Path, out: Path, names: list[str]) -> None:
    """Move the staged files into ``out``; the manifest goes last, so it never names a missing file."""
    for name in sorted(names, key=lambda n: n == "manifest.json"):
        os.replace(staging / name, out / name)


class _Stages:
    """Timed, one-line progress messages on stderr."""

    def __init__(self, log: Callable[[str], None]):
        self.log, self.start = log, time.perf_counter()

    def __call__(self, message: str) -> None:
        self.log(f"[{time.perf_counter() - self.start:6.1f}s] {message}")


def _verify(eps, pairs: CalibrationSet, T: int, batch: BatchRange) -> dict:
    candidate = evaluate(eps, pairs.x, pairs.t, batch.max)
    return compare(candidate, pairs.eps, pairs.t, T)


def _verify_graph(graph, pairs: CalibrationSet, subset, T: int, batch: BatchRange) -> dict:
    """Errors of an in-memory ONNX graph on the calibration pairs (``subset``: indices, None for all)."""
    if subset is not None:
        index = torch.as_tensor(subset)
        pairs = CalibrationSet(pairs.x[index], pairs.t[index], pairs.eps[index])
    return _verify(onnxruntime_eps(graph.SerializeToString()), pairs, T, batch)


def build_engines(model: nn.Module, spec, options: ExportOptions, *,
                  log: Callable[[str], None] = print) -> ExportResult:
    """Run the pipeline (module docstring) for ``model`` described by ``spec`` (a ModelSpec)."""
    from pndm.models import save_checkpoint
    from pndm.schedules import make_schedule

    trt_skip = check_options(options)
    stage = _Stages(log)
    out = Path(options.out)
    staging, created = make_staging(out)
    try:
        files, notes, verification = [], [], {}
        image_shape = tuple(spec.image_shape)
        manifest = new_manifest(architecture=spec.architecture, config=spec.config,
                                source=spec.manifest_source(), image_shape=image_shape,
                                schedule=spec.schedule, T=spec.T, batch=options.batch.to_dict())
        model = model.float().eval()

        stage(f"collecting calibration pairs ({options.calibration_method}, "
              f"{options.calibration_steps} steps, {options.calibration_count} trajectories)")
        schedule = make_schedule(spec.schedule, spec.T)
        if spec.source_kind == "random" and options.precision in QUANT_PRECISIONS:
            stage("random weights: calibrating on forward-process pairs (their own trajectories blow up)")
            pairs = forward_process_pairs(lambda x, t: model(x, t), image_shape, schedule,
                                          steps=options.calibration_steps, count=options.calibration_count,
                                          seed=options.seed)
        else:
            pairs = collect_pairs(lambda x, t: model(x, t), image_shape, schedule,
                                  method=options.calibration_method, steps=options.calibration_steps,
                                  count=options.calibration_count, seed=options.seed)
        save_pairs(staging / CALIBRATION_FILE, pairs)
        files.append(CALIBRATION_FILE)
        manifest["calibration"] = {"file": CALIBRATION_FILE, **pairs.info, "pairs": len(pairs)}

        name = ENGINE_FILES["fp32"]
        stage(f"exporting {name} (opset {options.opset})")
        started = time.perf_counter()
        graph = export_onnx(model, image_shape, options.batch, options.opset)
        save_onnx(graph, staging / name)
        entry = {"kind": "onnx", "precision": "fp32", "opset": options.opset,
                 "build_seconds": round(time.perf_counter() - started, 1)}
        stage(f"verifying {name} in ONNX Runtime on {len(pairs)} calibration pairs")
        verification[name] = _verify(onnxruntime_eps(staging / name), pairs, spec.T, options.batch)
        require_fp32_agreement(name, verification[name])
        manifest["engines"][name] = {**entry, "sha256": sha256_file(staging / name)}
        files.append(name)

        if options.precision == "fp16":
            name = ENGINE_FILES["fp16"]
            stage(f"writing {name} (fp16 graph rewrite, fp32 islands)")
            started = time.perf_counter()
            graph16, islands = convert_to_fp16(graph)
            entry = {"kind": "onnx", "precision": "fp16", "opset": options.opset,
                     "op_input_dtypes": check_onnx_policy(graph16), "fp32_islands": islands.summary()}
            save_onnx(graph16, staging / name)
            entry["build_seconds"] = round(time.perf_counter() - started, 1)
            stage(f"verifying {name} in ONNX Runtime on {len(pairs)} calibration pairs")
            verification[name] = _verify(onnxruntime_eps(staging / name), pairs, spec.T, options.batch)
            require_export_accuracy(name, "fp16", verification[name])
            manifest["engines"][name] = {**entry, "sha256": sha256_file(staging / name)}
            files.append(name)

        if options.precision in QUANT_PRECISIONS:
            stage(f"quantizing to {options.precision} ({options.calibrator} calibration, {len(pairs)} pairs)")
            started = time.perf_counter()
            engines = quantize_engines(
                graph, pairs.x.numpy(), pairs.t.numpy(), pairs.eps.numpy(), precision=options.precision,
                calibrator=options.calibrator, keep_float=options.keep_float,
                limit=EXPORT_REL_L2_LIMITS[options.precision], batch=options.batch.max,
                error_of=lambda g, subset: _verify_graph(g, pairs, subset, spec.T, options.batch), log=stage)
            seconds = round(time.perf_counter() - started, 1)
            for engine in engines:
                name = QUANT_ENGINE_FILES[(engine.precision, engine.placement)]
                save_onnx(engine.model, staging / name)
                stage(f"verifying {name} in ONNX Runtime on {len(pairs)} calibration pairs")
                verification[name] = _verify(onnxruntime_eps(staging / name), pairs, spec.T, options.batch)
                require_export_accuracy(name, options.precision, verification[name])
                manifest["engines"][name] = {
                    "kind": "onnx", "precision": engine.precision, "opset": options.opset,
                    "quantization": engine.manifest_entry(), "build_seconds": seconds,
                    "sha256": sha256_file(staging / name)}
                files.append(name)

        if options.precision == "bf16":
            name = ENGINE_FILES["bf16"]
            stage(f"compiling {name} with AOTInductor (about a minute for a CIFAR-10 UNet)")
            started = time.perf_counter()
            compile_aoti(model, image_shape, options.batch, staging / name)
            seconds = round(time.perf_counter() - started, 1)
            stage(f"verifying {name} on {len(pairs)} calibration pairs")
            verification[name] = _verify(load_aoti(staging / name), pairs, spec.T, options.batch)
            require_export_accuracy(name, "bf16", verification[name])
            manifest["engines"][name] = {"kind": "aoti", "precision": "bf16", "device": "cpu",
                                         "build_seconds": seconds, "sha256": sha256_file(staging / name)}
            files.append(name)

        if trt_skip is None:
            name = ENGINE_FILES["plan"]
            caps = trt_build.detect_capabilities(trt_build.import_builder()[0])
            plan_precision = options.precision if options.precision in ("fp16", *QUANT_PRECISIONS) else "fp32"
            plan = trt_build.plan_build(caps, precision=plan_precision,
                                        batch=options.batch, image_shape=image_shape, lean=options.lean,
                                        optimization_level=options.trt_optimization_level)
            stage(f"building {name} with TensorRT {caps.version} from {plan.onnx_file}")
            entry = trt_build.build_plan(plan, staging, staging / name, options.timing_cache, log=stage)
            manifest["engines"][name] = {**entry, "sha256": sha256_file(staging / name)}
            manifest["versions"]["tensorrt"] = entry["tensorrt"]
            files.append(name)
        else:
            notes.append(f"TensorRT plan skipped: {trt_skip}")
            stage(notes[-1])

        if spec.source_kind == "random":
            save_checkpoint(staging / REFERENCE_FILE, model.state_dict(),
                            {"architecture": spec.architecture, "model": spec.config,
                             "diffusion": {"schedule": spec.schedule, "T": spec.T}})
            manifest["reference"] = REFERENCE_FILE
            files += [REFERENCE_FILE, Path(REFERENCE_FILE).with_suffix(".json").name]

        manifest["verification"] = verification
        write_manifest(staging, manifest)
        files.append("manifest.json")
        publish(staging, out, files)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not any(out.iterdir()):
            out.rmdir()
        raise
    shutil.rmtree(staging, ignore_errors=True)
    table = format_table(verification)
    return ExportResult(out=out, manifest=manifest, files=files, table=table, notes=notes)
