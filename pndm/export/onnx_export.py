"""ONNX export with torch 2.13's dynamo exporter: inputs ``x``, ``t``, output ``eps``, dynamic batch.

The exporter's defaults are changed in three places: the file is self-contained (no
``.onnx.data`` beside it; graphs over protobuf's 2 GB limit are refused), the opset it
actually produced is checked, because torch silently falls back to opset 18 when it cannot
convert to the one asked, and the graph comes from non-strict ``torch.export`` alone
(:func:`trace`): the exporter's fallback to strict mode can bake a value that forward computed
from its inputs (``t.item()``) into a constant, a graph that differs from the model.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn
from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

from pndm.errors import PndmError
from pndm.export.batch import BatchRange
from pndm.fileio import atomic_path

DEFAULT_OPSET = 20
MIN_OPSET = 18  # the oldest the dynamo exporter produces for a UNet (GroupNormalization-18: no opset 17)
INPUT_NAMES = ("x", "t")
OUTPUT_NAMES = ("eps",)
PROTOBUF_LIMIT = 2 * 1024**3
EXAMPLE_BATCH = 2  # not 0 or 1, which torch.export would specialize
QUIET_LOGGERS = ("torch.onnx", "torch.fx.experimental.symbolic_shapes")


def example_inputs(image_shape: tuple[int, int, int], batch: int = EXAMPLE_BATCH,
                   num_classes: int | None = None) -> tuple[torch.Tensor, ...]:
    """A float32 (x, t) pair to trace with (t is a tensor, so it is not baked in as a constant), plus
    int64 ``class_labels`` for a class-conditional model."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *image_shape, generator=generator)
    t = torch.linspace(10.0, 900.0, batch)
    if num_classes is None:
        return x, t
    return x, t, torch.arange(batch, dtype=torch.int64) % num_classes


def batch_dynamic_shapes(batch: BatchRange, num_classes: int | None = None) -> tuple[dict, ...]:
    """Axis 0 of ``x``, ``t`` (and ``class_labels``) is one symbolic batch dimension; given by position,
    so a user module's forward may name its arguments as it likes."""
    dim = torch.export.Dim("batch", min=1, max=max(batch.max, EXAMPLE_BATCH))
    return ({0: dim},) * (2 if num_classes is None else 3)


def opset_range() -> tuple[int, int]:
    """(oldest, newest) opset ``--opset`` accepts: :data:`MIN_OPSET` to the newest the installed onnx has."""
    return MIN_OPSET, onnx.defs.onnx_opset_version()


def check_opset(opset: int) -> None:
    oldest, newest = opset_range()
    if not oldest <= opset <= newest:
        raise PndmError(f"opset {opset} is not supported: choose --opset between {oldest} and {newest}")


def trace(module: nn.Module, inputs: tuple[torch.Tensor, ...], batch: BatchRange,
          num_classes: int | None = None) -> torch.export.ExportedProgram:
    """Non-strict ``torch.export`` of ``module`` on ``inputs`` with a dynamic batch axis; a forward that
    torch.export cannot trace for the batch range, or whose Python control flow depends on tensor
    values, raises PndmError (the original error is its cause, shown by ``--debug``)."""
    try:
        return torch.export.export(module, inputs, dynamic_shapes=batch_dynamic_shapes(batch, num_classes))
    except GuardOnDataDependentSymNode as e:
        first = str(e).strip().splitlines()[0].split(" (")[0]
        raise PndmError(
            f"torch.export cannot trace the model: a Python branch or conversion in forward depends on "
            f"tensor values ({first[:120]}); keep them tensors: torch.where instead of if, no "
            ".item()/float()/int()/.numpy() on them") from e
    except torch._dynamo.exc.UserError as e:  # e.g. the model only traces for part of the batch range
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        hint = next((line for line in lines if line.startswith("batch =")), "")
        raise PndmError(
            f"torch.export cannot trace this model for batch {batch.min}..{batch.max} ({lines[0][:160]}"
            f"{'; it suggests ' + hint if hint else ''}): narrow --batch") from e


@contextlib.contextmanager
def quiet_exporter():
    """Silence the exporter's progress prints, warnings, its 'torchvision is not installed' log lines, and
    the partial FX graph and log lines torch.export prints on stderr when it fails."""
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with (warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()),
              contextlib.redirect_stderr(io.StringIO())):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def export_onnx(module: nn.Module, image_shape: tuple[int, int, int], batch: BatchRange,
                opset: int, num_classes: int | None = None) -> onnx.ModelProto:
    """The ONNX graph of ``module`` (eps(x, t), or (x, t, class_labels) with ``num_classes``) at
    ``opset``; raises if the exporter cannot produce it."""
    check_opset(opset)
    inputs = example_inputs(image_shape, num_classes=num_classes)
    names = [*INPUT_NAMES, *(["class_labels"] if num_classes is not None else [])]
    with torch.no_grad(), quiet_exporter():
        program = torch.onnx.export(
            trace(module, inputs, batch, num_classes), input_names=names, output_names=list(OUTPUT_NAMES),
            opset_version=opset, dynamo=True, external_data=False, verbose=False,
        )
    model = program.model_proto
    produced = opset_of(model)
    if produced != opset:
        raise PndmError(
            f"the ONNX exporter cannot produce opset {opset} for this model (it produced {produced}); "
            f"choose --opset {produced} or another opset it converts to"
        )
    return model


def save_onnx(model: onnx.ModelProto, path: Path) -> Path:
    """Write ``model`` to ``path`` atomically as one self-contained file."""
    size = model.ByteSize()
    if size >= PROTOBUF_LIMIT:
        raise PndmError(
            f"the ONNX graph is {size / 1024**3:.1f} GB, over protobuf's 2 GB limit for one file; "
            "models this large are not supported by pndm-export yet"
        )
    with atomic_path(path) as tmp:
        onnx.save_model(model, str(tmp))
    return Path(path)


def opset_of(model: onnx.ModelProto) -> int | None:
    """The default-domain opset a graph declares."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
