"""PyTorch engine: the eps model itself in float32 eager mode, the checker's reference."""

from __future__ import annotations

import torch
from torch import nn

from pndm.runtime.engines.base import Engine, EngineInfo

# Eager PyTorch has no fixed profile; this only guards against absurd requests.
TORCH_BATCH_RANGE = (1, 4096)


class TorchEngine(Engine):
    backend = "torch"

    def __init__(self, info: EngineInfo, device: torch.device, model: nn.Module):
        super().__init__(info, device)
        self.model = model

    def _open(self) -> None:
        self.model = self.model.to(self.device, torch.float32).eval()

    def _close(self) -> None:
        """The module stays (it came from the caller); only the buffers go."""

    def run(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(*inputs.values()).float()
