"""AOTInductor engine: a ``.pt2`` package (``pndm-export``'s bf16 CPU engine, or a CUDA package).

Compiled code and weights, no model code and no unpickling; but the compiled code is a shared
library, so the package loads only if this machine's pndm built it or the caller trusts it
(:mod:`pndm.trust`), and what loads comes from the checked bytes: the CPU library extracted from
them into the verified engine cache, or a private copy of them
(:func:`pndm.runtime.engine_cache.aoti_runner`). Run by torch's C++ AOTInductor runner, without
importing ``torch._inductor``. The package takes float32 ``x``/``t``; whatever precision it computes
in inside, the engine returns float32 eps.
"""

from __future__ import annotations

import shutil

import torch

from pndm.errors import EngineError
from pndm.runtime.engines.base import Engine


class AotiEngine(Engine):
    backend = "aoti"

    def _open(self) -> None:
        from pndm.runtime.engine_cache import aoti_runner

        data = self.checked_bytes("aoti")
        try:
            self.runner, self._private = aoti_runner(data, self.info.sha256, self.device)
        except Exception as e:  # zip, shared-object and metadata errors all mean the same to a user
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EngineError(
                f"cannot load the AOTInductor package {self.path} ({first[:200]}): it is corrupt, truncated "
                "or was built for another device/torch version; re-export it with pndm-export"
            ) from e

    def _close(self) -> None:
        del self.runner
        if self._private is not None:
            shutil.rmtree(self._private, ignore_errors=True)

    def run(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.inference_mode():
            (out,) = self.runner.run(list(inputs.values()))
        return out.float()
