"""``pndm-export build`` and ``pndm-export models`` (assembled into ``pndm-export`` by :mod:`pndm.cli`)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import click
from click.core import ParameterSource

from pndm.cli import debug_option
from pndm.errors import PndmError
from pndm.export.batch import DEFAULT_BATCH
from pndm.export.onnx_export import DEFAULT_OPSET, opset_range
from pndm.export.tensorrt import DEFAULT_OPTIMIZATION_LEVEL
from pndm.models.cli_options import load_with_options, model_options


def _echo_err(message: str) -> None:
    click.echo(message, err=True)


def load_source(model: str | None, checkpoint: str | None, random_init: bool, trust_pickle: bool, *,
                schedule=None, prediction: str | None = None):
    """(model, spec) for the --model / --checkpoint options (neither: the embedded default model);
    ``schedule``/``prediction`` override what the model's config says."""
    from pndm.models import UntrainedModelWarning, load

    if model is not None and checkpoint is not None:
        raise PndmError("give either --model NAME or --checkpoint PATH, not both")
    if checkpoint is not None:
        if random_init:
            raise PndmError("--random-init builds a named architecture: drop it, or use --model NAME")
        if not Path(checkpoint).exists():
            raise PndmError(f"--checkpoint {checkpoint}: no such file or folder")
        source = checkpoint
    else:
        source = model or "default"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UntrainedModelWarning)
        loaded = load(source, allow_pickle=trust_pickle, random_init=random_init, schedule=schedule,
                      prediction=prediction)
    for warning in caught:
        _echo_err(f"warning: {warning.message}")
    return loaded


@click.command()
@click.option("--model", "model_name", default=None,
              help="Named model (see `pndm-export models`); its weights come from $PNDM_MODELS_DIR "
                   "(default ~/.cache/pndm/models). Default: the embedded default model.")
@click.option("--checkpoint", default=None,
              help="Weights to export instead of a named model: .ckpt/.pt/.pth, .safetensors (+ .json "
                   "config), a diffusers UNet2DModel folder, or a diffusers pipeline folder (its "
                   "scheduler gives the schedule and prediction type). Default: none (--model decides).")
@click.option("--out", required=True, type=click.Path(path_type=Path),  # a file: one line from check_out_dir
              help="Output directory (created if needed; only the files this run produces are replaced).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16", "int8", "fp8"]), default="fp32",
              show_default=True,
              help="fp32: unet.onnx only. fp16: also unet.fp16.onnx (mixed precision; TensorRT plans in "
                   "fp16). bf16: also unet.bf16.pt2 (AOTInductor CPU engine). int8: also unet.int8.onnx "
                   "(Q/DQ for TensorRT) and unet.int8-cpu.onnx (fast on ONNX Runtime CPU). fp8: also "
                   "unet.fp8.onnx (Q/DQ float8e4m3fn for TensorRT on Hopper/Ada).")
@click.option("--calibrator", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax",
              show_default=True,
              help="int8 activation ranges (fp8 always uses ONNX Runtime's distribution calibration); "
                   "minmax gave the best images on the default model (docs/EXPORT.md).")
@click.option("--keep-float", "keep_float", default="",
              help="int8/fp8: comma-separated layers (module paths, e.g. conv_in,conv_out) to leave in "
                   "float instead of the automatic choice by measured sensitivity (default: none, the "
                   "automatic choice).")
@click.option("--int8-form", "int8_form", type=click.Choice(["both", "tensorrt", "cpu"]), default="both",
              show_default=True,
              help="int8: which Q/DQ placements to write: tensorrt (unet.int8.onnx: symmetric int8, "
                   "for TensorRT), cpu (unet.int8-cpu.onnx: uint8 activations and 7-bit weights, for "
                   "ONNX Runtime on CPUs) or both.")
@click.option("--pt2-device", "pt2_device", type=click.Choice(["cpu", "cuda"]), default="cpu",
              show_default=True,
              help="Device the AOTInductor package is compiled for. cpu: unet.bf16.pt2 with --precision "
                   "bf16. cuda: unet.<precision>.cuda.pt2 for --precision fp32, fp16 or bf16 (run it with "
                   "pndm-run --device cuda; sampling captures the whole loop as one CUDA graph); needs a "
                   "CUDA device.")
@click.option("--batch", "batch_text", default=DEFAULT_BATCH, show_default=True,
              help="Batch range MIN:OPT:MAX the engines accept (TensorRT optimizes for OPT).")
@click.option("--opset", type=int, default=DEFAULT_OPSET, show_default=True,
              help="ONNX opset, {}-{} (the newest this onnx knows).".format(*opset_range()))
@click.option("--trt", "trt_mode", type=click.Choice(["auto", "on", "off"]), default="auto",
              show_default=True,
              help="TensorRT plan: auto builds it when TensorRT and a CUDA device are present, on requires "
                   "it, off skips it.")
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="TensorRT timing cache file, read if present and written after the build (default: none).")
@click.option("--lean", is_flag=True, default=False,
              help="Build a version-compatible TensorRT plan for the lean runtime (default: off).")
@click.option("--trt-optimization-level", type=click.IntRange(0, 5), default=DEFAULT_OPTIMIZATION_LEVEL,
              show_default=True, help="TensorRT builder optimization level (higher: slower build).")
@click.option("--random-init", is_flag=True, default=False,
              help="Export the named architecture with random weights (testing; default: off). The weights "
                   "are saved as reference.safetensors in --out.")
@click.option("--trust-pickle", is_flag=True, default=False,
              help="Allow torch checkpoints whose pickle carries code (files you trust only; default: off).")
@click.option("--calibration-method", default="ddim", show_default=True,
              help="Solver whose trajectories give the calibration / verification pairs.")
@click.option("--calibration-steps", type=click.IntRange(min=1), default=10, show_default=True,
              help="Solver steps per calibration trajectory.")
@click.option("--calibration-count", type=click.IntRange(min=1), default=2, show_default=True,
              help="Number of calibration trajectories (seeds).")
@click.option("--seed", type=click.IntRange(0, 2**64 - 1), default=0, show_default=True,
              help="Seed of the calibration noise.")
@model_options
@debug_option
def build(model_name, checkpoint, out, precision, batch_text, opset, trt_mode, timing_cache, lean,
          trt_optimization_level, random_init, trust_pickle, calibration_method, calibration_steps,
          calibration_count, seed, calibrator, keep_float, int8_form, pt2_device, model_opts):
    """Export a model to ONNX (fp32, fp16), bf16 AOTInductor and TensorRT engines, verified against PyTorch.

    Writes unet.onnx, unet.fp16.onnx / unet.bf16.pt2 / unet.<precision>.cuda.pt2 / unet.<precision>.plan as
    asked, calibration.safetensors
    and manifest.json into --out, and prints each engine's error per range of t.
    """
    from pndm.export.batch import parse_batch
    from pndm.export.build import ExportOptions, build_engines, check_options

    options = ExportOptions(out=out, precision=precision, batch=parse_batch(batch_text), opset=opset,
                            trt=trt_mode, timing_cache=timing_cache, lean=lean,
                            trt_optimization_level=trt_optimization_level,
                            calibration_method=calibration_method, calibration_steps=calibration_steps,
                            calibration_count=calibration_count, seed=seed, calibrator=calibrator,
                            keep_float=tuple(name.strip() for name in keep_float.split(",") if name.strip()),
                            placements=("tensorrt", "cpu") if int8_form == "both" else (int8_form,),
                            pt2_device=pt2_device)
    given = click.get_current_context().get_parameter_source
    for name in ("int8_form", "calibrator"):  # their defaults are harmless; given explicitly, they must apply
        if precision != "int8" and given(name) is ParameterSource.COMMANDLINE:
            option = f"--{name.replace('_', '-')}"
            raise PndmError(f"{option} applies to --precision int8, not {precision}: drop it")
    check_options(options)  # bad options fail before the model is loaded
    if model_opts["module"] is not None and (model_name or checkpoint or random_init):
        raise PndmError("give one of --module, --model or --checkpoint")
    model, spec = load_with_options(
        model_opts, lambda **over: load_source(model_name, checkpoint, random_init, trust_pickle, **over))
    result = build_engines(model, spec, options, log=_echo_err)
    click.echo(f"wrote {', '.join(result.files)} to {result.out}")
    output = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}.get(spec.prediction, spec.prediction)
    click.echo(f"verification against the PyTorch fp32 model (its output, {output}, on calibration pairs):")
    click.echo(result.table)
    for note in result.notes:
        click.echo(note)


@click.command()
@click.option("--json", "as_json", is_flag=True, default=False,
              help="Print JSON instead of a table (default: off).")
@debug_option
def models(as_json):
    """List the named models, their architecture and size, and whether their weights are installed."""
    from pndm.models.registry import list_models, named_model, weights_dir

    rows = []
    for name, architecture, shape, params, path in list_models():
        if path is not None:
            where = str(path)
        elif name == "default":
            where = "not shipped in this installation: exports use an untrained stand-in (random init)"
        else:
            where = f"missing: put {named_model(name).origin} in {weights_dir()}"
        rows.append({"name": name, "architecture": architecture, "image_shape": list(shape), "params": params,
                     "weights": str(path) if path is not None else None, "where": where})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"weights folder: {weights_dir()} (set $PNDM_MODELS_DIR to change it)")
    click.echo(f"{'name':<15}{'arch':<7}{'image':<11}{'params':>9}  weights")
    for row in rows:
        shape = "x".join(str(s) for s in row["image_shape"])
        params = f"{row['params'] / 1e6:.1f}M"
        click.echo(f"{row['name']:<15}{row['architecture']:<7}{shape:<11}{params:>9}  {row['where']}")
