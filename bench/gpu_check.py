"""``make gpu-check``: the GPU tests and the GPU benchmark, on a machine with an NVIDIA GPU and
PyTorch (CUDA) but no internet. Installs nothing (the Makefile only runs
``pip install -e . --no-deps --no-build-isolation`` into the existing environment).

1. Preflight: which of torch (CUDA), diffusers, onnxruntime-gpu and TensorRT are here. Without a
   CUDA device it stops after one line saying so (exit 0: nothing to check on this machine).
2. Engines as a user builds them: ``pndm-export build --model cifar10 --random-init --precision P
   --pt2-device cuda`` for P = fp16 and bf16 (the CIFAR-10 DDPM UNet, 35.7M parameters, random
   weights: speed does not depend on training), each verified on the GPU by the export.
3. The sampling loop, at equal NFE (F-PNDM 20 steps = diffusers PNDMPipeline 20 steps = 29 model
   calls), batch 1 and 64: diffusers PNDMPipeline fp32 and fp16 eager (a UNet2DModel of the same
   architecture) against pndm's CUDA ``.pt2`` engines through the per-step solver loop and through
   the whole loop captured as one CUDA graph (:mod:`pndm.runtime.graph_loop`). Each configuration
   is warmed up once, then all are timed round-robin ``--repeats`` times; median and spread.
4. Whole commands as a user runs them, for 4 and 64 images: ``pndm-run sample --engine
   unet.fp16.cuda.pt2 --device cuda`` against ``bench/diffusers_pndm.py --device cuda`` (fp32 and
   fp16), one cold run each, then ``--rounds`` interleaved rounds.
5. ``pytest -m "cuda or trt"``, last: counts of passed / failed / skipped (TensorRT and ORT-CUDA
   tests skip with their reason when those packages are absent).
6. ``<out>/gpu_check.json`` and ``<out>/gpu_check.md`` (markdown tables).

    python bench/gpu_check.py --out build/gpu-check
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from common import GFLOP_PER_IMAGE_NFE, run_once, save_cifar10_unet

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def say(message: str) -> None:
    print(f"gpu-check: {message}", flush=True)


def preflight() -> dict:
    """What this machine has; ``cuda`` is None when torch sees no CUDA device."""
    import torch

    found = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "diffusers": importlib.util.find_spec("diffusers") is not None,
        "tensorrt": importlib.util.find_spec("tensorrt") is not None,
        "onnxruntime_cuda": False,
    }
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        found["onnxruntime_cuda"] = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    return found


def run_tests(out: Path) -> dict:
    """``pytest -m "cuda or trt"``; counts from its JUnit XML."""
    report = out / "pytest.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda or trt", f"--junitxml={report}", "tests"]
    say(" ".join(cmd[2:]))
    rc = subprocess.run(cmd, cwd=REPO).returncode
    counts = {"returncode": rc}
    if report.is_file():
        suite = ET.parse(report).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts.update({k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")})
    return counts


def build_engines(out: Path, precisions: list[str], batch_max: int, env: dict,
                  reuse: bool = False) -> dict[str, Path]:
    """``pndm-export build ... --pt2-device cuda`` per precision; {precision: unet.<p>.cuda.pt2}.
    ``reuse``: keep a package an earlier run left in ``out`` (with its manifest) instead of rebuilding."""
    engines = {}
    for precision in precisions:
        folder = out / f"engines-{precision}"
        package = folder / f"unet.{precision}.cuda.pt2"
        if reuse and package.is_file() and (folder / "manifest.json").is_file():
            say(f"reusing {package}")
            engines[precision] = package
            continue
        cmd = [str(BIN / "pndm-export"), "build", "--model", "cifar10", "--random-init", "--precision",
               precision, "--pt2-device", "cuda", "--trt", "off", "--batch", f"1:4:{batch_max}",
               "--calibration-steps", "4", "--calibration-count", "1", "--out", str(folder)]
        say(" ".join(cmd[1:]))
        started = time.perf_counter()
        subprocess.run(cmd, check=True, env=env)
        say(f"built in {time.perf_counter() - started:.0f} s")
        engines[precision] = package
    return engines


def loop_timings(args, engines: dict[str, Path], unet_dir: Path | None) -> list[dict]:
    """The sampling loop in this process (step 3 of the module doc)."""
    import torch

    from pndm.runtime.graph_loop import GraphLoop, trace_linear
    from pndm.runtime.loader import load_engine
    from pndm.solvers import METHODS, sample

    steps, nfe = args.steps, METHODS["f-pndm"].nfe(args.steps)
    batches = [int(b) for b in args.batches.split(",")]
    cases = []  # (name, batch, run) where run() samples one batch and leaves it on the GPU
    if unet_dir is not None:
        from diffusers_pndm import pipeline

        for dtype, label in ((torch.float32, "fp32"), (torch.float16, "fp16")):
            pipe = pipeline(unet_dir, "cuda", dtype)
            for batch in batches:
                def run(pipe=pipe, batch=batch):
                    with torch.inference_mode():
                        pipe(batch_size=batch, num_inference_steps=steps, output_type="pt",
                             generator=torch.Generator("cuda").manual_seed(0))
                cases.append((f"diffusers PNDMPipeline {label} eager", batch, run))
    for precision, path in engines.items():
        engine = load_engine(path, "cuda")
        schedule = engine.schedule
        program = trace_linear("f-pndm", steps, schedule)
        for batch in batches:
            x_T = torch.randn(batch, *engine.image_shape, generator=torch.Generator().manual_seed(0)).cuda()

            def per_step(engine=engine, x_T=x_T, schedule=schedule):
                sample(engine, x_T, "f-pndm", steps, schedule)

            loop = GraphLoop(engine, program, batch)
            cases.append((f"pndm .pt2 {precision}, per-step loop", batch, per_step))
            graph_name = f"pndm .pt2 {precision}, whole-loop CUDA graph"
            cases.append((graph_name, batch, lambda loop=loop, x=x_T: loop(x)))

    def timed(run) -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        torch.cuda.synchronize()
        return time.perf_counter() - start

    times = {i: [] for i in range(len(cases))}
    for name, batch, run in cases:
        say(f"warm-up: {name}, batch {batch}")
        timed(run)
    for r in range(args.repeats):
        for i, (_, _, run) in enumerate(cases):
            times[i].append(timed(run))
        say(f"round {r + 1}/{args.repeats} done")
    rows = []
    for i, (name, batch, _) in enumerate(cases):
        median = statistics.median(times[i])
        rows.append({
            "runner": name, "batch": batch, "nfe": nfe, "median_s": median, "min_s": min(times[i]),
            "max_s": max(times[i]), "all_s": times[i], "images_per_s": batch / median,
        })
    return rows


def command_timings(args, engine: Path, unet_dir: Path | None, out: Path, env: dict,
                    on_round=None) -> list[dict]:
    """Whole commands from the shell (step 4 of the module doc): rows like :func:`loop_timings`'s, with
    the batch being the image count and ``phases`` the median of each command's own phase record.
    ``on_round(rows)`` after each round, with the rows so far (a run cut short keeps the rounds done)."""
    from pndm.solvers import METHODS

    steps, nfe = args.steps, METHODS["f-pndm"].nfe(args.steps)
    runners = {f"pndm-run sample, {engine.name} + whole-loop CUDA graph": lambda num, folder: [
        str(BIN / "pndm-run"), "sample", "--engine", str(engine), "--device", "cuda", "--method", "f-pndm",
        "--steps", str(steps), "-n", str(num), "--batch", str(num), "--out", str(folder), "--no-progress"]}
    if unet_dir is not None:
        for dtype in ("fp32", "fp16"):
            runners[f"diffusers PNDMPipeline script, {dtype} eager"] = lambda num, folder, dtype=dtype: [
                sys.executable, str(REPO / "bench" / "diffusers_pndm.py"), "--unet", str(unet_dir),
                "--device", "cuda", "--dtype", dtype, "--steps", str(steps), "-n", str(num),
                "--out", str(folder)]
    nums = [int(n) for n in args.command_images.split(",")]
    cases = [(name, num) for num in nums for name in runners]
    results = {case: [] for case in cases}
    failed = {}  # (name, num): the failing command's last error line; it is not run again
    for round_index in range(args.rounds + 1):  # round 0: the cold run (empty engine cache), not counted
        for index, (name, num) in enumerate(cases):
            if (name, num) in failed:
                continue
            folder = out / "commands" / f"round{round_index}-case{index}"
            try:
                results[(name, num)].append(run_once(runners[name](num, folder), folder, env))
            except RuntimeError as e:
                lines = str(e).strip().splitlines()  # the command and how it ended ... the last error line
                error = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
                failed[(name, num)] = error = error[:300]
                say(f"{name}, {num} images failed: {error}")
        say(f"whole commands: round {round_index}/{args.rounds} done")
        if on_round is not None:
            on_round(command_rows(results, failed, nfe))
    return command_rows(results, failed, nfe)


def command_rows(results: dict, failed: dict, nfe: int) -> list[dict]:
    """Rows of :func:`command_timings` from each case's runs (the first one cold, not counted) and the
    failed cases' errors; a case with no timed run yet has no row."""
    rows = [{"runner": name, "batch": num, "nfe": nfe, "error": error}
            for (name, num), error in failed.items()]
    for (name, num), runs in results.items():
        if (name, num) in failed or len(runs) < 2:
            continue
        walls = [r["wall"] for r in runs[1:]]
        median = statistics.median(walls)
        rows.append({
            "runner": name, "batch": num, "nfe": nfe, "median_s": median, "min_s": min(walls),
            "max_s": max(walls), "all_s": walls, "cold_s": runs[0]["wall"], "images_per_s": num / median,
            "phases": {k: statistics.median(r["phases"].get(k, 0) for r in runs[1:])
                       for k in runs[1]["phases"]},
        })
    return rows


def table(rows: list[dict], base_prefix: str, count: str) -> list[str]:
    """Markdown rows, fastest last per ``count`` (batch or images), with the speed-up over the runner
    whose name starts with ``base_prefix`` at the same count."""
    lines = [
        f"| runner | {count} | NFE | median s | min-max s | images/s | TFLOP/s | vs diffusers fp32 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    base = {r["batch"]: r["median_s"] for r in rows
            if r["runner"].startswith(base_prefix) and "error" not in r}
    for r in sorted(rows, key=lambda r: (r["batch"], -r.get("median_s", float("inf")))):
        if "error" in r:
            lines.append(f"| {r['runner']} | {r['batch']} | {r['nfe']} | failed: {r['error']} | | | | |")
            continue
        ratio = f"{base[r['batch']] / r['median_s']:.2f}x" if r["batch"] in base else "-"
        tflops = GFLOP_PER_IMAGE_NFE * r["batch"] * r["nfe"] / r["median_s"] / 1e3
        lines.append(
            f"| {r['runner']} | {r['batch']} | {r['nfe']} | {r['median_s']:.3f} | {r['min_s']:.3f}-"
            f"{r['max_s']:.3f} | {r['images_per_s']:.1f} | {tflops:.1f} | {ratio} |"
        )
    return lines


def markdown(found: dict, tests: dict, rows: list[dict], commands: list[dict] | None = None) -> str:
    lines = [
        f"GPU: {found['cuda']}, torch {found['torch']} (CUDA {found['torch_cuda']}); "
        f"TensorRT {'present' if found['tensorrt'] else 'absent'}, onnxruntime CUDA "
        f"{'present' if found['onnxruntime_cuda'] else 'absent'}.",
        "",
        f"Tests (`pytest -m \"cuda or trt\"`): {tests}",
        "",
        "Sampling loop (in one process, after a warm-up):",
        "",
        *table(rows, "diffusers PNDMPipeline fp32", "batch"),
    ]
    if commands:
        lines += ["", "Whole commands from the shell (import, load, sample, write PNGs; after one cold run):",
                  "",
                  *table(commands, "diffusers PNDMPipeline script, fp32", "images"), ""]
        for r in (r for r in commands if "error" not in r):
            phases = ", ".join(f"{k} {v:.2f}" for k, v in r["phases"].items())
            lines.append(f"- {r['runner']}, {r['batch']} images: cold {r['cold_s']:.2f} s; "
                         f"phases (s): {phases}")
    return "\n".join(lines) + "\n"


def write_results(out: Path, found: dict, result: dict) -> str:
    """``gpu_check.json`` and ``gpu_check.md`` from what ``result`` holds so far; returns the markdown."""
    result["markdown"] = markdown(found, result["tests"], result["timings"], result.get("commands"))
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "gpu_check.md").write_text(result["markdown"])
    return result["markdown"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "build" / "gpu-check", help="results folder")
    parser.add_argument("--steps", type=int, default=20, help="F-PNDM / PNDMPipeline steps (default 20)")
    parser.add_argument("--precisions", default="fp16,bf16",
                        help="CUDA .pt2 engines to build and time (default fp16,bf16; commands use fp16)")
    parser.add_argument("--batches", default="1,64", help="batch sizes (default 1,64)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds after a warm-up (default 5)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="timed whole-command rounds after a cold one (default 3)")
    parser.add_argument("--command-images", default="4,64", help="whole-command image counts (default 4,64)")
    parser.add_argument("--no-tests", action="store_true", help="skip the pytest run")
    parser.add_argument("--reuse-engines", action="store_true",
                        help="use the packages an earlier run built in --out instead of exporting again")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    found = preflight()
    say(", ".join(f"{k} {v}" for k, v in found.items()))
    result = {"machine": found, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if found["cuda"] is None:
        say(f"no CUDA device (torch {found['torch']} sees none): nothing to check on this machine")
        result["skipped"] = "no CUDA device"
        (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
        return 0
    if not found["tensorrt"]:
        say("TensorRT is not installed: its tests and engines skip (it cannot be installed offline)")
    if not found["onnxruntime_cuda"]:
        say("onnxruntime-gpu is not installed: ONNX Runtime CUDA paths skip")
    result["tests"] = {}
    # one cache and trust root for the exports (subprocesses) and this process, which loads what they built
    os.environ["PNDM_CACHE_DIR"] = str((args.out / "cache").absolute())
    env = dict(os.environ)
    batches = [int(b) for b in args.batches.split(",")] + [int(n) for n in args.command_images.split(",")]
    engines = build_engines(args.out, args.precisions.split(","), max(batches), env, args.reuse_engines)
    unet_dir = save_cifar10_unet(args.out / "diffusers-unet") if found["diffusers"] else None
    if unet_dir is None:
        say("diffusers is not installed: no diffusers baseline (carry its wheel, or pip install diffusers)")
    result["timings"] = loop_timings(args, engines, unet_dir)
    write_results(args.out, found, result)  # the loop table stands even if a whole command fails later
    command_engine = engines.get("fp16", next(iter(engines.values())))

    def commands_so_far(rows):
        result["commands"] = rows
        write_results(args.out, found, result)

    result["commands"] = command_timings(args, command_engine, unet_dir, args.out, env, commands_so_far)
    if not args.no_tests:  # last, so that a long test run cannot cost the timings already taken
        result["tests"] = run_tests(args.out)
    print(write_results(args.out, found, result))
    return 1 if result["tests"].get("returncode", 0) not in (0, 5) else 0


if __name__ == "__main__":
    sys.exit(main())
