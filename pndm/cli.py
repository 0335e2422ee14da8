"""Console entry points: ``pndm-export``, ``pndm-run`` and ``pndm-train``.

Each subsystem defines its click commands in its own module (``pndm/export/cli.py``,
``pndm/runtime/cli.py``, ``pndm/train/cli.py``); this module only assembles them,
importing each lazily so ``--help`` is fast, and turns user errors into one line.

Error policy: a :class:`pndm.errors.PndmError` (or another ``ValueError``, a file error, running
out of memory, or a bad option value) prints ``error: <message>`` on stderr and exits with code 2.
``--debug`` (on any command) or ``PNDM_DEBUG=1`` shows the full traceback instead.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from pndm.errors import out_of_memory, user_message

EXIT_USER_ERROR = 2
USER_ERRORS = (ValueError, OSError)


def debug_option(f):
    """``--debug``: show full tracebacks. Read by :func:`_run_guarded`, so every command accepts it."""
    return click.option(
        "--debug", is_flag=True, default=False, expose_value=False, is_eager=True,
        help="Show the full traceback on errors (default: one-line errors).",
    )(f)


def _debugging() -> bool:
    return "--debug" in sys.argv[1:] or os.environ.get("PNDM_DEBUG", "") not in ("", "0")


def _run_guarded(main, *args, **kwargs):
    try:
        return main(*args, standalone_mode=False, **kwargs)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.BadParameter as e:  # a bad option value: one line, like every other user error
        click.echo(f"error: {e.format_message()}", err=True)
        sys.exit(EXIT_USER_ERROR)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted!", err=True)
        sys.exit(1)
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
    lazy_commands={"sample": "pndm.runtime.cli:sample", "check": "pndm.runtime.cli:check"},
)
@click.version_option(package_name="pndm")
def run_cli():
    """Sample from an engine with PNDM-family solvers, and check an engine's accuracy."""


def train_cli():
    """``pndm-train``: the command itself lives in :mod:`pndm.train.cli`."""
    from pndm.train.cli import train

    _run_guarded(train.main)
