"""User-facing errors.

Anything a user can fix (a bad path, a wrong key, an unknown method name) raises a
:class:`PndmError` with a one-line message naming the problem and the fix. The CLIs
print such errors as ``error: <message>`` and exit with code 2 (no traceback unless
``--debug``). ``PndmError`` subclasses ``ValueError`` so library callers can catch
either. File errors and running out of memory are user errors too: :func:`user_message` words
them in one line with the fix.
"""

import errno


class PndmError(ValueError):
    """A problem with the user's input, explained in one line."""


class CheckpointError(PndmError):
    """A checkpoint is missing, corrupt, unsafe, or does not fit the architecture."""


class EngineError(PndmError):
    """An engine file or its manifest is missing, corrupt, or used outside its profile."""


def os_error_message(exc: OSError, what: str = "--out") -> str:
    """One line for a file error, naming the path and, for a failed write, the fix (``what``: its option)."""
    where = f": {exc.filename}" if exc.filename is not None else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on device{where}; free space or choose another {what}"
    if exc.errno == errno.EROFS:
        return f"read-only file system{where}; choose a writable {what}"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied{where}"
    return f"{exc.strerror or exc}{where}"


def out_of_memory(exc: BaseException) -> bool:
    """``MemoryError`` or torch's ``OutOfMemoryError`` (recognised without importing torch)."""
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"


def user_message(exc: BaseException) -> str:
    """One line for an error the user can act on: a file error, out of memory, or a PndmError."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return os_error_message(exc)
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    if out_of_memory(exc):
        return f"out of memory ({first}); use a smaller --batch"
    return first
