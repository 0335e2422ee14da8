"""End-to-end CPU sampling benchmark: pndm-run's engines against diffusers' pipelines.

One run, side by side, on the google/ddpm-cifar10-32 architecture (35.7M parameters, random
weights: speed does not depend on training):

1. a diffusers ``UNet2DModel`` of that config is saved with ``save_pretrained``;
2. it is loaded through ``pndm.models.load`` and exported with ``pndm-export build
   --precision bf16`` (fp32 ``unet.onnx`` + bf16 AOTInductor ``unet.bf16.pt2``);
3. at equal NFE (29 = diffusers PNDM with 20 steps = our F-PNDM with 20 steps = DDIM with 29
   steps) and batch 1 and 4, it times diffusers ``PNDMPipeline`` and ``DDIMPipeline`` and
   pndm's sampling loop over the torch fp32, ONNX Runtime fp32 and bf16 .pt2 engines;
4. it runs the accuracy checker on the bf16 and fp32 ONNX engines.

Times are wall-clock seconds for a whole batch (noise, every model call, solver updates, the
result on the CPU): every configuration is warmed up once, then all are timed round-robin
``--repeats`` times (so a shared machine's changing load hits them alike); the median is kept.

    .venv/bin/python bench/bench_sampling.py --work build/bench --json build/bench/results.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHAPES = REPO.parent / "shared" / "testdata" / "diffusers_ddpm_cifar10_state_dict_shapes.json"
BIN = Path(sys.executable).parent


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def make_diffusers_unet(folder: Path) -> Path:
    """A random-init UNet2DModel in the ddpm-cifar10-32 config, saved with save_pretrained."""
    from diffusers import UNet2DModel

    if (folder / "config.json").is_file():
        return folder
    config = json.loads(SHAPES.read_text())["config"]
    torch.manual_seed(0)
    UNet2DModel(**config).save_pretrained(folder)
    return folder


def export_engines(unet_dir: Path, out: Path) -> Path:
    """pndm-export build --precision bf16: unet.onnx (fp32) and unet.bf16.pt2, batch 1..8."""
    if (out / "unet.bf16.pt2").is_file() and (out / "manifest.json").is_file():
        return out
    cmd = [
        str(BIN / "pndm-export"),
        "build",
        "--checkpoint",
        str(unet_dir),
        "--out",
        str(out),
        "--precision",
        "bf16",
        "--batch",
        "1:4:8",
        "--trt",
        "off",
    ]
    log(" ".join(cmd))
    subprocess.run(cmd, check=True)
    return out


@dataclass
class Case:
    """One timed configuration: a runner over an engine at a batch size."""

    runner: str
    engine: str
    steps: int
    batch: int
    run: Callable[[], int]  # samples one batch, returns the model calls it made
    nfe: int = 0
    times: list = field(default_factory=list)


def diffusers_cases(unet_dir: Path, pndm_steps: int, ddim_steps: int, batches: list[int]) -> list[Case]:
    from diffusers import DDIMPipeline, DDIMScheduler, PNDMPipeline, PNDMScheduler, UNet2DModel

    unet = UNet2DModel.from_pretrained(unet_dir).eval()
    calls = []
    unet.register_forward_pre_hook(lambda module, args: calls.append(1))  # counts NFE
    pipes = {
        "diffusers PNDMPipeline": (
            PNDMPipeline(unet=unet, scheduler=PNDMScheduler(beta_schedule="linear")),
            pndm_steps,
        ),
        "diffusers DDIMPipeline": (
            DDIMPipeline(unet=unet, scheduler=DDIMScheduler(beta_schedule="linear")),
            ddim_steps,
        ),
    }
    cases = []
    for name, (pipe, steps) in pipes.items():
        pipe.set_progress_bar_config(disable=True)
        for batch in batches:

            def run(pipe=pipe, steps=steps, batch=batch):
                calls.clear()
                with torch.inference_mode():
                    pipe(
                        batch_size=batch,
                        num_inference_steps=steps,
                        generator=torch.Generator().manual_seed(0),
                        output_type="np",
                    )
                return len(calls)

            cases.append(Case(name, "torch fp32 eager", steps, batch, run))
    return cases


def pndm_cases(engines: dict, method: str, steps: int, batches: list[int]) -> list[Case]:
    from pndm.runtime.sampling import sample_seeds

    cases = []
    for name, engine in engines.items():
        for batch in batches:

            def run(engine=engine, batch=batch):
                result = sample_seeds(
                    engine, list(range(batch)), method=method, steps=steps, batch=batch, progress=False
                )
                return result.model_calls

            cases.append(Case(f"pndm-run {method}", name, steps, batch, run))
    return cases


def time_cases(cases: list[Case], repeats: int) -> list[dict]:
    """Warm every case up once (counting its NFE), then time them round-robin ``repeats`` times.

    Round-robin spreads the load of a shared machine evenly over the runners being compared.
    """
    for case in cases:
        case.nfe = case.run()
        log(f"warm-up {case.runner} / {case.engine} / batch {case.batch}: NFE {case.nfe}")
    for r in range(repeats):
        for case in cases:
            start = time.perf_counter()
            case.run()
            case.times.append(time.perf_counter() - start)
        log(f"round {r + 1}/{repeats} done")
    return [
        {
            "runner": c.runner,
            "engine": c.engine,
            "steps": c.steps,
            "nfe": c.nfe,
            "batch": c.batch,
            "seconds": statistics.median(c.times),
            "all_seconds": c.times,
        }
        for c in cases
    ]


def checks(engines: dict, reference, steps: int) -> dict:
    from pndm.runtime.checker import check_engine

    results = {}
    for name, engine in engines.items():
        if engine.backend == "torch":
            continue
        report = check_engine(
            engine, reference, list(range(4)), method="f-pndm", steps=steps, batch=4, progress=False
        )
        d = report.to_dict()
        results[name] = {
            "passed": d["passed"],
            "failures": d["failures"],
            "worst_rel_l2": d["lockstep"]["worst_rel_l2"],
            **d["images"],
        }
        log(
            f"check {name}: {'PASS' if d['passed'] else 'FAIL'} rel L2 {d['lockstep']['worst_rel_l2']:.2e} "
            f"max grey diff {d['images'].get('max_grey_diff')}"
        )
    return results


def machine() -> dict:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
            if line.startswith("Model name")
        ),
        platform.processor(),
    )
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    return {
        "cpu": model,
        "cores": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_at_start": load,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def markdown(results: dict) -> str:
    """The results table: best (least disturbed) and median time per batch, speed-up vs PNDMPipeline."""
    rows = results["timings"]
    base = {r["batch"]: r for r in rows if r["runner"] == "diffusers PNDMPipeline"}
    lines = [
        "| runner | engine | NFE | batch | best s / batch | median s / batch | best images/s | best ms / NFE "
        "| vs PNDMPipeline (best) | vs PNDMPipeline (median) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in sorted(rows, key=lambda r: (r["batch"], -min(r["all_seconds"]))):
        best, ref = min(r["all_seconds"]), base[r["batch"]]
        lines.append(
            f"| {r['runner']} | {r['engine']} | {r['nfe']} | {r['batch']} | {best:.2f} | "
            f"{r['seconds']:.2f} | {r['batch'] / best:.2f} | {best / r['nfe'] * 1e3:.0f} | "
            f"{min(ref['all_seconds']) / best:.2f}x | {ref['seconds'] / r['seconds']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--work",
        type=Path,
        default=REPO / "build" / "bench",
        help="folder for the diffusers UNet and the engines (default: build/bench)",
    )
    parser.add_argument("--steps", type=int, default=20, help="F-PNDM / diffusers PNDM steps (default: 20)")
    parser.add_argument("--batches", default="1,4", help="batch sizes (default: 1,4)")
    parser.add_argument(
        "--repeats", type=int, default=2, help="timed runs per point after a warm-up (default: 2)"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here (default: none)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for every runner: torch and ONNX Runtime (default: one per core)",
    )
    args = parser.parse_args(argv)
    from pndm.fileio import atomic_write_text
    from pndm.runtime import load_engine
    from pndm.runtime.sampling import nfe_of

    batches = [int(b) for b in args.batches.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {"machine": machine(), "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])])}
    unet_dir = make_diffusers_unet(args.work / "diffusers-unet")
    engine_dir = export_engines(unet_dir, args.work / "engines")
    nfe = nfe_of("f-pndm", args.steps)
    engines = {
        "torch fp32 eager": load_engine(unet_dir, device="cpu"),
        "ONNX Runtime fp32": load_engine(engine_dir / "unet.onnx", device="cpu", threads=args.threads),
        "AOTInductor bf16 (.pt2)": load_engine(engine_dir / "unet.bf16.pt2", device="cpu"),
    }
    cases = diffusers_cases(unet_dir, args.steps, nfe, batches) + pndm_cases(
        engines, "f-pndm", args.steps, batches
    )
    results["timings"] = time_cases(cases, args.repeats)
    results["checks"] = checks(engines, engines["torch fp32 eager"], args.steps)
    results["markdown"] = markdown(results)
    print(results["markdown"])
    print(json.dumps(results["checks"], indent=2))
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
