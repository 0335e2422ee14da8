"""Which way of loading an AOTInductor package survives a fresh process (the CUDA ``.pt2`` defect).

On an H100 with torch 2.11 a CUDA package built by ``pndm-export build --pt2-device cuda`` segfaulted
while loading in a fresh process, yet loaded in the process that compiled it (docs/BENCHMARKS.md,
"GPU"). This script loads the package once per variant, each in its own fresh interpreter, runs one
call at the package's smallest batch, and prints a table: ``ok``, ``segfault`` or the error's last
line. One device call answers which preparation (if any) the runtime needs:

    python3 bench/pt2_load_probe.py build/gpu-check/engines/unet.fp16.cuda.pt2

``--device cpu`` probes a CPU package the same way (what the tests run).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from pathlib import Path

PREPARE = {  # code run before loading
    "plain": "",
    "cuda context first": "torch.cuda.init(); torch.cuda.set_device(0)\n"
                          "torch.zeros(1, device='cuda').sum().item()",
    "inductor imported first": "import torch._inductor",
    "triton imported first": "import triton, triton.language",
}
PACKAGE_LOADER = "loader = torch._C._aoti.AOTIModelPackageLoader(path, 'model', True, 1, {index})\n" \
                 "call = lambda x, t: loader.run([x, t])[0]"
LOADERS = {  # each defines call(x, t) -> output
    "pndm's loader, device index -1": PACKAGE_LOADER.format(index=-1),
    "pndm's loader, device index 0": PACKAGE_LOADER.format(index=0),
    "torch._inductor.aoti_load_package": "import torch._inductor\n"
                                         "model = torch._inductor.aoti_load_package(path)\n"
                                         "call = lambda x, t: model(x, t)",
}
RUN = """
import json, pathlib, sys, torch
path, device = sys.argv[1], sys.argv[2]
{prepare}
{load}
manifest = json.loads((pathlib.Path(path).parent / 'manifest.json').read_text())
image = manifest['image']
x = torch.randn(manifest['batch']['min'], image['channels'], image['height'], image['width'], device=device)
out = call(x, torch.full((x.shape[0],), 500.0, device=device))
assert out.shape == x.shape, out.shape
print('ok')
"""


def probe(package: Path, device: str, prepare: str, load: str, timeout: float) -> str:
    """``ok``, ``segfault``, ``timeout`` or the last line of the error, from a fresh interpreter."""
    if device == "cpu" and "cuda" in prepare:
        return "n/a (cpu)"
    code = RUN.format(prepare=prepare, load=load)
    try:
        done = subprocess.run([sys.executable, "-c", code, str(package), device], capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout"
    if done.returncode == -signal.SIGSEGV:
        return "segfault"
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        return (lines[-1] if lines else f"exit {done.returncode}")[:120]
    return done.stdout.strip().splitlines()[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path, help="a .pt2 from pndm-export (manifest.json beside it)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="the package's device")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per variant (default 300)")
    args = parser.parse_args(argv)
    if not args.package.is_file() or not (args.package.parent / "manifest.json").is_file():
        print(f"pt2_load_probe: {args.package} is no package with a manifest.json beside it", file=sys.stderr)
        return 2
    print(f"| variant ({args.package.name}, fresh process each) | result |\n|---|---|")
    for prepare_name, prepare in PREPARE.items():
        for load_name, load in LOADERS.items():
            if args.device == "cpu" and "index 0" in load_name:
                continue
            result = probe(args.package.resolve(), args.device, prepare, load, args.timeout)
            print(f"| {prepare_name}, {load_name} | {result} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
