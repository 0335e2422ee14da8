"""The baseline a user would write: diffusers' PNDMPipeline over a saved UNet2DModel, PNGs out.

    python bench/diffusers_pndm.py --unet build/bench/diffusers-unet --steps 10 -n 4 --out /tmp/d
    python bench/diffusers_pndm.py --unet ... --device cuda --dtype fp16 ...   (on a GPU)

Prints one JSON line with the seconds spent importing, loading and sampling (for the roofline
share), so bench/bench_command.py can time the whole command from outside and still split it.
"""

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from diffusers import PNDMPipeline, PNDMScheduler, UNet2DModel  # noqa: E402


def pipeline(unet_dir: Path, device: str, dtype: torch.dtype) -> PNDMPipeline:
    """PNDMPipeline over the UNet in ``unet_dir`` with weights in ``dtype`` on ``device``."""
    unet = UNet2DModel.from_pretrained(unet_dir, torch_dtype=dtype).to(device).eval()
    # PNDMPipeline draws float32 noise: hand a reduced-precision UNet its own dtype
    unet.register_forward_pre_hook(lambda module, args: (args[0].to(dtype), *args[1:]))
    pipe = PNDMPipeline(unet=unet, scheduler=PNDMScheduler(beta_schedule="linear"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--unet", type=Path, required=True, help="UNet2DModel folder (save_pretrained)")
    parser.add_argument("--steps", type=int, default=10, help="PNDM steps (NFE = steps + 9 with PRK)")
    parser.add_argument("-n", "--num", type=int, default=4, help="images, in one batch")
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNGs")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--dtype", choices=["fp32", "fp16"], default="fp32",
                        help="UNet weights (default fp32)")
    args = parser.parse_args()
    imported = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = pipeline(args.unet, args.device, {"fp32": torch.float32, "fp16": torch.float16}[args.dtype])
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    sync()
    loaded = time.perf_counter()
    with torch.inference_mode():
        images = pipe(batch_size=args.num, num_inference_steps=args.steps,
                      generator=torch.Generator(args.device).manual_seed(0)).images
    sync()
    sampled = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        image.save(args.out / f"image{i:06d}.png")
    written = time.perf_counter()
    print(json.dumps({"import": imported - STARTED, "load": loaded - imported, "sampling": sampled - loaded,
                      "writing": written - sampled}))


if __name__ == "__main__":
    main()
