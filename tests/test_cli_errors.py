"""pndm.cli's error policy: PndmError/OSError are one line (exit 2), anything else is a bug with a
traceback; library advice in API terms (``name=value``) becomes the running command's flags."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from pndm.cli import LazyGroup, api_to_flags, debug_option
from pndm.errors import EngineError, PndmError


@click.command()
@click.option("--device", default="auto")
@click.option("--trust-engine", is_flag=True)
@click.option("--batch", "batch_size", default=1)
@click.option("--raise", "what", default="pndm")
@debug_option
def probe(device, trust_engine, batch_size, what):
    if what == "pndm":
        raise EngineError("x.pt2 is not trusted: pass trust=True, or use device='cpu' (batch=8).")
    if what == "oserror":
        raise OSError(28, "No space left on device", "/out/a.png")
    if what == "value":
        raise ValueError("a bug: shapes do not broadcast")
    raise TypeError("a bug: NoneType is not iterable")


@click.group(cls=LazyGroup, lazy_commands={"probe": f"{__name__}:probe"})
def group():
    """Test group."""


def invoke(*args):
    return CliRunner().invoke(group, list(args))


def test_pndm_error_is_one_line_in_the_commands_flags():
    result = invoke("probe")
    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: x.pt2 is not trusted: pass --trust-engine, or use --device cpu (--batch 8)."
    )


def test_oserror_is_one_line_with_its_file():
    result = invoke("probe", "--raise", "oserror")
    assert result.exit_code == 2 and result.output.strip() == (
        "error: no space left on device: /out/a.png; free space or choose another --out"
    )


@pytest.mark.parametrize("what, kind", [("value", ValueError), ("type", TypeError)])
def test_a_bug_is_not_reported_as_bad_input(what, kind):
    result = invoke("probe", "--raise", what)
    assert result.exit_code == 1 and isinstance(result.exception, kind)
    assert not result.output.startswith("error:")


def test_debug_keeps_the_original_error_as_the_cause(monkeypatch):
    monkeypatch.setenv("PNDM_DEBUG", "1")
    result = invoke("probe")
    assert isinstance(result.exception, EngineError) and "--trust-engine" in str(result.exception)
    assert "trust=True" in str(result.exception.__cause__)


def test_advice_for_options_the_command_lacks_stays_in_api_terms():
    assert api_to_flags("pass reference=PATH", probe) == "pass reference=PATH"
    assert api_to_flags("plain words, no advice", probe) == "plain words, no advice"
    assert api_to_flags("use device='cuda:1';", probe) == "use --device cuda:1;"
    assert api_to_flags("anything", None) == "anything"
    assert isinstance(PndmError("x"), ValueError)  # library callers may still catch ValueError
