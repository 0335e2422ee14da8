"""`pndm-run sample` on an exported diffusers pipeline folder gives diffusers' own pipeline's images.

A v-prediction DDIMPipeline (scaled_linear betas 0.00085..0.012) against pndm's ddim, and an epsilon
PNDMPipeline against pndm's f-pndm (PRK warm-up, then PLMS), same step count; schedulers with leading
spacing, steps_offset 0, set_alpha_to_one=True; each image's noise from its own generator seeded like
pndm's (DESIGN.md). Within 1 grey level on 99% of pixels.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers_fixtures import diffusers_unet, save_pipeline, scheduler_kwargs

BIN = Path(sys.executable).parent
SEED, NUM, STEPS = 7, 3, 10
SAME = dict(timestep_spacing="leading", steps_offset=0, set_alpha_to_one=True)


def run(*args, timeout=900):
    return subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout)


def _pndm_images(folder, method, tmp_path):
    out = tmp_path / "engines"
    built = run("pndm-export", "build", "--checkpoint", str(folder), "--out", str(out), "--trt", "off",
                "--batch", "1:2:4", "--calibration-steps", "4")
    assert built.returncode == 0, built.stderr[-3000:]
    sampled = run("pndm-run", "sample", "--engine", str(out), "--method", method, "--steps", str(STEPS),
                  "-n", str(NUM), "--batch", str(NUM), "--seed", str(SEED), "--format", "npz",
                  "--out", str(tmp_path / "samples"), "--no-progress")
    assert sampled.returncode == 0, sampled.stderr[-2000:]
    return np.load(tmp_path / "samples" / "samples.npz")["images"]


def _diffusers_images(folder, pipeline):
    import diffusers

    pipe = getattr(diffusers, pipeline).from_pretrained(folder)
    generators = [torch.Generator().manual_seed(SEED + i) for i in range(NUM)]
    kwargs = {"eta": 0.0} if pipeline == "DDIMPipeline" else {}
    with torch.no_grad():
        images = pipe(batch_size=NUM, generator=generators, num_inference_steps=STEPS, output_type="np",
                      **kwargs).images  # (N, H, W, C) in [0, 1]
    return np.round(images * 255).astype(np.uint8)


def _assert_same(ours, theirs):
    assert ours.shape == theirs.shape
    diff = np.abs(ours.astype(int) - theirs.astype(int))
    assert (diff <= 1).mean() >= 0.99, f"within 1 level: {(diff <= 1).mean():.4f}, max diff {diff.max()}"


@pytest.mark.slow
def test_v_prediction_ddim_pipeline(tmp_path):
    folder = save_pipeline(tmp_path / "pipe", diffusers_unet("default"), "DDIMPipeline", "DDIMScheduler",
                           **scheduler_kwargs(prediction_type="v_prediction", clip_sample=False, **SAME))
    _assert_same(_pndm_images(folder, "ddim", tmp_path), _diffusers_images(folder, "DDIMPipeline"))


@pytest.mark.slow
def test_epsilon_pndm_pipeline(tmp_path):
    unet = diffusers_unet("default", seed=1)
    folder = save_pipeline(tmp_path / "pipe", unet, "PNDMPipeline", "PNDMScheduler",
                           **scheduler_kwargs(prediction_type="epsilon", skip_prk_steps=False, **SAME))
    _assert_same(_pndm_images(folder, "f-pndm", tmp_path), _diffusers_images(folder, "PNDMPipeline"))
