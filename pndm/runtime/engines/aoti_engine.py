"""AOTInductor engine: a ``.pt2`` package (``pndm-export``'s bf16 CPU engine, or a CUDA package).

Loaded with torch's C++ AOTInductor runner (:func:`pndm.runtime.engine_cache.aoti_runner`: the
CPU library is extracted once into the engine cache; no ``torch._inductor`` import): compiled code
and weights only, no model code and no unpickling. The package takes float32 ``x``/``t``; whatever
precision it computes in inside, the engine returns float32 eps.
"""

from __future__ import annotations

import torch

from pndm.errors import EngineError
from pndm.runtime.engines.base import Engine


class AotiEngine(Engine):
    backend = "aoti"

    def _open(self) -> None:
        from pndm.fileio import sha256_file
        from pndm.runtime.engine_cache import aoti_runner

        try:
            self.runner = aoti_runner(self.path, self.info.sha256 or sha256_file(self.path), self.device)
        except Exception as e:  # zip, shared-object and metadata errors all mean the same to a user
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EngineError(
                f"cannot load the AOTInductor package {self.path} ({first[:200]}): it is corrupt, truncated "
                "or was built for another device/torch version; re-export it with pndm-export"
            ) from e

    def _close(self) -> None:
        del self.runner

    def run(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.inference_mode():
            (out,) = self.runner.run(list(inputs.values()))
        return out.float()
