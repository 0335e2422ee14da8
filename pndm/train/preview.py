"""Sample grids of the EMA weights during training (``--sample-every K``)."""

from __future__ import annotations

import torch

from pndm.images import save_grid
from pndm.models import build_model
from pndm.prediction import as_eps
from pndm.solvers import sample

PREVIEW_METHOD, PREVIEW_STEPS, PREVIEW_COUNT = "f-pndm", 20, 36


@torch.no_grad()
def save_preview(trainer) -> None:
    """Write ``samples/step_<k>.png``: F-PNDM, 20 steps, 36 fixed seeds, from the EMA weights."""
    model = build_model("ddpm", trainer.model_config).to(trainer.device).eval()
    model.load_state_dict(trainer.ema)
    cfg = trainer.model_config
    shape = (PREVIEW_COUNT, cfg["in_channels"], cfg["resolution"], cfg["resolution"])
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(1234)).to(trainer.device)
    eps = as_eps(model, trainer.config.prediction, trainer.schedule)
    images = sample(eps, x_T, PREVIEW_METHOD, PREVIEW_STEPS, trainer.schedule)
    save_grid(images, trainer.out / "samples" / f"step_{trainer.step:07d}.png")
