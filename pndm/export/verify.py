"""Verification at export: an engine's eps against the PyTorch fp32 model on calibration pairs.

Metrics (computed over the whole set and per range of t, since fp16 errors depend on t):
relative L2 = ||eps_engine - eps_ref||_2 / ||eps_ref||_2 and max abs = max |eps_engine - eps_ref|
(:mod:`pndm.metrics`). Engines are run through the runtime's loader, as ``pndm-run`` runs them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pndm.errors import PndmError
from pndm.metrics import NEAR_DATA_FRACTION, error_stats, has_nonfinite

FP32_REL_L2_LIMIT = 1e-5
# Boundaries of the t ranges, as fractions of T: [0, 100), [100, 300), [300, 600), [600, 1000) for T=1000.
T_RANGE_FRACTIONS = (0.0, NEAR_DATA_FRACTION, 0.3, 0.6, 1.0)
EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def t_ranges(T: int) -> list[tuple[int, int]]:
    edges = [round(f * T) for f in T_RANGE_FRACTIONS]
    return list(zip(edges[:-1], edges[1:], strict=True))


def compare(candidate: torch.Tensor, reference: torch.Tensor, t: torch.Tensor, T: int) -> dict:
    """Overall stats plus ``by_t``: one entry per t range that holds calibration pairs."""
    result = {**error_stats(candidate, reference), "count": int(t.numel()), "by_t": []}
    for lo, hi in t_ranges(T):
        mask = (t >= lo) & (t < hi)
        if mask.any():
            result["by_t"].append({"t": [lo, hi], "count": int(mask.sum()),
                                   **error_stats(candidate[mask], reference[mask])})
    return result


def onnx_native(graph) -> Callable[..., torch.Tensor]:
    """An in-memory ONNX graph in ONNX Runtime on the CPU, as ``native(x, t, class_labels=None)`` on torch
    tensors (its output, whatever the model predicts)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [value.name for value in session.get_inputs()]

    def native(x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        inputs = (x, t) if class_labels is None else (x, t, class_labels)
        feeds = {name: value.numpy() for name, value in zip(names, inputs, strict=True)}
        return torch.from_numpy(session.run(None, feeds)[0])

    return native


@torch.no_grad()
def evaluate(eps: EpsFn, x: torch.Tensor, t: torch.Tensor, batch: int,
             class_labels: torch.Tensor | None = None) -> torch.Tensor:
    """eps over all pairs, ``batch`` at a time (engines have a maximum batch); ``class_labels`` (N,)
    for class-conditional models."""
    def labels(i):
        return () if class_labels is None else (class_labels[i:i + batch],)

    return torch.cat([eps(x[i:i + batch], t[i:i + batch], *labels(i)).to("cpu", torch.float32, copy=True)
                      for i in range(0, len(x), batch)])


def require_fp32_agreement(name: str, stats: dict, limit: float = FP32_REL_L2_LIMIT) -> None:
    """An fp32 engine that disagrees with PyTorch beyond ``limit`` is a broken export."""
    if not stats["rel_l2"] <= limit:
        raise PndmError(
            f"{name} disagrees with the PyTorch model: relative L2 {stats['rel_l2']:.3g} > {limit:g} "
            f"(max abs {stats['max_abs']:.3g}); the export is wrong, report it with the model config"
        )


def require_finite(name: str, candidate: torch.Tensor) -> None:
    """A reduced-precision engine whose eps overflows (inf/nan) is unusable, whatever its other errors."""
    if has_nonfinite(candidate):
        raise PndmError(
            f"{name} produces non-finite eps on the calibration pairs (an overflow in reduced precision); "
            "export with precision=fp32 or precision=bf16 instead"
        )


def format_table(results: dict[str, dict]) -> str:
    """A plain-text table: one row per engine and t range."""
    lines = [f"{'engine':<18}{'t range':>14}{'pairs':>7}{'rel L2':>12}{'max abs':>12}"]
    for name, stats in results.items():
        lines.append(f"{name:<18}{'all':>14}{stats['count']:>7}{stats['rel_l2']:>12.3e}{stats['max_abs']:>12.3e}")
        for row in stats["by_t"]:
            span = f"[{row['t'][0]}, {row['t'][1]})"
            lines.append(f"{'':<18}{span:>14}{row['count']:>7}{row['rel_l2']:>12.3e}{row['max_abs']:>12.3e}")
    return "\n".join(lines)
