"""Where ``pndm-train``'s settings come from: ``--init-from`` gives its prediction type, ``--resume`` the
saved run's settings; what conflicts is refused in one line, a slow ``--bf16`` is warned about, and
``--help`` states every default."""

from __future__ import annotations

import click
import numpy as np
import pytest
import torch
from cli_checks import assert_one_line_error
from click.testing import CliRunner

from pndm.cli import LazyGroup
from pndm.errors import PndmError
from pndm.models import build_model, load_checkpoint, save_checkpoint
from pndm.train import loop
from pndm.train.cli import train
from pndm.train.presets import resolve_arch

group = LazyGroup(name="pndm-train", lazy_commands={"train": "pndm.train.cli:train"})


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """16 random 28x28 'digits' (tiny28's resolution) and 16 of 20x20 (padded, or resized with --resize)."""
    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for size in (28, 20):
        np.savez(folder / f"{size}.npz", images=rng.integers(0, 256, (16, size, size), dtype=np.uint8))
    return folder


def invoke(data, out, *extra):
    args = ["--data", str(data), "--arch", "tiny28", "--out", str(out), "--steps", "1", "--batch", "2"]
    return CliRunner().invoke(group, ["train", *args, *extra])


def _saved(out):
    return load_checkpoint(out / "ema.safetensors")[1]


def _v_checkpoint(path):
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in resolve_arch("tiny28").items()}
    save_checkpoint(path, build_model("ddpm", resolve_arch("tiny28")).state_dict(),
                    {"architecture": "ddpm", "model": config,
                     "diffusion": {"schedule": "linear", "T": 1000, "prediction": "v_prediction"}})
    return str(path)


def test_init_from_trains_the_source_models_prediction(digits, tmp_path):
    source = _v_checkpoint(tmp_path / "v.safetensors")
    result = invoke(digits / "28.npz", tmp_path / "ft", "--init-from", source)
    assert result.exit_code == 0, result.output
    assert f"note: --init-from {source} is a v_prediction model, so this run trains v_prediction" \
        in result.stderr
    saved = _saved(tmp_path / "ft")
    assert saved["diffusion"]["prediction"] == saved["training"]["prediction"] == "v_prediction"


def test_init_from_with_another_prediction_given_converts_and_says_so(digits, tmp_path):
    source = _v_checkpoint(tmp_path / "v.safetensors")
    result = invoke(digits / "28.npz", tmp_path / "eps", "--init-from", source, "--prediction", "epsilon")
    assert result.exit_code == 0, result.output
    assert "is a v_prediction model; this run fine-tunes it to epsilon (--prediction)" in result.stderr
    assert _saved(tmp_path / "eps")["diffusion"]["prediction"] == "epsilon"


def test_resume_takes_the_saved_settings_not_given(digits, tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "_cpu_has_bf16", lambda: True)
    data, out = digits / "28.npz", tmp_path / "run"
    assert invoke(data, out, "--bf16", "--lr", "5e-5", "--prediction", "v_prediction").exit_code == 0
    result = invoke(data, out, "--steps", "2", "--resume")  # the README's resume line
    assert result.exit_code == 0, result.output
    training = _saved(out)["training"]
    assert (training["step"], training["bf16"], training["lr"], training["prediction"]) == (2, True, 5e-5,
                                                                                           "v_prediction")
    assert_one_line_error(invoke(data, out, "--steps", "3", "--resume", "--no-bf16"),
                          "--bf16 differs", "saved True, now False", "--allow-change bf16")
    result = invoke(data, out, "--steps", "3", "--resume", "--no-bf16", "--allow-change", "bf16")
    assert result.exit_code == 0, result.output
    assert _saved(out)["training"]["bf16"] is False


def test_resume_with_init_from_is_refused(digits, tmp_path):
    data, out = digits / "28.npz", tmp_path / "run"
    assert invoke(data, out).exit_code == 0
    source = _v_checkpoint(tmp_path / "v.safetensors")
    assert_one_line_error(invoke(data, out, "--steps", "2", "--resume", "--init-from", source),
                          "--resume continues from the run's own weights; drop --init-from")


def test_resume_with_resize_is_refused_only_where_it_changes_the_images(digits, tmp_path):
    native, padded = tmp_path / "native", tmp_path / "padded"
    assert invoke(digits / "28.npz", native).exit_code == 0
    assert invoke(digits / "28.npz", native, "--steps", "2", "--resume", "--resize").exit_code == 0  # no-op
    assert invoke(digits / "20.npz", padded).exit_code == 0
    assert_one_line_error(invoke(digits / "20.npz", padded, "--steps", "2", "--resume", "--resize"),
                          "--resize differs", "saved False, now True; the images differ")
    resized = tmp_path / "resized"
    assert invoke(digits / "20.npz", resized, "--resize").exit_code == 0
    result = invoke(digits / "20.npz", resized, "--steps", "2", "--resume")  # takes the run's --resize
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("has_bf16", [False, True])
def test_bf16_on_a_cpu_without_bf16_instructions_is_warned_about(has_bf16, digits, tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "_cpu_has_bf16", lambda: has_bf16)
    result = invoke(digits / "28.npz", tmp_path / "run", "--bf16")
    assert result.exit_code == 0, result.output
    warning = ("warning: --bf16 on a CPU without bf16 instructions (AVX-512 BF16 or AMX) trains several "
               "times slower than fp32; train without it (--no-bf16)\n")
    assert (warning in result.stderr) is not has_bf16


def test_help_states_every_default():
    with click.Context(train, **train.context_settings) as ctx:
        for param in train.get_params(ctx):
            if param is not train.get_help_option(ctx):
                name, help_text = param.get_help_record(ctx)
                assert "default: " in help_text or "[required]" in help_text, name


def test_cpu_bf16_check_reads_the_cpu():
    expected = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert loop._cpu_has_bf16() in (expected, True)


def test_resize_reads_an_image_folder_of_mixed_sizes(tmp_path):
    from PIL import Image

    from pndm.train.data import load_images

    folder = tmp_path / "faces"
    folder.mkdir()
    Image.new("L", (20, 20), 40).save(folder / "a.png")
    Image.new("L", (30, 24), 200).save(folder / "b.png")
    images = load_images(str(folder), (28, 28))
    assert images.shape == (2, 1, 28, 28)
    assert images[0].float().mean() == 40 and images[1].float().mean() == 200
    with pytest.raises(PndmError, match=r"b.png is 24x30 but a.png is 20x20; all images must share one size "
                                        r"\(or pass --resize\)"):
        load_images(str(folder))


def test_no_progress_hides_the_bar(digits, tmp_path):
    shown, hidden = invoke(digits / "28.npz", tmp_path / "a"), invoke(digits / "28.npz", tmp_path / "b",
                                                                     "--no-progress")
    assert shown.exit_code == hidden.exit_code == 0
    assert "train:" in shown.output and "train:" not in hidden.output
