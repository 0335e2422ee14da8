"""Sample quality against cost: Frechet distance against NFE for methods and engines of one image shape.

Every (engine, method, steps) point samples the same seeds, so the curves differ only by solver
and engine. The table (Markdown), the raw rows (JSON) and the plot (PNG, matplotlib: ``pndm[plot]``)
are what PNDM's and DDIM's papers show as "FID against NFE".
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pndm.errors import PndmError
from pndm.scoring.score import Featurizer, Reference, compare, real_vs_real, resized


def _to_nchw_uint8(images):
    from pndm.images import to_uint8

    return to_uint8(images).permute(0, 3, 1, 2).contiguous()


def engine_labels(paths: list[str]) -> list[str]:
    """One distinct label per ``--engine``: its file name, with as many parent folders before it as it
    takes to tell engines of the same file name apart. The same engine twice is refused."""
    parts = [Path(p).resolve().parts if Path(p).exists() else (p,) for p in paths]
    for path, part in zip(paths, parts, strict=True):
        if parts.count(part) > 1:
            raise PndmError(f"--engine {path} is given twice: give each engine once")

    def labels(depth: int) -> list[str]:
        return ["/".join(part[-depth:]) for part in parts]

    longest = max(map(len, parts))
    return labels(next((d for d in range(1, longest) if len(set(labels(d))) == len(parts)), longest))


def engine_batches(engines: dict[str, object], batch: int | None, num: int) -> dict[str, int]:
    """Images per call for each engine (:func:`pndm.runtime.threads.engine_batch`: ``batch``, or the
    default of ``pndm-run sample`` for ``num`` images), checked against each profile before any work."""
    from pndm.runtime.threads import engine_batch

    return {label: engine_batch(engine, batch, num) for label, engine in engines.items()}


def run_sweep(engines: dict[str, object], methods: Iterable[str], steps: Iterable[int], seeds: list[int],
              batches: dict[str, int], reference: Reference, featurizer: Featurizer, *,
              grids: Iterable[str | None] = (None,), clip_x0: bool = False, progress: bool = True,
              resize: int | None = None) -> dict:
    """Rows ``{engine, method, grid, steps, nfe, fd, precision, recall, seconds}`` and the baseline.

    ``batches``: images per call for each engine (:func:`engine_batches`). ``grids``: names from
    :data:`pndm.solvers.GRIDS` (None: each method's default grid). ``resize``: the samples resized as
    the reference's images were (:func:`pndm.scoring.score.resized`).
    """
    from pndm.runtime.sampling import sample_seeds

    baseline = real_vs_real(reference, len(seeds))  # first: a reference too small is refused before sampling
    rows = []
    for label, engine in engines.items():
        for method in methods:
            for grid in grids:
                for n in steps:
                    run = sample_seeds(engine, seeds, method=method, steps=n, batch=batches[label],
                                       clip_x0=clip_x0, grid=grid, progress=progress,
                                       desc=f"{label} {method} {n}")
                    result = compare(featurizer(resized(_to_nchw_uint8(run.images), resize)), reference)
                    rows.append({"engine": label, "method": method, "grid": grid or "default", "steps": n,
                                 "nfe": run.nfe, **result, "seconds": run.wall_seconds})
    return {"rows": rows, "real_vs_real": baseline, "clip_x0": clip_x0,
            "features": featurizer.name, "num_samples": len(seeds), "reference": reference.source}


def format_table(result: dict) -> str:
    """A Markdown table of the rows, the baseline in its last line."""
    has_pr = any("precision" in r for r in result["rows"])
    head = "| engine | method | grid | steps | NFE | FD |" + (" precision | recall |" if has_pr else "")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in result["rows"]:
        line = (f"| {r['engine']} | {r['method']} | {r['grid']} | {r['steps']} | {r['nfe']:g} | "
                f"{r['fd']:.3f} |")
        if has_pr:
            line += f" {r.get('precision', float('nan')):.3f} | {r.get('recall', float('nan')):.3f} |"
        lines.append(line)
    base = result["real_vs_real"]
    if base:
        line = f"| real vs real | | | | n = {result['num_samples']} | {base['fd']:.3f} |"
        if has_pr:
            line += f" {base['precision']:.3f} | {base['recall']:.3f} |"
        lines.append(line)
    return "\n".join(lines)


def plot(result: dict, path: Path, title: str | None = None) -> None:
    """FD against NFE (log-log), one line per engine and method, the real-vs-real baseline dashed."""
    try:
        import matplotlib
    except ImportError:
        raise PndmError("the sweep plot needs matplotlib: pip install 'pndm[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from pndm.fileio import atomic_path

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    curves: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    for r in result["rows"]:
        curves.setdefault((r["engine"], r["method"], r["grid"]), []).append((r["nfe"], r["fd"]))
    several_engines = len({key[0] for key in curves}) > 1
    for (engine, method, grid), points in curves.items():
        points.sort()
        label = method + (f" {grid} grid" if grid != "default" else "")
        label += f" ({engine})" if several_engines else ""
        ax.plot(*zip(*points, strict=True), marker="o", label=label)
    if result["real_vs_real"]:
        ax.axhline(result["real_vs_real"]["fd"], color="grey", linestyle="--", label="real vs real")
    ax.set_xscale("log")
    ax.set_yscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(plain)
    ax.set_xlabel("NFE (model evaluations per image)")
    ax.set_ylabel(f"Frechet distance ({result['features']} features)")
    clip = ", --clip-x0" if result["clip_x0"] else ""
    ax.set_title(title or f"{result['num_samples']} samples vs {result['reference']}{clip}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
