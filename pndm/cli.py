"""Console entry points: ``pndm-export``, ``pndm-run`` and ``pndm-train``.

Each subsystem defines its click commands in its own module (``pndm/export/cli.py``,
``pndm/runtime/cli.py``, ``pndm/train/cli.py``); this module only assembles them,
importing each lazily so ``--help`` is fast, and turns user errors into one line.

Error policy: a :class:`pndm.errors.PndmError`, an ``OSError`` (a file that is missing, not
writable, a full disk), running out of memory or a bad option value prints ``error: <message>`` on
stderr and exits with code 2. Any other exception, a plain ``ValueError``/``TypeError`` included,
is a bug and shows its traceback.
``--debug`` (on any command) or ``PNDM_DEBUG=1`` shows the full traceback of user errors too.
SIGTERM (sent by ``timeout``, systemd, Kubernetes) interrupts a command as Ctrl-C (SIGINT) does, so the
same cleanup runs (no staging folder is left behind); either prints ``Aborted!`` and exits with the
shell's code for the signal, 128 + its number (130 for SIGINT, 143 for SIGTERM).

Library errors speak in API terms: they advise ``name=value`` for a keyword argument. The CLI
translates each such advice into the command's flag (``device='cpu'`` -> ``--device cpu``) when the
running command has that option, so a message never names a flag of another command.
"""

from __future__ import annotations

import importlib
import os
import re
import signal
import sys

import click

from pndm.errors import PndmError, out_of_memory, user_message

EXIT_USER_ERROR = 2
USER_ERRORS = (PndmError, OSError)
# API keyword -> its flag's name (without "--", "-" as "_"), where the two differ.
API_TO_PARAM = {"trust": "trust_engine", "allow_pickle": "trust_pickle"}
_API_ADVICE = re.compile(r"\b([a-z_]+)=('[^']*'|[\w.:/\-]+)?")


def api_to_flags(message: str, command: click.Command | None) -> str:
    """``message`` with each ``name=value`` advice for an option of ``command`` written as its flag."""
    if command is None:
        return message
    flags = {opt[2:].replace("-", "_"): opt for p in command.params if isinstance(p, click.Option)
             for opt in p.opts if opt.startswith("--")}

    def flag(match: re.Match) -> str:
        name, value = match.group(1), match.group(2) or ""
        option = flags.get(API_TO_PARAM.get(name, name))
        if option is None:
            return match.group(0)
        core = value.rstrip(".,;:")  # sentence punctuation after the value stays
        tail, core = value[len(core):], core.strip("'")
        return (option if core in ("", "True") else f"{option} {core}") + tail

    return _API_ADVICE.sub(flag, message)


def _reraise_with_flags(error: PndmError, command: click.Command | None):
    """Raise ``error`` again, its API advice written as ``command``'s flags (the original as its cause)."""
    message = api_to_flags(str(error), command)
    if message == str(error):
        raise error
    raise type(error)(message) from error


def debug_option(f):
    """``--debug``: show full tracebacks. Read by :func:`_run_guarded`, so every command accepts it."""
    return click.option(
        "--debug", is_flag=True, default=False, expose_value=False, is_eager=True,
        help="Show the full traceback on errors (default: one-line errors).",
    )(f)


trust_engine_option = click.option(
    "--trust-engine", is_flag=True, default=False,
    help="Load a .pt2 package or TensorRT plan that pndm did not build on this machine (they carry native "
    "code: use only files from a source you trust). Default: off (only engines this machine's pndm built).",
)
"""``--trust-engine``, for every command that loads an engine (:mod:`pndm.trust`)."""


def _debugging() -> bool:
    return "--debug" in sys.argv[1:] or os.environ.get("PNDM_DEBUG", "") not in ("", "0")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that every cleanup for an interrupt runs."""


def _terminate(_signum, _frame):
    raise Terminated


def _run_guarded(main, *args, command: click.Command | None = None, **kwargs):
    previous = signal.getsignal(signal.SIGTERM)
    if previous == signal.SIG_DFL:  # an inherited "ignore" stays
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return _run_command(main, *args, command=command, **kwargs)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_command(main, *args, command: click.Command | None = None, **kwargs):
    try:
        try:
            return main(*args, standalone_mode=False, **kwargs)
        except PndmError as e:
            _reraise_with_flags(e, command)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.BadParameter as e:  # a bad option value: one line, like every other user error
        click.echo(f"error: {e.format_message()}", err=True)
        sys.exit(EXIT_USER_ERROR)
    except click.UsageError as e:  # an unknown option or command, a missing value: one line and where to look
        where = f" (see {e.ctx.command_path} --help)" if e.ctx is not None else ""
        click.echo(f"error: {e.format_message().rstrip('.')}{where}", err=True)
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Abort as e:  # click's for an interrupt (or end of input at a prompt)
        click.echo("Aborted!", err=True)
        signum = signal.SIGTERM if isinstance(e.__cause__, Terminated) else signal.SIGINT
        sys.exit(128 + signum if isinstance(e.__cause__, KeyboardInterrupt) else 1)
    except Exception as e:
        if not (isinstance(e, USER_ERRORS) or out_of_memory(e)) or _debugging():
            raise
        click.echo(f"error: {user_message(e)}", err=True)
        sys.exit(EXIT_USER_ERROR)


class LazyGroup(click.Group):
    """A click group whose subcommands live in other modules ("module:attribute"), imported on use."""

    def __init__(self, *args, lazy_commands: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy_commands = lazy_commands or {}

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self.lazy_commands))

    def get_command(self, ctx, name):
        if name in self.lazy_commands:
            module_name, attr = self.lazy_commands[name].split(":")
            return getattr(importlib.import_module(module_name), attr)
        return super().get_command(ctx, name)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except PndmError as e:
            name = ctx.invoked_subcommand
            _reraise_with_flags(e, self.get_command(ctx, name) if name else None)

    def main(self, *args, **kwargs):
        if kwargs.pop("standalone_mode", True) is False:
            return super().main(*args, standalone_mode=False, **kwargs)
        return _run_guarded(super().main, *args, **kwargs)


@click.group(
    cls=LazyGroup,
    lazy_commands={"build": "pndm.export.cli:build", "models": "pndm.export.cli:models"},
)
@click.version_option(package_name="pndm")
def export_cli():
    """Export diffusion UNets to ONNX (fp32/fp16), bf16 AOTInductor packages and TensorRT plans."""


@click.group(
    cls=LazyGroup,
    lazy_commands={"sample": "pndm.runtime.cli:sample", "check": "pndm.runtime.cli:check",
                   "tune": "pndm.runtime.tune:tune",
                   "score": "pndm.scoring.cli:score", "sweep": "pndm.scoring.cli:sweep",
                   "interpolate": "pndm.runtime.interpolate:interpolate"},
)
@click.version_option(package_name="pndm")
def run_cli():
    """Sample from an engine with PNDM-family solvers, and check an engine's accuracy."""


def train_cli():
    """``pndm-train``: the command itself lives in :mod:`pndm.train.cli`."""
    from pndm.train.cli import train

    _run_guarded(train.main, command=train)
