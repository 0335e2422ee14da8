"""Which engine files may run native code: those this machine's pndm built, or those the user trusts.

An AOTInductor ``.pt2`` is a zip holding a compiled shared library, and a TensorRT plan can carry
host code (plugins, version-compatible lean runtimes): loading either runs code. Like a pickle,
such a file loads only when

- its SHA-256 is in this machine's record of engines pndm built (``pndm-export build`` records every
  ``.pt2`` and plan it writes), or
- the caller opts in for this load: ``trust=True`` in :func:`pndm.runtime.load_engine`,
  ``--trust-engine`` on ``pndm-run sample`` / ``check``.

A matching manifest hash is not enough: whoever replaces the file can replace the manifest too.
The record lives under the cache root ``$PNDM_CACHE_DIR`` (default ``~/.cache/pndm``) as one empty
file per hash in ``trusted-engines/``: adding one is a single atomic create, safe with concurrent
exports, and nothing in the record is ever executed or parsed.
"""

from __future__ import annotations

import os
from pathlib import Path

from pndm.errors import EngineError
from pndm.fileio import atomic_write_text

CODE_KINDS = {"aoti": "an AOTInductor package with a compiled shared library",
              "tensorrt": "a TensorRT plan, which can carry host code"}
RECORD_DIR = "trusted-engines"


def cache_root() -> Path:
    """pndm's cache and trust root: ``$PNDM_CACHE_DIR``, else ``~/.cache/pndm``."""
    return Path(os.environ.get("PNDM_CACHE_DIR") or Path.home() / ".cache" / "pndm")


def _record(sha256: str) -> Path:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise EngineError(f"not a SHA-256 hex digest: {sha256!r}")
    return cache_root() / RECORD_DIR / sha256


def record_built(sha256: str, path: str | os.PathLike) -> None:
    """Note that this machine's pndm built the engine with this hash (``path``: for people reading it)."""
    atomic_write_text(_record(sha256), f"{Path(path).name}\n")


def is_recorded(sha256: str) -> bool:
    """True if this machine's pndm built an engine file with this hash."""
    return _record(sha256).is_file()


def require_trusted(path: str | os.PathLike, kind: str, sha256: str, trust: bool) -> None:
    """Refuse to load a code-carrying engine (``kind`` in :data:`CODE_KINDS`) that this machine did not
    build, unless ``trust``; ``sha256`` is the hash of the exact bytes about to be loaded."""
    if kind not in CODE_KINDS or trust or is_recorded(sha256):
        return
    raise EngineError(
        f"{path} is {CODE_KINDS[kind]} that pndm did not build on this machine, so loading it could run "
        "code you did not choose; if you trust where it came from, pass trust=True, else re-export it here"
    )
