"""ONNX export with torch 2.13's dynamo exporter: inputs ``x``, ``t``, output ``eps``, dynamic batch.

The exporter's defaults are changed in two places: the file is self-contained (no
``.onnx.data`` beside it; graphs over protobuf's 2 GB limit are refused), and the opset it
actually produced is checked, because torch silently falls back to opset 18 when it cannot
convert to the one asked.
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

from pndm.errors import PndmError
from pndm.export.batch import BatchRange
from pndm.fileio import atomic_path

DEFAULT_OPSET = 20
MIN_OPSET = 17  # the oldest opset the dynamo exporter converts to
INPUT_NAMES = ("x", "t")
OUTPUT_NAMES = ("eps",)
PROTOBUF_LIMIT = 2 * 1024**3
EXAMPLE_BATCH = 2  # not 0 or 1, which torch.export would specialize


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


def check_opset(opset: int) -> None:
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise PndmError(f"opset {opset} is not supported: choose --opset between {MIN_OPSET} and {newest}")


@contextlib.contextmanager
def quiet_exporter():
    """Silence the exporter's progress prints, warnings and its 'torchvision is not installed' log lines."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
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
            module, inputs, input_names=names, output_names=list(OUTPUT_NAMES),
            dynamic_shapes=batch_dynamic_shapes(batch, num_classes), opset_version=opset, dynamo=True,
            external_data=False, verbose=False,
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
