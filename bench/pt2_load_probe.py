"""Which way of loading an AOTInductor package survives a fresh process (the CUDA ``.pt2`` defect).

On an H100 with torch 2.11 a CUDA package built by ``pndm-export build --pt2-device cuda`` segfaulted
while loading in a fresh process, yet loaded in the process that compiled it (docs/BENCHMARKS.md,
"GPU"). This script loads the package once per variant, each in its own fresh interpreter, runs one
call at the package's smallest batch, and prints a table: ``ok``, or ``segfault`` / ``timeout`` /
the error's last line with the stage it happened in (loading, or the first call). One device call
answers which preparation (if any) the runtime needs:

    python3 bench/pt2_load_probe.py build/gpu-check/engines-fp16/unet.fp16.cuda.pt2 --backtrace

Before the table it lists the shared libraries the package's library cannot find (``ldd``); with
``--backtrace`` the first crashing variant is run again for its native stack (under gdb, or without
gdb with a SIGSEGV handler compiled with ``cc`` and preloaded) and the dynamic loader's last steps.
``--prepare NAME`` limits the run to some preparations. ``--device cpu`` probes a CPU package the
same way (what the tests run).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PREPARE = {  # code run before loading
    "plain": "",
    "cuda context first": "torch.cuda.init(); torch.cuda.set_device(0)\n"
                          "torch.zeros(1, device='cuda').sum().item()",
    "cuBLAS and cuDNN work first": "a = torch.randn(1, 1, 64, 64, device='cuda'); (a @ a).sum().item()\n"
                                   "torch.nn.functional.conv2d(a, a[..., :3, :3]).sum().item()",
    "inductor imported first": "import torch._inductor",
    "triton imported first": "import triton, triton.language",
    "inductor, triton and a CUDA context first": "import torch._inductor, triton\n"
                                                 "torch.zeros(1, device='cuda').sum().item()",
    "diffusers imported first": "import diffusers",
    # what the processes that loaded the package had done (the export, gpu-check): which part matters
    "onnxruntime imported first": "import onnxruntime",
    "onnx imported first": "import onnx",
    "pndm's export imported first": "import pndm.export.build",
    "gpu-check's preparation first": "import onnxruntime, diffusers\ntorch.nn.Linear(8, 8).to('cuda')",
}
PACKAGE_LOADER = "loader = torch._C._aoti.AOTIModelPackageLoader(path, 'model', True, 1, {index})\n" \
                 "call = lambda x, t: loader.run([x, t])[0]"
EXTRACTED_RUNNER = """
import tempfile, zipfile
extracted = tempfile.TemporaryDirectory(prefix='pt2-probe-')  # removed when the interpreter exits
folder = pathlib.Path(extracted.name)
zipfile.ZipFile(path).extractall(folder)
(library,) = [p for p in folder.rglob('data/aotinductor/model/*.so')]
runner = (torch._C._aoti.AOTIModelContainerRunnerCuda(str(library), 1, 'cuda:0', str(library.parent))
          if device == 'cuda' else torch._C._aoti.AOTIModelContainerRunnerCpu(str(library), 1))
call = lambda x, t: runner.run([x, t])[0]
"""
LOADERS = {  # each defines call(x, t) -> output
    "pndm's loader, device index -1": PACKAGE_LOADER.format(index=-1),
    "pndm's loader, device index 0": PACKAGE_LOADER.format(index=0),
    "torch._inductor.aoti_load_package": "import torch._inductor\n"
                                         "model = torch._inductor.aoti_load_package(path)\n"
                                         "call = lambda x, t: model(x, t)",
    "torch's runner on the extracted files": EXTRACTED_RUNNER,
}
# (preparation, loader): every loader plainly, then every preparation with pndm's loader (index 0)
VARIANTS = [("plain", name) for name in LOADERS] + [
    (name, "pndm's loader, device index 0") for name in PREPARE if name != "plain"]
RUN = """
import json, pathlib, sys, torch
path, device = sys.argv[1], sys.argv[2]
{prepare}
{load}
print('loaded', flush=True)
manifest = json.loads((pathlib.Path(path).parent / 'manifest.json').read_text())
image = manifest['image']
x = torch.randn(manifest['batch']['min'], image['channels'], image['height'], image['width'], device=device)
out = call(x, torch.full((x.shape[0],), 500.0, device=device))
assert out.shape == x.shape, out.shape
print('ok')
"""


def applies(device: str, prepare_name: str, load_name: str) -> bool:
    """CUDA preparations and the device-index-0 loader mean nothing for a CPU package."""
    return device == "cuda" or not ("cuda" in PREPARE[prepare_name].lower() or "index 0" in load_name)


def code(prepare_name: str, load_name: str) -> str:
    return RUN.format(prepare=PREPARE[prepare_name], load=LOADERS[load_name])


def probe(package: Path, device: str, prepare_name: str, load_name: str, timeout: float) -> str:
    """``ok``, or ``segfault`` / ``timeout`` / the error's last line and the stage (``while loading`` or
    ``in the first call``), from a fresh interpreter."""
    try:
        done = subprocess.run([sys.executable, "-c", code(prepare_name, load_name), str(package), device],
                              capture_output=True, text=True, timeout=timeout)
        stdout, outcome = done.stdout, None
    except subprocess.TimeoutExpired as e:
        stdout, outcome = e.stdout or "", "timeout"
        stdout = stdout.decode() if isinstance(stdout, bytes) else stdout
    if outcome is None and done.returncode == 0:
        return stdout.strip().splitlines()[-1]
    if outcome is None and done.returncode == -signal.SIGSEGV:
        outcome = "segfault"
    elif outcome is None:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        outcome = (lines[-1] if lines else f"exit {done.returncode}")[:120]
    stage = "in the first call" if "loaded" in stdout.split() else "while loading"
    return f"{outcome} {stage}"


def missing_libraries(package: Path) -> list[str]:
    """``ldd``'s 'not found' lines for the package's shared libraries, torch's own library folder on
    the search path as it is once torch is imported ([] without ldd)."""
    if shutil.which("ldd") is None:
        return []
    (torch_folder,) = importlib.util.find_spec("torch").submodule_search_locations
    env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(
        filter(None, [str(Path(torch_folder) / "lib"), os.environ.get("LD_LIBRARY_PATH")]))}
    with tempfile.TemporaryDirectory() as folder:
        with zipfile.ZipFile(package) as archive:
            libraries = [name for name in archive.namelist() if name.endswith(".so")]
            archive.extractall(folder, members=libraries)
        found = []
        for name in libraries:
            listing = subprocess.run(["ldd", str(Path(folder) / name)], capture_output=True, text=True,
                                     env=env).stdout
            found += [f"{Path(name).name}: {line.strip()}"
                      for line in listing.splitlines() if "not found" in line]
    return found


SEGV_HANDLER = r"""
#define _GNU_SOURCE
#include <execinfo.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
static void on_segv(int sig, siginfo_t *info, void *context) {
  void *frames[64];
  char line[96];
  int count = backtrace(frames, 64);
  int length = snprintf(line, sizeof line, "SIGSEGV at address %p\n", info->si_addr);
  write(2, line, length);
  backtrace_symbols_fd(frames, count, 2);
  _exit(139);
}
__attribute__((constructor)) static void install(void) {
  void *warm[1];
  backtrace(warm, 1); /* loads libgcc_s now, not inside the handler */
  struct sigaction action;
  memset(&action, 0, sizeof action);
  action.sa_sigaction = on_segv;
  action.sa_flags = SA_SIGINFO;
  sigaction(SIGSEGV, &action, NULL);
}
"""


def backtrace(package: Path, device: str, prepare_name: str, load_name: str, timeout: float,
              use_gdb: bool = True) -> str:
    """The native stack of a crashing variant, run again under gdb, or without gdb with a SIGSEGV
    handler preloaded (compiled with the C compiler AOTInductor needs anyway); then the last lines
    of the dynamic loader's trace (``LD_DEBUG=files``): which library was loading or initialising."""
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "variant.py"
        script.write_text(code(prepare_name, load_name))
        run = [sys.executable, str(script), str(package), device]
        env, compiler = dict(os.environ), shutil.which("cc") or shutil.which("gcc")
        if use_gdb and shutil.which("gdb"):
            run = ["gdb", "-batch", "-ex", "run", "-ex", "bt 30", "--args", *run]
        elif compiler:
            (Path(folder) / "segv.c").write_text(SEGV_HANDLER)
            subprocess.run([compiler, "-shared", "-fPIC", "-o", f"{folder}/segv.so", f"{folder}/segv.c"],
                           check=True)
            env["LD_PRELOAD"] = f"{folder}/segv.so"
        else:
            return "neither gdb nor a C compiler on the PATH: no native stack"
        try:
            done = subprocess.run(run, capture_output=True, text=True, timeout=timeout, env=env)
            traced = subprocess.run(run[-4:], capture_output=True, text=True, timeout=timeout,
                                    env={**os.environ, "LD_DEBUG": "files"})
        except subprocess.TimeoutExpired:
            return "timed out"
    output = done.stdout + done.stderr
    frames = [line[:220] for line in output.splitlines()
              if line.startswith("#") or "SIGSEGV" in line or "[0x" in line]
    loader_lines = [line.strip()[:220] for line in traced.stderr.splitlines()
                    if "file=" in line or "calling init" in line]
    return "\n".join([*(frames or [output[-3000:]]), "", "LD_DEBUG=files, last lines:", *loader_lines[-8:]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path, help="a .pt2 from pndm-export (manifest.json beside it)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="the package's device")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per variant (default 300)")
    parser.add_argument("--backtrace", action="store_true",
                        help="run the first crashing variant again for its native stack (gdb, or a SIGSEGV "
                             "handler compiled with cc) and the dynamic loader's last steps")
    parser.add_argument("--prepare", action="append", choices=list(PREPARE), metavar="NAME",
                        help="probe only these preparations (repeatable; default: every variant)")
    args = parser.parse_args(argv)
    if not args.package.is_file() or not (args.package.parent / "manifest.json").is_file():
        print(f"pt2_load_probe: {args.package} is no package with a manifest.json beside it", file=sys.stderr)
        return 2
    package = args.package.resolve()
    for line in missing_libraries(package):
        print(f"ldd: {line}")
    print(f"| variant ({args.package.name}, fresh process each) | result |\n|---|---|")
    crashed = None
    for prepare_name, load_name in VARIANTS:
        if args.prepare and prepare_name not in args.prepare:
            continue
        result = (probe(package, args.device, prepare_name, load_name, args.timeout)
                  if applies(args.device, prepare_name, load_name) else f"n/a ({args.device})")
        print(f"| {prepare_name}, {load_name} | {result} |", flush=True)
        crashed = crashed or (result.startswith("segfault") and (prepare_name, load_name))
    if args.backtrace and crashed:
        stack = backtrace(package, args.device, *crashed, args.timeout)
        print(f"\nnative stack, {', '.join(crashed)}:\n{stack}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
