"""Whole-command CPU benchmark: ``pndm-run sample`` against a script running diffusers' PNDMPipeline.

What a user waits for, from the shell: interpreter start, imports, loading, sampling, writing PNGs.
Same CIFAR-10 DDPM UNet architecture on both sides (35.7M parameters, random weights, seed 0;
speed does not depend on training), equal NFE (F-PNDM with S steps = PNDMPipeline with S steps =
S + 9 model calls), all images in one batch.

1. ``pndm-export build --model cifar10 --random-init --precision P --trt off`` (fp32 ``unet.onnx``
   + ``unet.bf16.pt2`` for P = bf16, or + the int8 CPU form ``unet.int8-cpu.onnx`` for P = int8) and
   a diffusers ``UNet2DModel`` of that architecture. ``--checkpoint``: export a pndm checkpoint of
   the CIFAR-10 architecture instead of random weights (an int8 engine's checker result depends on
   the weights: a random network's sampling is chaotic);
2. ``pndm-run check`` on the fast engine (the fastest CPU engine must pass it);
3. a cold-cache first run of every command (also the warm-up; the engine cache under
   ``<work>/cache/engines`` is emptied first), then ``--rounds`` rounds, each
   running every (command, image count) once, interleaved round-robin so a shared machine's
   changing load hits all alike; median, min and max per command, and the ratio to diffusers;
4. a roofline line: the measured matmul peak (bf16, fp32) of this machine and the share of it each
   runner's sampling phase reaches at 12.44 GFLOP per image per model call.

    python bench/bench_command.py --work build/bench-command --json build/bench-command/results.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import GFLOP_PER_IMAGE_NFE, run_once, save_cifar10_unet

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine() -> dict:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    return {
        "cpu": fields.get("Model name", "?").strip(),
        "cpus": fields.get("CPU(s)", "?").strip(),
        "flags": [flag for flag in FLAGS if flag in flags],
        "torch": torch.__version__,
        "load_average_at_start": load,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def matmul_peak(dtype: torch.dtype, n: int = 1024, seconds: float = 1.5) -> float:
    """Best GFLOP/s of an n x n matmul over a few ``seconds`` windows (torch's thread count)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.matmul(a, b)
    best = 0.0
    for _ in range(3):
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 3:
            torch.matmul(a, b)
            count += 1
        best = max(best, 2 * n**3 * count / (time.perf_counter() - start) / 1e9)
    return best


# runner key -> (label, engine file, precision of its matmuls) of the pndm-run runners
PNDM_RUNNERS = {
    "pt2": ("pndm-run sample: AOTInductor bf16 (.pt2)", "unet.bf16.pt2", "bf16"),
    "int8": ("pndm-run sample: ONNX Runtime int8 CPU form", "unet.int8-cpu.onnx", "fp32"),
    "onnx": ("pndm-run sample: ONNX Runtime fp32", "unet.onnx", "fp32"),
}
FAST_ENGINE = {"bf16": PNDM_RUNNERS["pt2"][1], "int8": PNDM_RUNNERS["int8"][1]}  # by --precision


def prepare(work: Path, env: dict, precision: str = "bf16",
            checkpoint: Path | None = None) -> tuple[Path, Path]:
    engines, unet_dir = work / "engines", work / "diffusers-unet"
    if not (engines / FAST_ENGINE[precision]).is_file():
        source = ["--checkpoint", str(checkpoint)] if checkpoint else ["--model", "cifar10", "--random-init"]
        cmd = [str(BIN / "pndm-export"), "build", *source, "--precision", precision, "--batch", "1:4:64",
               "--trt", "off", "--out", str(engines)]
        log(" ".join(cmd))
        subprocess.run(cmd, check=True, env=env)
    if not (unet_dir / "config.json").is_file():
        save_cifar10_unet(unet_dir)
    return engines, unet_dir


def commands(engines: Path, unet_dir: Path, steps: int, threads: int | None) -> dict:
    """key -> (runner label, argv builder (num, out) -> list, precision of its matmuls)."""
    thread_args = ["--threads", str(threads)] if threads else []

    def pndm(engine: str):
        return lambda num, out: [
            str(BIN / "pndm-run"), "sample", "--engine", str(engines / engine), "--method", "f-pndm",
            "--steps", str(steps), "-n", str(num), "--out", str(out), "--no-progress", *thread_args,
        ]

    def diffusers(num, out):
        return [sys.executable, str(REPO / "bench" / "diffusers_pndm.py"), "--unet", str(unet_dir),
                "--steps", str(steps), "-n", str(num), "--out", str(out), *thread_args]

    runners = {key: (label, pndm(engine), kind) for key, (label, engine, kind) in PNDM_RUNNERS.items()
               if (engines / engine).is_file()}  # the export's precision decides which are there
    runners["diffusers"] = ("diffusers PNDMPipeline script (fp32 eager)", diffusers, "fp32")
    return runners


def call_throughput(engines: Path, names: list[str], batches: list[int], env: dict,
                    threads: int | None) -> list:
    """Images per second of one model call per engine and batch size, in this process, round-robin
    after one warm-up call each (the sampling loop's rate is this divided by the NFE)."""
    os.environ["PNDM_CACHE_DIR"] = env["PNDM_CACHE_DIR"]
    from pndm.runtime.loader import load_engine

    loaded = {name: load_engine(engines / name, "cpu", threads=threads) for name in names}
    inputs = {b: (torch.randn(b, *next(iter(loaded.values())).image_shape), torch.full((b,), 500.0))
              for b in batches}
    for engine in loaded.values():
        for b in batches:
            engine(*inputs[b])
    rows = []
    for name, engine in loaded.items():
        for b in batches:
            start = time.perf_counter()
            engine(*inputs[b])
            seconds = time.perf_counter() - start
            rows.append({"engine": name, "batch": b, "call_s": seconds, "images_per_s_per_call": b / seconds})
            log(f"{name} batch {b}: {seconds:.3f} s per call")
    return rows


def summarize(runs: dict, nfe: int, peaks: dict, kinds: dict) -> list[dict]:
    rows = []
    for (name, num), items in runs.items():
        walls = [r["wall"] for r in items["warm"]]
        sampling = statistics.median(
            r["phases"]["sampling"] + r["phases"].get("warm_up", 0) for r in items["warm"]
        )
        rows.append({
            "runner": name, "images": num, "nfe": nfe, "median_s": statistics.median(walls),
            "min_s": min(walls), "max_s": max(walls), "all_s": walls, "cold_s": items["cold"]["wall"],
            "cold_phases": items["cold"]["phases"], "cold_cache": items["cold"]["cache"],
            "phases_median": {k: statistics.median(r["phases"].get(k, 0) for r in items["warm"])
                              for k in items["warm"][0]["phases"]},
            "sampling_s": sampling, "images_per_s_sampling": num / sampling,
            "peak_share": GFLOP_PER_IMAGE_NFE * num * nfe / sampling / peaks[kinds[name]],
        })
    for row in rows:
        base = [r for r in rows if r["images"] == row["images"] and r["runner"].startswith("diffusers")]
        if base:
            row["speedup_median"] = base[0]["median_s"] / row["median_s"]
            row["speedup_per_round"] = [b / a for a, b in zip(row["all_s"], base[0]["all_s"], strict=True)]
    return rows


def _speedup(row: dict) -> str:
    if "speedup_median" not in row:
        return "-"
    pairs = row["speedup_per_round"]
    return f"{row['speedup_median']:.2f}x ({min(pairs):.2f}-{max(pairs):.2f})"


def markdown(rows: list[dict], peaks: dict) -> str:
    lines = [
        "| runner | images | NFE | whole command, median s (min-max) | cold cache s | vs diffusers "
        "(median; per-round range) | sampling s | images/s (sampling) | share of matmul peak |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in sorted(rows, key=lambda r: (r["images"], -r["median_s"])):
        lines.append(
            f"| {r['runner']} | {r['images']} | {r['nfe']} | {r['median_s']:.2f} "
            f"({r['min_s']:.2f}-{r['max_s']:.2f}) "
            f"| {r['cold_s']:.2f} | {_speedup(r)} | {r['sampling_s']:.2f} | {r['images_per_s_sampling']:.2f} "
            f"| {100 * r['peak_share']:.0f} % |"
        )
    lines.append("")
    lines.append(f"Matmul peak (1024x1024, this machine, same threads): bf16 {peaks['bf16']:.0f} GFLOP/s, "
                 f"fp32 {peaks['fp32']:.0f} GFLOP/s; {GFLOP_PER_IMAGE_NFE} GFLOP per image per model call.")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=REPO / "build" / "bench-command", help="engines, UNet")
    parser.add_argument("--steps", type=int, default=10, help="F-PNDM / PNDMPipeline steps (default 10)")
    parser.add_argument("--nums", default="1,4,64", help="image counts, one batch each (default 1,4,64)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds after the cold run (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="threads for every runner (default theirs)")
    parser.add_argument("--skip", default="", help="runners to leave out: pt2,onnx,diffusers or e.g. onnx@64")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--precision", choices=sorted(FAST_ENGINE), default="bf16",
                        help="the fast engine to export beside fp32 ONNX (default bf16)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="export this CIFAR-10-architecture pndm checkpoint (default: random weights)")
    parser.add_argument("--no-check", action="store_true", help="skip pndm-run check (run it apart)")
    parser.add_argument("--check-engine", default=None,
                        help="engine file the check runs on (default: the --precision engine)")
    parser.add_argument("--call-batches", default="", help="also time one model call at these batch sizes "
                        "(e.g. 1,4,64) for the --call-engines, in this process")
    parser.add_argument("--call-engines", default="unet.onnx,unet.bf16.pt2", help="engine files for that")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = {"machine": machine(), "command": " ".join(["bench/bench_command.py", *(argv or sys.argv[1:])])}
    # one cache root for the export (its record of the engines it built) and the runs (their caches)
    env = {**os.environ, "PNDM_CACHE_DIR": str(args.work / "cache")}
    engines, unet_dir = prepare(args.work, env, args.precision, args.checkpoint)
    args.check_engine = args.check_engine or FAST_ENGINE[args.precision]
    nums = [int(n) for n in args.nums.split(",")]
    cmds = commands(engines, unet_dir, args.steps, args.threads)
    thread_args = ["--threads", str(args.threads)] if args.threads else []
    skip = set(args.skip.split(","))
    check = None
    if not args.no_check:
        check = subprocess.run([str(BIN / "pndm-run"), "check", "--engine", str(engines / args.check_engine),
                                "--steps", str(args.steps), "-n", "4", "--no-progress", *thread_args],
                               capture_output=True, text=True, env=env)
    if check is not None:
        result["check"] = {"engine": args.check_engine, "passed": check.returncode == 0,
                           "report": check.stdout.strip().splitlines()}
        log(f"check {args.check_engine}: {'PASS' if check.returncode == 0 else 'FAIL'}")
    peaks = {"bf16": matmul_peak(torch.bfloat16), "fp32": matmul_peak(torch.float32)}
    log(f"matmul peak: bf16 {peaks['bf16']:.0f}, fp32 {peaks['fp32']:.0f} GFLOP/s")
    runs: dict = {}
    shutil.rmtree(args.work / "cache" / "engines", ignore_errors=True)  # the first runs start cold
    with tempfile.TemporaryDirectory(prefix="pndm-bench-out-") as scratch:
        for r in range(-1, args.rounds):  # round -1: the cold-cache first runs
            for num in nums:
                for key, (name, build, _) in cmds.items():
                    if key in skip or f"{key}@{num}" in skip:
                        continue
                    out = Path(scratch) / f"{key}-{r + 1}-{num}"
                    record = run_once(build(num, out), out, env)
                    slot = runs.setdefault((name, num), {"cold": None, "warm": []})
                    if r < 0:
                        slot["cold"] = record
                    else:
                        slot["warm"].append(record)
                    log(f"round {r + 1}: {name}, {num} images: {record['wall']:.2f} s")
                    if args.json:  # raw records so far, in case the run has to be cut short
                        partial = [{"runner": k[0], "images": k[1], **v} for k, v in runs.items()]
                        args.json.parent.mkdir(parents=True, exist_ok=True)
                        args.json.with_suffix(".partial.json").write_text(json.dumps(partial, indent=1))
    if args.call_batches:
        call_batches = [int(b) for b in args.call_batches.split(",")]
        result["per_call"] = call_throughput(engines, args.call_engines.split(","), call_batches, env,
                                             args.threads)
    peaks_end = {"bf16": matmul_peak(torch.bfloat16), "fp32": matmul_peak(torch.float32)}
    peaks = {k: max(peaks[k], peaks_end[k]) for k in peaks}
    with open("/proc/loadavg") as f:
        result["machine"]["load_average_at_end"] = f.read().split()[:3]
    nfe = args.steps + 9
    result["matmul_peak_gflops"] = peaks
    result["timings"] = summarize(runs, nfe, peaks, {name: kind for name, _, kind in cmds.values()})
    result["markdown"] = markdown(result["timings"], peaks) + "".join(
        f"\n{r['engine']}, one model call at batch {r['batch']}: {r['call_s']:.3f} s, "
        f"{r['images_per_s_per_call']:.2f} images/s per call ({r['images_per_s_per_call'] / nfe:.3f} "
        f"images/s at NFE {nfe})" for r in result.get("per_call", [])
    )
    print(result["markdown"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
