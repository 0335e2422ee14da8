"""DDIM's latent-space features: interpolating between seeds' x_T, and watching a trajectory.

A deterministic sampler maps x_T to x_0 by a fixed function, so x_T is a latent code of the image
(Song et al. 2021, sec. 5.3). Interpolation is spherical (Shoemake 1985, as DDIM's repository
does), because x_T ~ N(0, I) in high dimension lies near the sphere of radius sqrt(D) and a
straight line between two such points passes through improbable low-norm latents:

    theta = arccos(<z_0, z_1> / (|z_0| |z_1|)),
    slerp(z_0, z_1; a) = sin((1 - a) theta) / sin(theta) z_0 + sin(a theta) / sin(theta) z_1.

The trajectory recorder sees every model evaluation (x_t, t, eps) and keeps x_t and the denoised
estimate x0_hat = (x_t - sqrt(1 - ab) eps) / sqrt(ab) (DDIM eq. 12) of the first images.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pndm.errors import PndmError
from pndm.solvers.transfer import alpha_bar_at, predict_x0

TRAJECTORY_MAX_IMAGES = 8


def slerp(z0: torch.Tensor, z1: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation (module docstring) of two same-shape tensors at each alpha in [0, 1]."""
    a, b = z0.flatten().double(), z1.flatten().double()
    cos = torch.dot(a, b) / (a.norm() * b.norm())
    theta = torch.arccos(cos.clamp(-1.0, 1.0))
    alphas = alphas.double().view(-1, 1)
    if float(theta) < 1e-6:  # parallel: the formula's limit is the straight line
        out = (1 - alphas) * a + alphas * b
    else:
        out = (torch.sin((1 - alphas) * theta) * a + torch.sin(alphas * theta) * b) / torch.sin(theta)
    return out.to(z0.dtype).view(-1, *z0.shape)


def interpolate_seeds(engine, seed_a: int, seed_b: int, frames: int, *, method: str, steps: int, batch: int,
                      clip_x0: bool = False) -> torch.Tensor:
    """Images (frames, C, H, W) in [-1, 1] decoded deterministically from slerp(x_T(seed_a), x_T(seed_b))."""
    from pndm.runtime.seeds import image_noise
    from pndm.schedules import make_schedule
    from pndm.solvers import sample

    if frames < 2:
        raise PndmError(f"--frames must be at least 2 (the two seeds' images), got {frames}")
    ends = image_noise([seed_a, seed_b], engine.image_shape)
    latents = slerp(ends[0], ends[1], torch.linspace(0, 1, frames))
    schedule = make_schedule(engine.schedule_name, engine.T)
    chunks = [latents[i:i + batch] for i in range(0, frames, batch)]
    for size in sorted({len(c) for c in chunks}):
        engine.check_batch(size)
    out = [sample(engine, c.to(engine.device), method, steps, schedule, clip_x0=clip_x0).float().cpu()
           for c in chunks]
    return torch.cat(out)


class TrajectoryRecorder:
    """An eps callable wrapping an engine: records (t, x_t, x0_hat) of the first images at every call."""

    def __init__(self, engine, max_images: int = TRAJECTORY_MAX_IMAGES):
        from pndm.schedules import make_schedule

        self.eps = engine
        self.schedule = make_schedule(engine.schedule_name, engine.T)
        self.max_images = max_images
        self.steps: list[tuple[float, torch.Tensor, torch.Tensor]] = []
        self.recording = True

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.eps(x, t)
        if self.steps and float(t[0]) == self.steps[0][0]:
            self.recording = False  # the next batch starts again at the top of the grid: keep the first
        if self.recording:
            k = self.max_images
            ab = alpha_bar_at(self.schedule, float(t[0]))
            x0_hat = predict_x0(x[:k].float(), out[:k].float(), ab)
            self.steps.append((float(t[0]), x[:k].float().cpu().clone(), x0_hat.cpu()))
        return out

    def save_strip(self, path: Path, final: torch.Tensor) -> None:
        """PNG: per image two rows, x_t (top) and x0_hat (below), one column per evaluation, then x_0.

        x_t is shown scaled to [-1, 1] by its own largest magnitude (at large t it is mostly noise of
        std 1); the denoised estimate and x_0 are shown as images (clipped to [-1, 1]).
        """
        from pndm.images import make_grid, save_png, to_uint8

        if not self.steps:
            raise PndmError("no model evaluation was recorded: nothing to draw")
        n = self.steps[0][1].shape[0]
        final = final[:n].float().cpu()
        columns = []
        for _, x, x0_hat in self.steps:
            scale = x.abs().amax(dim=(1, 2, 3), keepdim=True).clamp(min=1.0)
            columns.append(torch.stack([x / scale, x0_hat], dim=1))  # (n, 2, C, H, W)
        columns.append(torch.stack([final, final], dim=1))
        tiles = torch.stack(columns, dim=2)  # (n, 2, columns, C, H, W)
        rows = tiles.reshape(-1, *tiles.shape[3:])
        save_png(make_grid(to_uint8(rows), ncols=len(columns)), path)
