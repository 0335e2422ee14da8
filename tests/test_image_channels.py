"""Images of any channel count: PNG holds 1-4 (grey, grey+alpha, RGB, RGBA) and is written in the matching
mode; more channels are refused before sampling with --format png and written as npz without grid.png."""

import numpy as np
import pytest
import torch
from cli_checks import assert_one_line_error
from click.testing import CliRunner
from diffusers_fixtures import LEVELS
from PIL import Image

from pndm.cli import run_cli
from pndm.errors import PndmError
from pndm.images import check_png_channels, save_png


@pytest.mark.parametrize(("channels", "mode"), [(1, "L"), (2, "LA"), (3, "RGB"), (4, "RGBA")])
def test_png_round_trip_in_the_mode_of_its_channels(tmp_path, channels, mode):
    pixels = torch.randint(0, 256, (5, 7, channels), dtype=torch.uint8)
    save_png(pixels, tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as image:
        assert image.mode == mode
        back = np.asarray(image)
    assert np.array_equal(back.reshape(5, 7, channels), pixels.numpy())


def test_more_channels_than_png_holds_are_refused():
    with pytest.raises(PndmError, match="images have 5 channels and a PNG holds 1 to 4: use --format npz"):
        check_png_channels(5)


def _unet_folder(tmp_path, channels):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=channels, out_channels=channels, **LEVELS).eval()
    unet.save_pretrained(tmp_path / f"unet{channels}")
    return tmp_path / f"unet{channels}"


def _sample(folder, out, *extra):
    return CliRunner().invoke(run_cli, ["sample", "--engine", str(folder), "--method", "ddim", "--steps", "2",
                                        "-n", "2", "--out", str(out), "--no-progress", *extra])


def test_a_four_channel_model_samples_rgba_pngs(tmp_path):
    result = _sample(_unet_folder(tmp_path, 4), tmp_path / "out")
    assert result.exit_code == 0, result.output
    for name in ("seed000000.png", "seed000001.png", "grid.png"):
        with Image.open(tmp_path / "out" / name) as image:
            assert image.mode == "RGBA"


def test_a_five_channel_model_needs_npz_and_gets_no_grid(tmp_path):
    folder = _unet_folder(tmp_path, 5)
    assert_one_line_error(_sample(folder, tmp_path / "png"), "5 channels", "--format npz")
    assert not (tmp_path / "png").exists()
    result = _sample(folder, tmp_path / "npz", "--format", "npz")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "npz").iterdir()) == ["run.json", "samples.npz"]
    assert np.load(tmp_path / "npz" / "samples.npz")["images"].shape == (2, 8, 8, 5)
