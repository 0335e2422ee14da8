"""Code-carrying engines (.pt2, TensorRT plans) load only if this machine built them or the user trusts them.

The attack: both the engine file and its manifest are replaced, so the manifest hash matches. The
payload must never run: the loaders below are fakes that record whether they were reached.
"""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from pndm import trust
from pndm.cli import run_cli
from pndm.engine_format import (
    BatchSpec,
    EngineEntry,
    Manifest,
    ModelInfo,
    ScheduleSpec,
    Source,
    read_manifest,
    write_manifest,
)
from pndm.errors import EngineError
from pndm.fileio import sha256_file
from pndm.runtime import load_engine
from pndm.runtime.engines import trt_engine

PAYLOAD = b"PK\x03\x04 a zip whose shared library would run on load"


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty trust record: this 'machine' built nothing yet."""
    monkeypatch.setenv("PNDM_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def engine_folder(folder, name: str, kind: str, precision: str, device: str | None = None):
    """An engine file with a manifest whose hash matches it (as an attacker who replaced both would)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(PAYLOAD)
    manifest = Manifest.new(model=ModelInfo("ddpm", {}, Source("default")), image_shape=(3, 8, 8),
                            schedule=ScheduleSpec("linear", 1000), batch=BatchSpec(1, 2, 4))
    manifest.engines[name] = EngineEntry(kind, precision, sha256_file(folder / name), device=device)
    write_manifest(folder, manifest)
    return folder / name


@pytest.fixture
def aoti_loads(monkeypatch):
    """Replace AOTInductor's loading by a recorder: every call would have run the package's code."""
    from pndm.runtime import engine_cache

    calls = []

    class Runner:
        def run(self, inputs):
            return [torch.zeros_like(inputs[0])]

    def fake_runner(data, sha256, device):
        calls.append(data)
        return Runner(), None

    monkeypatch.setattr(engine_cache, "aoti_runner", fake_runner)
    return calls


def test_foreign_pt2_is_refused_before_loading(tmp_path, fresh_cache, aoti_loads):
    path = engine_folder(tmp_path / "e", "unet.bf16.pt2", "aoti", "bf16", device="cpu")
    with pytest.raises(EngineError, match=r"AOTInductor package .* did not build on this.*trust=True"):
        load_engine(path, device="cpu")
    assert aoti_loads == []


def test_trusted_pt2_loads_the_checked_bytes(tmp_path, fresh_cache, aoti_loads):
    path = engine_folder(tmp_path / "e", "unet.bf16.pt2", "aoti", "bf16", device="cpu")
    with load_engine(path, device="cpu", trust=True) as engine:
        assert engine(torch.zeros(1, 3, 8, 8), torch.zeros(1)).shape == (1, 3, 8, 8)
    assert aoti_loads == [PAYLOAD]  # the bytes that were hashed are what the runner is made from


def test_pt2_built_on_this_machine_loads_without_opt_in(tmp_path, fresh_cache, aoti_loads):
    path = engine_folder(tmp_path / "e", "unet.bf16.pt2", "aoti", "bf16", device="cpu")
    trust.record_built(sha256_file(path), path)
    assert (fresh_cache / "trusted-engines" / sha256_file(path)).is_file()
    load_engine(path, device="cpu").close()
    assert aoti_loads == [PAYLOAD]


def test_record_is_per_hash_not_per_name(tmp_path, fresh_cache, aoti_loads):
    """Replacing a recorded file (and its manifest) by another payload is refused again."""
    path = engine_folder(tmp_path / "e", "unet.bf16.pt2", "aoti", "bf16", device="cpu")
    trust.record_built(sha256_file(path), path)
    path.write_bytes(PAYLOAD + b" tampered")
    manifest = read_manifest(path)
    manifest.engines[path.name].sha256 = sha256_file(path)
    write_manifest(path.parent, manifest)
    with pytest.raises(EngineError, match="did not build on this machine"):
        load_engine(path, device="cpu")
    assert aoti_loads == []


ENGINE_COMMANDS = {  # every pndm-run command that loads an engine, with what it needs besides --engine
    "sample": ["--out", "{tmp}/o", "--no-progress"],
    "check": ["--no-progress"],
    "sweep": ["--out", "{tmp}/o", "--steps", "5", "-n", "4", "--no-progress"],
    "interpolate": ["--out", "{tmp}/o"],
    "tune": ["--nfe", "5", "--out", "{tmp}/o/recipe.json"],
}


@pytest.mark.parametrize("command", sorted(ENGINE_COMMANDS))
def test_cli_says_how_to_opt_in(tmp_path, fresh_cache, aoti_loads, command):
    path = engine_folder(tmp_path / "e", "unet.bf16.pt2", "aoti", "bf16", device="cpu")
    args = [command, "--engine", str(path), *(a.format(tmp=tmp_path) for a in ENGINE_COMMANDS[command])]
    result = CliRunner().invoke(run_cli, args)
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert line.startswith("error: ") and "\n" not in line
    assert "did not build on this machine" in line and "pass --trust-engine" in line
    assert aoti_loads == [] and not (tmp_path / "o").exists()
    CliRunner().invoke(run_cli, [*args, "--trust-engine"])  # the fake engine's output need not make sense
    assert aoti_loads, f"{command} --trust-engine did not reach the loader"


def test_cache_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PNDM_CACHE_DIR", str(tmp_path / "c"))
    assert trust.cache_root() == tmp_path / "c"
    monkeypatch.delenv("PNDM_CACHE_DIR")
    assert trust.cache_root().parts[-2:] == (".cache", "pndm")
    with pytest.raises(EngineError, match="not a SHA-256"):
        trust.is_recorded("../../etc/passwd")


# -- TensorRT: host code disallowed, and untrusted plans never reach the deserializer ---------------------


class FakeRuntime:
    """Records the host-code setting at the moment a plan is deserialized."""

    def __init__(self, logger, with_host_code_switch=True):
        self.seen = []
        if with_host_code_switch:
            self.engine_host_code_allowed = True  # TensorRT's default for plans that carry host code

    def deserialize_cuda_engine(self, data):
        self.seen.append((data, getattr(self, "engine_host_code_allowed", "absent")))
        return None if data == b"refuse" else object()


class FakeTrt:
    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    def __init__(self, with_host_code_switch=True):
        self.runtimes = []
        self.switch = with_host_code_switch

    def Runtime(self, logger):  # noqa: N802 (TensorRT's name)
        runtime = FakeRuntime(logger, self.switch)
        self.runtimes.append(runtime)
        return runtime


@pytest.mark.parametrize("switch", [True, False], ids=["tensorrt10-switch", "no-switch"])
def test_plans_are_deserialized_with_host_code_disallowed(switch):
    fake = FakeTrt(with_host_code_switch=switch)
    runtime, _ = trt_engine.deserialize_plan(fake, fake.Logger(2), b"plan", "unet.fp16.plan")
    assert runtime.seen == [(b"plan", False if switch else "absent")]
    with pytest.raises(EngineError, match="carries host code"):
        trt_engine.deserialize_plan(fake, fake.Logger(2), b"refuse", "unet.fp16.plan")


def test_foreign_plan_never_reaches_tensorrt(tmp_path, fresh_cache, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    reached = []
    monkeypatch.setattr(trt_engine, "import_tensorrt", lambda: reached.append(1) or FakeTrt())
    path = engine_folder(tmp_path / "e", "unet.fp16.plan", "tensorrt", "fp16")
    with pytest.raises(EngineError, match=r"TensorRT plan, which can carry host code.*trust=True"):
        load_engine(path, device="cuda")
    assert reached == []
