"""CPU per-call benchmark: the int8 CPU engine against ONNX Runtime fp32 and the bf16 .pt2 package.

CIFAR-10 architecture (35.7M parameters, random weights: speed does not depend on training),
from an export folder made by

    pndm-export build --model cifar10 --random-init --precision bf16 --batch 1:8:64 --trt off --out DIR

(``unet.onnx``, ``unet.bf16.pt2``), and optionally diffusers' ``UNet2DModel`` of the same architecture
(``--diffusers-unet``, fp32 eager: what diffusers' pipelines call). The int8 CPU form is quantized
here from ``unet.onnx`` as
``pndm-export build --precision int8`` does (:class:`pndm.export.quantize.Quantizer`, CPU placement,
minmax calibration on forward-process inputs, ``conv_in`` and ``conv_out`` kept in float) but without
the accuracy gate, which random weights cannot meet (their errors say nothing about a trained model).

One eps call per engine and batch size; every engine is warmed up, then all are timed round-robin
``--repeats`` times (a shared machine's changing load hits them alike), and the median is kept.
ONNX Runtime and torch both use ``--threads`` threads. With more than one thread, pndm's own ONNX
Runtime engine (:class:`pndm.runtime.engines.ort_engine.OrtEngine`, as ``pndm-run`` loads it: the batch
split into parts run at the same time, each on its share of the threads) is timed on both graphs too.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_int8.py --onnx DIR/unet.onnx --pt2 DIR/unet.bf16.pt2 \
        --threads 1 --batches 1,4,8
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor()
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    simd = [f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "avx_vnni", "fma")]
    return f"{fields.get('Model name', '?').strip()} ({' '.join(sorted(simd))})"


def int8_cpu_engine(fp32_onnx: Path, shape: tuple[int, int, int], work: Path) -> Path:
    """unet.int8-cpu.onnx quantized from ``fp32_onnx`` (see the module docstring)."""
    from pndm.calibration import forward_process_pairs
    from pndm.export.quantize import Quantizer
    from pndm.schedules import make_schedule

    path = work / "unet.int8-cpu.onnx"
    if path.is_file():
        return path
    # Calibration reads only the inputs (x_t, t); the eps of the pairs is not needed here.
    pairs = forward_process_pairs(lambda x, t: torch.zeros_like(x), shape,
                                  make_schedule("linear", 1000), steps=10, count=2)
    quantizer = Quantizer(onnx.load(str(fp32_onnx)), pairs.x.numpy(), pairs.t.numpy(),
                          precision="int8", calibrator="minmax", batch=8, workdir=work)
    onnx.save_model(quantizer.quantize("cpu", ["conv_in", "conv_out"]), str(path))
    return path


def ort_call(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x, t: session.run(None, {"x": x.numpy(), "t": t.numpy()})[0]


def pndm_call(path: Path, shape: tuple[int, int, int], threads: int):
    """pndm's ONNX Runtime engine as ``pndm-run`` loads it: ``threads`` threads, the batch split into
    :data:`pndm.runtime.engines.ort_engine.CPU_STREAMS` parts run at the same time."""
    from pndm.engine_format import IOSpec
    from pndm.runtime.engines.base import EngineInfo
    from pndm.runtime.engines.ort_engine import OrtEngine
    from pndm.schedule_spec import ScheduleSpec

    info = EngineInfo(str(path), shape, ScheduleSpec("linear", 1000), (1, 64), "fp32",
                      IOSpec.for_image(shape))
    engine = OrtEngine(info, torch.device("cpu"), threads=threads).open()
    return lambda x, t: engine.run({"x": x, "t": t})


def diffusers_call(unet_dir: Path):
    """diffusers' UNet2DModel (fp32 eager), the model a PNDMPipeline calls."""
    from diffusers import UNet2DModel

    unet = UNet2DModel.from_pretrained(unet_dir).eval()
    return lambda x, t: unet(x, t).sample


def aoti_call(path: Path):
    runner = torch._inductor.aoti_load_package(str(path))
    return lambda x, t: runner(x, t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, required=True, help="the fp32 unet.onnx of the export")
    parser.add_argument("--pt2", type=Path, default=None, help="the bf16 unet.bf16.pt2 of the export, if any")
    parser.add_argument("--diffusers-unet", type=Path, default=None,
                        help="a UNet2DModel folder of the same architecture (bench_command.py's), if any")
    parser.add_argument("--work", type=Path, default=None, help="folder for the int8 engine (default: temp)")
    parser.add_argument("--batches", default="1,4,8")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="pndm-bench-int8-"))
    work.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(args.onnx), load_external_data=False)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    shape = tuple(int(d.dim_value) for d in dims[1:])
    log("quantizing the int8 CPU engine")
    int8 = int8_cpu_engine(args.onnx, shape, work)
    engines = {"ORT fp32 (unet.onnx)": ort_call(args.onnx, args.threads),
               "ORT int8 CPU form (unet.int8-cpu.onnx)": ort_call(int8, args.threads)}
    if args.threads > 1:
        engines["pndm's ORT engine, fp32, batch in parts"] = pndm_call(args.onnx, shape, args.threads)
        engines["pndm's ORT engine, int8 CPU form, batch in parts"] = pndm_call(int8, shape, args.threads)
    if args.pt2 is not None:
        engines["bf16 AOTInductor (unet.bf16.pt2)"] = aoti_call(args.pt2)
    if args.diffusers_unet is not None:
        engines["diffusers UNet2DModel fp32 eager"] = diffusers_call(args.diffusers_unet)
    results: dict[str, dict[int, float]] = {name: {} for name in engines}
    generator = torch.Generator().manual_seed(0)
    for batch in (int(b) for b in args.batches.split(",")):
        x = torch.randn(batch, *shape, generator=generator)
        t = torch.full((batch,), 500.0)
        times: dict[str, list[float]] = {name: [] for name in engines}
        with torch.no_grad():
            for call in engines.values():  # warm-up (session/arena allocation, AOTI first run)
                call(x, t)
            for _ in range(args.repeats):
                for name, call in engines.items():
                    start = time.perf_counter()
                    np.asarray(call(x, t))
                    times[name].append(time.perf_counter() - start)
        for name in engines:
            results[name][batch] = statistics.median(times[name])
        log(f"batch {batch}: "
            + ", ".join(f"{n.split(' (')[0]} {results[n][batch] * 1e3:.0f} ms" for n in engines))
    base = "ORT fp32 (unet.onnx)"
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [f"machine: {cpu_name()}, {args.threads} thread(s); {date}",
             "", "| engine | " + " | ".join(f"batch {b}: ms/call (x fp32)" for b in results[base]) + " |",
             "|---|" + "---|" * len(results[base])]
    for name, per_batch in results.items():
        cells = [f"{ms * 1e3:.0f} ({results[base][b] / ms:.2f}x)" for b, ms in per_batch.items()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({"machine": cpu_name(), "threads": args.threads, "seconds": results},
                                        indent=2))


if __name__ == "__main__":
    main()
