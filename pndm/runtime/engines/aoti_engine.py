"""AOTInductor engine: a ``.pt2`` package (``pndm-export``'s bf16 CPU engine, or a CUDA package).

Loaded with torch's C++ AOTInductor runner (:func:`pndm.runtime.engine_cache.aoti_runner`: the
CPU library is extracted once into the engine cache; no ``torch._inductor`` import): compiled code
and weights only, no model code and no unpickling. The package takes float32 ``x``/``t``; whatever
precision it computes in inside, the engine returns float32 eps.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pndm.errors import EngineError
from pndm.runtime.engines.base import Engine, EngineInfo


class AotiEngine(Engine):
    backend = "aoti"

    def __init__(self, info: EngineInfo, device: torch.device):
        from pndm.export.manifest import engine_entry
        from pndm.fileio import sha256_file
        from pndm.runtime.engine_cache import aoti_runner

        super().__init__(info, device)
        listed = engine_entry(info.manifest, Path(info.path)).get("sha256") if info.manifest else None
        sha256 = listed or sha256_file(info.path)
        try:
            self.runner = aoti_runner(info.path, sha256, self.device)
        except Exception as e:  # zip, shared-object and metadata errors all mean the same to a user
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EngineError(
                f"cannot load the AOTInductor package {info.path} ({first[:200]}): it is corrupt, truncated "
                "or was built for another device/torch version; re-export it with pndm-export"
            ) from e

    def run(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            (out,) = self.runner.run([x, t])
        return out.float()
