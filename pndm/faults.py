"""Fault injection for the test suite: crash or fail on purpose at named points of a write.

Code that publishes files calls :func:`fault_point` at the moments a crash would matter (before
and after each rename). Nothing happens unless the environment variable ``PNDM_FAULT`` names that
point, so the hook costs one dictionary lookup in normal runs. The value is
``<point>[@<n>][:<action>]``:

- ``<point>``: the name passed to :func:`fault_point` (e.g. ``train.publish``, ``sample.png``);
- ``@<n>``: fire on the n-th time the point is reached in this process (default: the first);
- ``<action>``: ``kill`` (SIGKILL this process: no cleanup runs, as after a power cut; the default),
  ``sigint`` (deliver SIGINT, as Ctrl-C does), ``sigterm`` (deliver SIGTERM, as ``timeout``, systemd and
  Kubernetes do), ``enospc`` (raise ``OSError(ENOSPC)``, a full disk)
  or ``erofs`` (raise ``OSError(EROFS)``, a read-only file system).

Example: ``PNDM_FAULT=train.pointer@2:kill pndm-train ...`` dies just before the second checkpoint
becomes current. The points are listed in ``tests/test_faults_*.py``.
"""

from __future__ import annotations

import errno
import os
import signal
from collections import Counter

ENV = "PNDM_FAULT"
_hits: Counter[str] = Counter()


def _parse(spec: str) -> tuple[str, int, str]:
    where, _, action = spec.partition(":")
    point, _, nth = where.partition("@")
    return point, int(nth or 1), action or "kill"


def fault_point(name: str, path: str | os.PathLike | None = None) -> None:
    """Crash or fail here if ``PNDM_FAULT`` names this point (see the module docstring)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, nth, action = _parse(spec)
    if point != name:
        return
    _hits[name] += 1
    if _hits[name] != nth:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "sigint" and not callable(signal.getsignal(signal.SIGINT)):
        # SIGINT inherited as ignored (a background job of a non-interactive shell, as some CI runners
        raise KeyboardInterrupt  # start tests): raise what Python's handler would
    elif action in ("sigint", "sigterm"):
        os.kill(os.getpid(), signal.SIGINT if action == "sigint" else signal.SIGTERM)
    elif action in ("enospc", "erofs"):
        code = errno.ENOSPC if action == "enospc" else errno.EROFS
        raise OSError(code, os.strerror(code), None if path is None else str(path))
    else:
        raise ValueError(f"{ENV}={spec}: unknown action {action!r} (kill, sigint, sigterm, enospc, erofs)")
