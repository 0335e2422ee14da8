"""``make gpu-check``: the GPU tests and the GPU benchmark, on a machine with an NVIDIA GPU and
PyTorch (CUDA) but no internet. Installs nothing (the Makefile only runs
``pip install -e . --no-deps --no-build-isolation`` into the existing environment).

1. Preflight: which of torch (CUDA), diffusers, onnxruntime-gpu and TensorRT are here. Without a
   CUDA device it stops after one line saying so (exit 0: nothing to check on this machine).
2. ``pytest -m "cuda or trt"``: counts of passed / failed / skipped (TensorRT and ORT-CUDA tests
   skip with their reason when those packages are absent).
3. The benchmark, on the CIFAR-10 DDPM UNet architecture (35.7M parameters, random weights,
   seed 0: speed does not depend on training), at equal NFE (F-PNDM 20 steps = diffusers
   PNDMPipeline 20 steps = 29 model calls), batch 1 and 64:
   diffusers PNDMPipeline fp32 and fp16 eager, against pndm's CUDA ``.pt2`` engines (fp16 and
   bf16, compiled here with AOTInductor) through the per-step solver loop and through the whole
   loop captured as one CUDA graph (:mod:`pndm.runtime.graph_loop`). Each configuration is warmed
   up once, then all are timed round-robin ``--repeats`` times; median and spread are reported.
4. ``<out>/gpu_check.json`` and ``<out>/gpu_check.md`` (a markdown table).

    python bench/gpu_check.py --out build/gpu-check
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GFLOP_PER_IMAGE_NFE = 12.44  # CIFAR-10 DDPM UNet, one model call on one 32x32 image

# diffusers' google/ddpm-cifar10-32 configuration (the original DDPM CIFAR-10 UNet).
CIFAR10_CONFIG = {
    "sample_size": 32, "in_channels": 3, "out_channels": 3, "layers_per_block": 2,
    "block_out_channels": [128, 256, 256, 256],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "norm_eps": 1e-6, "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1,
    "attention_head_dim": None, "resnet_time_scale_shift": "default", "time_embedding_type": "positional",
}


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


def compile_cuda_pt2(model, precision: str, path: Path, max_batch: int) -> Path:
    """AOTInductor package of ``model`` at ``precision`` for the current CUDA device."""
    import torch

    from pndm.export.precision import engine_module

    module = engine_module(model, precision).cuda().eval()
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    x = torch.randn(2, 3, 32, 32, device="cuda")
    t = torch.tensor([10.0, 900.0], device="cuda")
    with torch.no_grad():
        program = torch.export.export(module, (x, t), dynamic_shapes={"x": {0: batch}, "t": {0: batch}})
        torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    return path


class CudaPackage:
    """A CUDA ``.pt2`` as an eps engine (what the solvers and the graph loop need)."""

    def __init__(self, path: Path, image_shape=(3, 32, 32)):
        import torch

        self.device = torch.device("cuda")
        self.image_shape = image_shape
        # run_single_threaded: no thread-synchronisation events, which a CUDA graph capture refuses
        self.module = torch._inductor.aoti_load_package(str(path), run_single_threaded=True)

    def __call__(self, x, t):
        import torch

        with torch.inference_mode():
            out = self.module(x, t)
        return (out[0] if isinstance(out, (tuple, list)) else out).float()


def benchmark(args, out: Path) -> list[dict]:
    import torch

    from pndm.models import load
    from pndm.runtime.graph_loop import GraphLoop, trace_linear
    from pndm.schedules import make_schedule
    from pndm.solvers import METHODS, sample

    steps, nfe = args.steps, METHODS["f-pndm"].nfe(args.steps)
    batches = [int(b) for b in args.batches.split(",")]
    cases = []  # (name, batch, run) where run() samples one batch and leaves it on the GPU
    unet_dir = out / "diffusers-unet"
    if args.diffusers:
        from diffusers import PNDMPipeline, PNDMScheduler, UNet2DModel

        torch.manual_seed(0)
        UNet2DModel(**CIFAR10_CONFIG).save_pretrained(unet_dir)
        for dtype, label in ((torch.float32, "fp32"), (torch.float16, "fp16")):
            unet = UNet2DModel.from_pretrained(unet_dir, torch_dtype=dtype).cuda().eval()
            # PNDMPipeline draws float32 noise: hand the fp16 UNet its own dtype
            unet.register_forward_pre_hook(lambda m, args, dtype=dtype: (args[0].to(dtype), *args[1:]))
            pipe = PNDMPipeline(unet=unet, scheduler=PNDMScheduler(beta_schedule="linear"))
            pipe.set_progress_bar_config(disable=True)
            for batch in batches:
                def run(pipe=pipe, batch=batch):
                    with torch.inference_mode():
                        pipe(batch_size=batch, num_inference_steps=steps, output_type="pt",
                             generator=torch.Generator("cuda").manual_seed(0))
                cases.append((f"diffusers PNDMPipeline {label} eager", batch, run))
        model, spec = load(str(unet_dir))
    else:
        say("diffusers is not installed: no diffusers baseline (pip install diffusers where you can)")
        model, spec = load("cifar10", random_init=True)
    schedule = make_schedule(spec.schedule, spec.T)
    program = trace_linear("f-pndm", steps, schedule)
    for precision in ("fp16", "bf16"):
        path = out / f"unet.{precision}.cuda.pt2"
        say(f"compiling {path.name} with AOTInductor")
        engine = CudaPackage(compile_cuda_pt2(model.float(), precision, path, max(batches)))
        for batch in batches:
            x_T = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0)).cuda()

            def per_step(engine=engine, x_T=x_T):
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
            "tflops": GFLOP_PER_IMAGE_NFE * batch * nfe / median / 1e3,
        })
    return rows


def markdown(found: dict, tests: dict, rows: list[dict]) -> str:
    lines = [
        f"GPU: {found['cuda']}, torch {found['torch']} (CUDA {found['torch_cuda']}); "
        f"TensorRT {'present' if found['tensorrt'] else 'absent'}, onnxruntime CUDA "
        f"{'present' if found['onnxruntime_cuda'] else 'absent'}.",
        "",
        f"Tests (`pytest -m \"cuda or trt\"`): {tests}",
        "",
        "| runner | batch | NFE | median s | min-max s | images/s | TFLOP/s | vs diffusers fp32 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    base = {r["batch"]: r["median_s"] for r in rows if r["runner"].startswith("diffusers PNDMPipeline fp32")}
    for r in sorted(rows, key=lambda r: (r["batch"], -r["median_s"])):
        ratio = f"{base[r['batch']] / r['median_s']:.2f}x" if r["batch"] in base else "-"
        lines.append(
            f"| {r['runner']} | {r['batch']} | {r['nfe']} | {r['median_s']:.3f} | {r['min_s']:.3f}-"
            f"{r['max_s']:.3f} | {r['images_per_s']:.1f} | {r['tflops']:.1f} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "build" / "gpu-check", help="results folder")
    parser.add_argument("--steps", type=int, default=20, help="F-PNDM / PNDMPipeline steps (default 20)")
    parser.add_argument("--batches", default="1,64", help="batch sizes (default 1,64)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds after a warm-up (default 5)")
    parser.add_argument("--no-tests", action="store_true", help="skip the pytest run")
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
    args.diffusers = found["diffusers"]
    result["tests"] = {} if args.no_tests else run_tests(args.out)
    result["timings"] = benchmark(args, args.out)
    result["markdown"] = markdown(found, result["tests"], result["timings"])
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "gpu_check.md").write_text(result["markdown"])
    print(result["markdown"])
    return 1 if result["tests"].get("returncode", 0) not in (0, 5) else 0


if __name__ == "__main__":
    sys.exit(main())
