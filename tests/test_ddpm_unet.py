import json

import torch
from safetensors.torch import load_file

from pndm.models.ddpm_unet import DDPMUNet, DDPMUNetConfig


def _tiny_config(testdata) -> DDPMUNetConfig:
    raw = json.loads((testdata / "original_ddpm_tiny_config.json").read_text())
    fields = DDPMUNetConfig.__dataclass_fields__
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in fields}
    return DDPMUNetConfig(**kwargs)


def test_matches_original_code_on_reference_pass(testdata):
    net = DDPMUNet(_tiny_config(testdata)).eval()
    state = torch.load(testdata / "original_ddpm_tiny.ckpt", weights_only=True)
    net.load_state_dict(state, strict=True)
    ref = load_file(testdata / "original_ddpm_tiny_reference.safetensors")
    assert 997.5 in ref["t"].tolist()  # the fractional PRK-midpoint path is exercised
    with torch.no_grad():
        eps = net(ref["x"], ref["t"])
    assert (eps - ref["eps"]).abs().max().item() < 1e-4
