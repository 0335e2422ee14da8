"""The accuracy checker: does a candidate engine compute what the PyTorch fp32 reference computes?

Two measurements over the same seeds (docs/RUNTIME.md):

1. Lockstep. The reference solves the trajectory; at every model evaluation (NFE index k,
   timestep t) the candidate is fed the reference's exact (x_t, t) and its eps is compared
   (relative L2, max abs; for v- and x0-prediction models the networks' native outputs, which the
   conversion to eps would amplify near t = 0: pndm.prediction). This isolates the engine's
   per-call error from error accumulation.
2. Free-running. The candidate solves the whole trajectory from the same x_T on its own; the
   final 8-bit images are compared with the reference's (max / mean grey-level difference,
   share of pixels within 1 level, PSNR).

Thresholds depend on the candidate's precision (:data:`THRESHOLDS`). A NaN or Inf from the
candidate fails the check and names the first NFE index and t where it appeared.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from tqdm import tqdm

from pndm.errors import EngineError, PndmError
from pndm.images import to_uint8
from pndm.metrics import NEAR_DATA_FRACTION, eps_errors, has_nonfinite, image_agreement, is_near_data
from pndm.runtime.engines.base import Engine
from pndm.runtime.sampling import nfe_of, sample_seeds
from pndm.runtime.seeds import batches, image_noise


@dataclass(frozen=True)
class Thresholds:
    """Pass limits: worst lockstep eps relative L2 (``lockstep_rel_l2_near_data``, when given, for the
    calls at t < NEAR_DATA_FRACTION * T: :mod:`pndm.metrics` says why); final images' max/mean
    grey difference and PSNR."""

    lockstep_rel_l2: float
    max_grey_diff: int
    mean_grey_diff: float
    min_psnr_db: float
    lockstep_rel_l2_near_data: float | None = None

    def lockstep_limit(self, t: float, T: int) -> float:
        """The lockstep limit of a call at timestep ``t`` of a ``T``-step schedule."""
        if self.lockstep_rel_l2_near_data is not None and is_near_data(t, T):
            return self.lockstep_rel_l2_near_data
        return self.lockstep_rel_l2


# fp32: the engine must reproduce the reference to rounding (images within 1 grey level).
# fp16 / bf16: set from measurements on the default model and the CIFAR-10 architecture,
# with margin (the numbers are in docs/RUNTIME.md).
THRESHOLDS = {
    "fp32": Thresholds(lockstep_rel_l2=1e-4, max_grey_diff=1, mean_grey_diff=0.05, min_psnr_db=50.0),
    # fp16 near the data: the CUDA .pt2 casts x to fp16 (9.5e-3 export error at t < 0.1 T on the default
    # model, pndm/export/precision.py); as with bf16, an error there moves the final image little.
    "fp16": Thresholds(lockstep_rel_l2=1e-2, max_grey_diff=255, mean_grey_diff=1.0, min_psnr_db=35.0,
                       lockstep_rel_l2_near_data=5e-2),
    # bf16: measured on the trained default model v1: worst rel L2 2.6e-2 (at t=0), mean grey diff 1.08,
    # PSNR 40.5 dB; v2 (v-prediction): 1.1e-2 at t=50, 1.4e-1 at t=0, 0.66 grey, 47.6 dB
    # (docs/RUNTIME.md, "Why these limits").
    "bf16": Thresholds(lockstep_rel_l2=3e-2, max_grey_diff=255, mean_grey_diff=2.0, min_psnr_db=35.0,
                       lockstep_rel_l2_near_data=2.5e-1),
    # int8 (Q/DQ engines, pndm/export/quantize.py): from the TensorRT form on the trained default model,
    # worst lockstep 5.0e-2 (t=0), 1.86 grey levels, 34.6 dB (docs/EXPORT.md, "INT8 and FP8").
    # fp8: placeholders; no measured fp8 engine meets them yet (docs/EXPORT.md, "FP8").
    "int8": Thresholds(lockstep_rel_l2=8e-2, max_grey_diff=255, mean_grey_diff=2.0, min_psnr_db=30.0,
                       lockstep_rel_l2_near_data=3.5e-1),
    "fp8": Thresholds(lockstep_rel_l2=3e-1, max_grey_diff=255, mean_grey_diff=8.0, min_psnr_db=20.0),
}


@dataclass
class NonFinite:
    """Where a candidate first produced NaN/Inf."""

    phase: str  # "lockstep" | "free-running"
    nfe_index: int
    t: float

    def message(self) -> str:
        return f"candidate produced NaN/Inf in {self.phase} at NFE {self.nfe_index} (t={self.t:g})"


@dataclass
class CheckReport:
    """Everything the checker measured, and the verdict."""

    candidate: dict
    reference: dict
    method: str
    steps: int
    nfe: int
    seeds: list[int]
    precision: str
    thresholds: Thresholds
    T: int  # the schedule's length (the near-data calls are t < NEAR_DATA_FRACTION * T)
    lockstep: list[dict] = field(default_factory=list)  # per NFE: index, t, rel_l2, max_abs
    images: dict = field(default_factory=dict)
    nonfinite: NonFinite | None = None
    failures: list[str] = field(default_factory=list)
    layerwise: dict | None = None
    probe: tuple[torch.Tensor, torch.Tensor] | None = None  # a real (x_t, t) from mid-trajectory

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def worst_rel_l2(self) -> float:
        return max((row["rel_l2"] for row in self.lockstep), default=math.nan)

    @property
    def worst_max_abs(self) -> float:
        return max((row["max_abs"] for row in self.lockstep), default=math.nan)

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "failures": self.failures,
            "candidate": self.candidate,
            "reference": self.reference,
            "method": self.method,
            "steps": self.steps,
            "nfe": self.nfe,
            "seeds": self.seeds,
            "precision": self.precision,
            "thresholds": asdict(self.thresholds),
            "lockstep": {
                "worst_rel_l2": self.worst_rel_l2,
                "worst_max_abs": self.worst_max_abs,
                "per_nfe": self.lockstep,
            },
            "images": self.images,
            "nonfinite": asdict(self.nonfinite) if self.nonfinite else None,
            "layerwise": self.layerwise,
        }


def _t_value(t) -> float:
    return float(t.flatten()[0]) if torch.is_tensor(t) else float(t)


class FiniteWatch:
    """An eps wrapper that remembers the first call whose output holds NaN/Inf."""

    def __init__(self, eps: Callable, phase: str):
        self.eps, self.phase, self.calls, self.first = eps, phase, 0, None

    def __call__(self, x, t):
        out = self.eps(x, t)
        if self.first is None and has_nonfinite(out):
            self.first = NonFinite(self.phase, self.calls, _t_value(t))
        self.calls += 1
        return out


def lockstep(
    reference: Engine,
    candidate: Engine,
    seeds: list[int],
    *,
    method: str,
    steps: int,
    clip_x0: bool = False,
    on_call: Callable[[], None] | None = None,
    grid=None,
) -> tuple[torch.Tensor, list[dict], NonFinite | None, tuple[torch.Tensor, torch.Tensor]]:
    """Solve with the reference; at each NFE feed the same (x_t, t) to the candidate and compare eps.

    Returns the reference's final images (N, C, H, W) on the CPU, one row per NFE, the first
    non-finite candidate output (if any), and the (x_t, t) of the middle NFE (a realistic input
    for ``--layerwise``).
    """
    from pndm.solvers import sample

    schedule = reference.schedule
    native = candidate.prediction != "epsilon"  # compare what the networks output (pndm.prediction)
    x_T = image_noise(seeds, reference.image_shape, reference.device)
    rows: list[dict] = []
    nonfinite: list[NonFinite] = []
    probe: list[tuple[torch.Tensor, torch.Tensor]] = []
    middle = (nfe_of(method, steps) or 0) // 2  # adaptive methods (nfe None): the first call

    def compare(x, t, eps, index):
        t_batch = torch.as_tensor(t).expand(x.shape[0])
        if native:
            cand = candidate.native(x.to(candidate.device), t_batch.to(candidate.device))
            expected = reference.native(x, t_batch.to(reference.device))
        else:
            cand, expected = candidate(x.to(candidate.device), t_batch.to(candidate.device)), eps
        if not nonfinite and has_nonfinite(cand):
            nonfinite.append(NonFinite("lockstep", index, _t_value(t)))
        rel, max_abs = eps_errors(cand, expected)
        rows.append({"index": index, "t": _t_value(t), "rel_l2": rel, "max_abs": max_abs})
        if index == middle:
            probe.append((x.cpu().clone(), t.cpu().clone()))
        if on_call is not None:
            on_call()

    x_0 = sample(reference, x_T, method, steps, schedule, callback=compare, clip_x0=clip_x0, grid=grid)
    return x_0.float().cpu(), rows, (nonfinite[0] if nonfinite else None), probe[0]


def _merge_rows(per_batch: list[list[dict]]) -> list[dict]:
    """Worst error per NFE index across batches."""
    merged: dict[int, dict] = {}
    for rows in per_batch:
        for row in rows:
            seen = merged.get(row["index"])
            if seen is None:
                merged[row["index"]] = dict(row)
            else:
                seen["rel_l2"] = max(seen["rel_l2"], row["rel_l2"])
                seen["max_abs"] = max(seen["max_abs"], row["max_abs"])
    return [merged[k] for k in sorted(merged)]


def _verdict(report: CheckReport) -> None:
    th = report.thresholds
    if report.nonfinite is not None:
        report.failures.append(report.nonfinite.message())
        return
    over = [row for row in report.lockstep
            if not row["rel_l2"] <= th.lockstep_limit(row["t"], report.T)]
    if over:
        worst = max(over, key=lambda r: r["rel_l2"] / th.lockstep_limit(r["t"], report.T))
        report.failures.append(
            f"lockstep eps relative L2 {worst['rel_l2']:.3g} at NFE {worst['index']} (t={worst['t']:g}) "
            f"exceeds {th.lockstep_limit(worst['t'], report.T):g}"
        )
    img = report.images
    if img["max_grey_diff"] > th.max_grey_diff:
        report.failures.append(
            f"final images differ by up to {img['max_grey_diff']} grey levels (limit {th.max_grey_diff})"
        )
    if not img["mean_grey_diff"] <= th.mean_grey_diff:
        report.failures.append(
            f"final images differ by {img['mean_grey_diff']:.3g} grey levels on average "
            f"(limit {th.mean_grey_diff:g})"
        )
    if not img["psnr_db"] >= th.min_psnr_db:
        report.failures.append(f"final-image PSNR {img['psnr_db']:.1f} dB is below {th.min_psnr_db:g} dB")


def check_engine(
    candidate: Engine,
    reference: Engine,
    seeds: list[int],
    *,
    method: str = "f-pndm",
    steps: int = 20,
    batch: int = 4,
    clip_x0: bool = False,
    progress: bool = True,
    grid=None,
) -> CheckReport:
    """Run both measurements of the module docstring and decide pass/fail (``grid``: None = the method's)."""
    if (candidate.image_shape, candidate.schedule.spec, candidate.prediction) != (
        reference.image_shape,
        reference.schedule.spec,
        reference.prediction,
    ):
        raise EngineError(
            f"the reference ({reference.image_shape}, {reference.schedule.spec.describe()}, predicts "
            f"{reference.prediction}) is not the same model as the candidate ({candidate.image_shape}, "
            f"{candidate.schedule.spec.describe()}, predicts {candidate.prediction}): give the matching "
            "reference="
        )
    precision = candidate.precision
    if precision not in THRESHOLDS:
        raise EngineError(
            f"the checker has no thresholds for precision {precision!r} (known: {', '.join(THRESHOLDS)})"
        )
    chunks = batches(seeds, batch)
    for size in sorted({len(c) for c in chunks}):
        candidate.check_batch(size)
    nfe = nfe_of(method, steps)
    report = CheckReport(
        candidate=candidate.describe(),
        reference=reference.describe(),
        method=method,
        steps=steps,
        nfe=nfe,
        seeds=list(seeds),
        precision=precision,
        thresholds=THRESHOLDS[precision],
        T=candidate.schedule.T,
    )
    bar = tqdm(
        total=nfe * len(chunks) if nfe else None,
        desc="lockstep",
        unit="nfe",
        file=sys.stderr,
        disable=not progress,
        leave=False,
    )
    reference_images, per_batch = [], []
    try:
        for chunk in chunks:
            x_0, rows, nonfinite, probe = lockstep(
                reference, candidate, chunk, method=method, steps=steps, clip_x0=clip_x0,
                on_call=lambda: bar.update(1), grid=grid,
            )
            reference_images.append(x_0)
            per_batch.append(rows)
            report.nonfinite = report.nonfinite or nonfinite
            report.probe = report.probe or probe
    finally:
        bar.close()
    report.lockstep = _merge_rows(per_batch)
    report.nfe = nfe if nfe is not None else len(report.lockstep)
    watch = FiniteWatch(candidate, "free-running")
    try:
        run = sample_seeds(
            candidate,
            seeds,
            method=method,
            steps=steps,
            batch=batch,
            clip_x0=clip_x0,
            grid=grid,
            eps=watch,
            progress=progress,
            desc="free-running",
        )
    except PndmError:
        if watch.first is None:
            raise
        run = None  # the solver stopped at the candidate's first NaN/Inf
    report.nonfinite = report.nonfinite or watch.first
    if run is not None:
        report.images = image_agreement(to_uint8(run.images), to_uint8(torch.cat(reference_images)))
    _verdict(report)
    return report


def _lockstep_rows(report: CheckReport) -> list[tuple[str, str, str]]:
    """The lockstep verdict rows: one, or the near-data calls and the rest apart when their limits differ."""
    th = report.thresholds
    if th.lockstep_rel_l2_near_data is None:
        return [("lockstep worst rel L2", f"{report.worst_rel_l2:.3e}", f"<= {th.lockstep_rel_l2:g}")]
    edge = NEAR_DATA_FRACTION * report.T
    near = [r["rel_l2"] for r in report.lockstep if is_near_data(r["t"], report.T)]
    rest = [r["rel_l2"] for r in report.lockstep if not is_near_data(r["t"], report.T)]
    return [(f"lockstep worst rel L2, t < {edge:g}", f"{max(near, default=math.nan):.3e}",
             f"<= {th.lockstep_rel_l2_near_data:g}"),
            (f"lockstep worst rel L2, t >= {edge:g}", f"{max(rest, default=math.nan):.3e}",
             f"<= {th.lockstep_rel_l2:g}")]


def _summary_rows(report: CheckReport) -> list[tuple[str, str, str]]:
    """(measure, value, limit) rows of the verdict table."""
    th, img = report.thresholds, report.images
    return [
        *_lockstep_rows(report),
        ("lockstep worst max abs", f"{report.worst_max_abs:.3e}", ""),
        ("final max grey-level diff", f"{img.get('max_grey_diff', math.nan)}", f"<= {th.max_grey_diff}"),
        (
            "final mean grey-level diff",
            f"{img.get('mean_grey_diff', math.nan):.4f}",
            f"<= {th.mean_grey_diff:g}",
        ),
        ("final pixels within 1 level", f"{100 * img.get('within_1_share', math.nan):.2f}%", ""),
        ("final PSNR (dB)", f"{img.get('psnr_db', math.nan):.2f}", f">= {th.min_psnr_db:g}"),
    ]


def format_report(report: CheckReport) -> str:
    """The human-readable table printed by ``pndm-run check``."""
    c = report.candidate
    lines = [
        f"candidate: {c['path']} ({c['backend']}, {c['precision']}, {c['device']})",
        f"reference: {report.reference['path']} ({report.reference['backend']}, fp32)",
        f"method {report.method}, {report.steps} step{'s' * (report.steps != 1)}, NFE {report.nfe:g}, "
        f"{len(report.seeds)} image{'s' * (len(report.seeds) != 1)}",
        "",
        "lockstep (same x_t, t fed to both):",
        f"  {'NFE':>4} {'t':>9} {'rel L2':>10} {'max abs':>10}",
    ]
    for row in report.lockstep:
        lines.append(f"  {row['index']:>4} {row['t']:>9.2f} {row['rel_l2']:>10.3e} {row['max_abs']:>10.3e}")
    lines += ["", f"{'measure':<30} {'value':>12} {'limit':>12}"]
    lines += [f"{name:<30} {value:>12} {limit:>12}" for name, value, limit in _summary_rows(report)]
    lines += ["", f"{'PASS' if report.passed else 'FAIL'} ({report.precision} thresholds)"]
    lines += [f"  - {f}" for f in report.failures]
    return "\n".join(lines)
