"""AOTInductor engine: a ``.pt2`` package (``pndm-export``'s bf16 CPU engine, or a CUDA package).

The compiled code is a shared library, so the package loads only if this machine's pndm built it
or the caller trusts it (:mod:`pndm.trust`), and what loads is the checked bytes: the file is read
once, hashed against the manifest and the trust rule, and only those bytes reach torch's C++
AOTInductor runner (:func:`pndm.runtime.engine_cache.aoti_runner`: on the CPU the compiled library
is extracted once into the engine cache; no ``torch._inductor`` import). Compiled code and weights
only, no model code and no unpickling. The package takes float32 ``x``/``t``; whatever precision it
computes in inside, the engine returns float32 eps.
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

        package = self.checked_bytes("aoti")
        try:
            self.runner, self._private = aoti_runner(package, self.info.sha256, self.device)
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
