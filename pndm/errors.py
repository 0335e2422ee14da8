"""User-facing errors.

Anything a user can fix (a bad path, a wrong key, an unknown method name) raises a
:class:`PndmError` with a one-line message naming the problem and the fix. The CLIs
print such errors as ``error: <message>`` and exit with code 2 (no traceback unless
``--debug``). ``PndmError`` subclasses ``ValueError`` so library callers can catch
either.
"""


class PndmError(ValueError):
    """A problem with the user's input, explained in one line."""


class CheckpointError(PndmError):
    """A checkpoint is missing, corrupt, unsafe, or does not fit the architecture."""


class EngineError(PndmError):
    """An engine file or its manifest is missing, corrupt, or used outside its profile."""
