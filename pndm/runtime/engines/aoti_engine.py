"""AOTInductor engine: a ``.pt2`` package (``pndm-export``'s bf16 CPU engine, or a CUDA package).

Loaded with :func:`torch._inductor.aoti_load_package`: compiled code and weights only, no model
code and no unpickling. The package takes float32 ``x``/``t``; whatever precision it computes in
inside, the engine returns float32 eps.
"""

from __future__ import annotations

import torch

from pndm.errors import EngineError
from pndm.runtime.engines.base import Engine


class AotiEngine(Engine):
    backend = "aoti"

    def _open(self) -> None:
        cuda = self.device.type == "cuda" and self.device.index is not None
        device_index = self.device.index if cuda else -1
        try:
            self.module = torch._inductor.aoti_load_package(self.path, device_index=device_index)
        except Exception as e:  # zip, shared-object and metadata errors all mean the same to a user
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EngineError(
                f"cannot load the AOTInductor package {self.path} ({first[:200]}): it is corrupt, truncated "
                "or was built for another device/torch version; re-export it with pndm-export"
            ) from e

    def _close(self) -> None:
        del self.module

    def run(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.inference_mode():
            out = self.module(*inputs.values())
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.float()
