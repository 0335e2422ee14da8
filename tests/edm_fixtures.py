"""A small EDMPrecond-style network (Karras et al. 2022, Table 1 "EDM" preconditioning) with the same
interface as EDM's: ``forward(x, sigma, class_labels=None) -> D(x; sigma)`` and the attributes
``img_resolution``, ``img_channels``, ``label_dim``, ``sigma_min``, ``sigma_max``, ``sigma_data``."""

import torch
from torch import nn


class TinyEDMPrecond(nn.Module):
    def __init__(self, img_resolution=8, img_channels=3, label_dim=0, sigma_min=0.0, sigma_max=float("inf"),
                 sigma_data=0.5, width=8):
        super().__init__()
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.sigma_min, self.sigma_max, self.sigma_data = sigma_min, sigma_max, sigma_data
        self.inp = nn.Conv2d(img_channels, width, 3, padding=1)
        self.noise = nn.Linear(1 + label_dim, width)
        self.out = nn.Conv2d(width, img_channels, 3, padding=1)

    def forward(self, x, sigma, class_labels=None):
        sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
        sd = self.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1 / (sd**2 + sigma**2).sqrt()
        c_noise = sigma.log() / 4
        cond = c_noise.reshape(-1, 1)
        if self.label_dim:
            cond = torch.cat([cond, class_labels.to(torch.float32).reshape(-1, self.label_dim)], 1)
        h = torch.nn.functional.silu(self.inp(c_in * x) + self.noise(cond)[:, :, None, None])
        F_x = self.out(h)
        return c_skip * x + c_out * F_x


def make():
    torch.manual_seed(3)
    return TinyEDMPrecond()


def make_conditional():
    return TinyEDMPrecond(label_dim=4)
