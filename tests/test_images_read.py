"""pndm.images.read_image_files (score's folders, pndm-train's image folders): every PIL mode is read as grey
or RGB by what it holds, grey images among colour ones become RGB, and ``size`` resizes images of any size."""

import numpy as np
import pytest
from PIL import Image

from pndm.errors import PndmError
from pndm.images import read_image_files

RGB = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)
GREY = RGB[:, :, 0]


def _save(folder, name, image):
    path = folder / name
    image.save(path)
    return path


def test_palette_16_bit_and_alpha_images_are_read_by_content(tmp_path):
    colour = Image.fromarray(RGB).quantize(256)  # a quantized colour PNG: mode 'P', colour entries
    grey_palette = Image.fromarray(GREY).convert("P")  # 'P' with grey entries only
    transparent = colour.copy()
    transparent.info["transparency"] = 0  # a palette PNG with a tRNS chunk
    cases = {
        "p_colour.png": (colour, np.asarray(colour.convert("RGB")).transpose(2, 0, 1)),
        "p_grey.png": (grey_palette, GREY[None]),
        "p_transparent.png": (transparent, np.asarray(colour.convert("RGB")).transpose(2, 0, 1)),
        "la.png": (Image.fromarray(np.stack([GREY, GREY // 2], 2), mode="LA"), GREY[None]),
        "rgba.png": (Image.fromarray(np.dstack([RGB, GREY]), mode="RGBA"), RGB.transpose(2, 0, 1)),
        "grey16.png": (Image.fromarray(GREY.astype(np.uint16) * 257), GREY[None]),  # 'I;16', not clipped
    }
    for name, (image, expected) in cases.items():
        read = read_image_files([_save(tmp_path, name, image)], "x")
        assert np.array_equal(read[0].numpy(), expected), name


def test_a_palette_or_grey_image_among_rgb_ones_is_read_as_rgb(tmp_path):
    files = [_save(tmp_path, "a.png", Image.fromarray(RGB)),
             _save(tmp_path, "b.png", Image.fromarray(RGB).quantize(16)),
             _save(tmp_path, "c.png", Image.fromarray(GREY))]
    images = read_image_files(files, "x")
    assert images.shape == (3, 3, 6, 8)
    assert np.array_equal(images[2].numpy(), np.stack([GREY] * 3))


def test_size_resizes_images_of_mixed_sizes_and_without_it_the_error_names_a_fix(tmp_path):
    files = [_save(tmp_path, "a.png", Image.fromarray(RGB)),
             _save(tmp_path, "b.png", Image.fromarray(np.zeros((12, 5, 3), np.uint8)))]
    assert read_image_files(files, "x", size=(4, 7)).shape == (2, 3, 4, 7)
    with pytest.raises(PndmError) as refused:
        read_image_files(files, "folder")
    assert str(refused.value) == ("folder: b.png is 12x5 but a.png is 6x8; all images must share one size: "
                                  "resize them to one size first")
