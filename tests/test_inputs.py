"""Input checks and image loading (tte_fast.inputs, tte_fast.media.image_io): errors name the input's
index, every image form loads to the same RGB pixels, and encode's path and the ImageProcessor
check, decode and convert images the same way, with the same messages."""

from __future__ import annotations

import gc
import io
import os
import warnings

import numpy as np
import PIL.Image
import pytest
import torch
from helpers import assert_same_features, encode_image, random_image, random_pixels
from transformers.image_transforms import convert_to_rgb

from tte_fast.inputs import InputError, InputTypeError, check_input, load_image, load_input
from tte_fast.model import UnifiedTTE
from tte_fast.preprocess import ImageProcessor

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    "bad, error, words",
    [
        ({}, InputError, "input 1: needs a non-empty 'text' or an 'image'"),
        ({"image": b"not an image at all"}, InputError, "input 1: cannot read image"),
        ({"image": "/no/such/file.png"}, InputError, "input 1: image file not found"),
        ({"txt": "typo"}, InputError, "input 1: unknown keys \\['txt'\\]"),
        (
            {"image": random_pixels(0, 50, 70).astype(np.float32)},
            InputTypeError,
            "input 1: image array must be uint8",
        ),
        ({"text": 3}, InputTypeError, "input 1: 'text' must be a str"),
        (42, InputTypeError, "input 1: expected a str or a dict"),
        ("x " * 5000, InputError, "input 1: prompt of \\d+ tokens plus \\d+ generated tokens exceeds"),
        # Checked at load, so the error names the input, not the image's place in its batch.
        ({"image": random_pixels(0, 2, 500)}, InputError, "input 1: image aspect ratio 250.0"),
    ],
)
def test_bad_input_names_its_index(vl_model, bad, error, words):
    with pytest.raises(error, match=words) as info:
        vl_model.encode(["fine", bad, "also fine"], max_think_tokens=2)
    assert info.value.index == 1
    assert isinstance(info.value, ValueError)


def test_image_forms_give_the_same_embedding(vl_model, tmp_path):
    array = random_pixels(3, 64, 48)
    path = tmp_path / "img.png"
    load_image(0, array).save(path)
    forms = [array, str(path), path.read_bytes(), load_image(0, array), torch.from_numpy(array)]
    forms.append(np.ascontiguousarray(np.moveaxis(array, -1, 0)))  # channels first
    result = vl_model.encode([{"image": f, "text": "same"} for f in forms], think=False)
    for row in result.embeddings[1:]:
        torch.testing.assert_close(row, result.embeddings[0], atol=1e-6, rtol=0)


def test_text_only_model_rejects_images(tiny_checkpoints):
    model = UnifiedTTE.from_pretrained(tiny_checkpoints["qwen2"], device="cpu")
    with pytest.raises(InputError, match="input 0: has an image, but 'qwen2' is a text-only model"):
        model.encode([{"image": random_pixels(0, 50, 70), "text": "x"}], think=False)


@pytest.mark.parametrize("shape", [(20, 30), (20, 30, 1), (20, 30, 3), (20, 30, 4)])
def test_image_arrays_become_rgb(shape):
    image = load_image(0, np.zeros(shape, dtype=np.uint8))
    assert image.mode == "RGB" and image.size == (30, 20)


def test_image_files_are_closed(tmp_path):
    """A multi-frame file (PIL keeps those open after load) is closed once decoded."""
    frames = [PIL.Image.fromarray(np.full((8, 10, 3), 40 * i, dtype=np.uint8)) for i in range(3)]
    path = tmp_path / "frames.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        image = load_image(0, str(path))
        gc.collect()
    assert image.mode == "RGB" and image.size == (10, 8)
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_transparency_is_composited_onto_white_as_hf_does():
    """Every transparent form (RGBA, LA, palette with a transparent index, HxWx4 arrays, PNG bytes)
    gives the pixels transformers' ``convert_to_rgb`` gives, which HF's Qwen-VL processors use."""
    rng = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))
    rgba = rng.integers(0, 256, (12, 17, 4), dtype=np.uint8)
    rgba[:4, :, 3] = 0  # fully transparent rows over random colour
    pil_rgba = PIL.Image.fromarray(rgba)
    palette = PIL.Image.fromarray(rgba[..., :3]).quantize(8)
    palette.info["transparency"] = 0
    cases = {
        "RGBA": (pil_rgba, pil_rgba),
        "LA": (pil_rgba.convert("LA"), pil_rgba.convert("LA")),
        "P": (palette, palette),
        "array": (rgba, pil_rgba),
        "bytes": (encode_image(pil_rgba, "PNG"), pil_rgba),
    }
    for name, (given, reference) in cases.items():
        expected = convert_to_rgb(reference, return_numpy=True)
        np.testing.assert_array_equal(np.asarray(load_image(0, given)), expected, err_msg=name)
    assert (np.asarray(load_image(0, pil_rgba))[:4] == 255).all()  # white, not the hidden colour


def test_rgb_files_and_bytes_load_to_usable_images(tmp_path):
    """Encoded RGB images come back loaded: their file is closed once decoded."""
    pixels = random_pixels(int.from_bytes(os.urandom(4), "little"), 9, 13)
    png = encode_image(PIL.Image.fromarray(pixels), "PNG")
    (tmp_path / "x.png").write_bytes(png)
    for given in (png, str(tmp_path / "x.png")):
        np.testing.assert_array_equal(np.asarray(load_image(0, given)), pixels)


# --------------------------------------------- one loading path for encode and the ImageProcessor
def _via_encode(image):
    """What encode does with an input's image: check the whole list first, then load per batch."""
    return load_input(1, check_input(1, {"image": image, "text": "x"})).image


def _via_processor(image):
    return ImageProcessor()([random_pixels(0, 28, 28), image])


def _empty_file(path) -> str:
    path.write_bytes(b"")
    return str(path)


_PNG = encode_image(random_image(0, 30, 40), "PNG")
# name -> a bad image (built per use: a failed load leaves a lazily opened image half loaded)
BAD_IMAGES = {
    "empty array": lambda tmp: np.zeros((0, 5, 3), np.uint8),
    "empty PIL image": lambda tmp: PIL.Image.new("RGB", (0, 4)),
    "float array": lambda tmp: np.zeros((4, 4, 3), np.float32),
    "bfloat16 tensor": lambda tmp: torch.zeros(4, 4, 3, dtype=torch.bfloat16),
    "two channels": lambda tmp: np.zeros((8, 8, 2), np.uint8),
    "five dimensions": lambda tmp: np.zeros((2, 2, 2, 2, 2), np.uint8),
    "empty bytes": lambda tmp: b"",
    "junk bytes": lambda tmp: b"not an image at all",
    "truncated bytes": lambda tmp: _PNG[:40],
    "lazily opened truncated file": lambda tmp: PIL.Image.open(io.BytesIO(_PNG[: len(_PNG) // 2])),
    "empty file": lambda tmp: _empty_file(tmp / "empty.png"),
    "missing file": lambda tmp: "/no/such/file.png",
    "a directory": lambda tmp: str(tmp),
    "URL": lambda tmp: "https://example.com/a.png",
    "a float": lambda tmp: 3.5,
    "unconvertible mode": lambda tmp: random_image(0, 6, 6).convert("La"),
}
TYPE_ERRORS = ("float array", "bfloat16 tensor", "a float")


@pytest.mark.parametrize("name", BAD_IMAGES)
def test_encode_and_the_image_processor_reject_bad_images_alike(tmp_path, name):
    errors = []
    for load in (_via_encode, _via_processor):
        with pytest.raises(InputError) as info:
            load(BAD_IMAGES[name](tmp_path))
        errors.append(info.value)
    ours, theirs = errors
    assert type(ours) is type(theirs) and str(ours) == str(theirs)
    assert ours.index == theirs.index == 1 and str(ours).startswith("input 1: ")
    assert isinstance(ours, TypeError if name in TYPE_ERRORS else ValueError)


def test_decompression_bombs_are_refused_on_both_paths(monkeypatch):
    """Pillow's bomb limit applies to bytes and files on both paths (a small limit stands in for a
    huge image), and is reported as an input error, not a crash or an out-of-memory."""
    bomb = encode_image(random_image(0, 40, 40), "PNG")
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 100)  # Pillow refuses beyond twice the limit
    for load in (_via_encode, _via_processor):
        with pytest.raises(InputError, match="input 1: cannot read image from bytes: .*decompression bomb"):
            load(bomb)


def _transparent_array():
    rgba = random_pixels(5, 30, 41, 4)
    rgba[:9, :, 3] = 0
    return rgba


def _transparent_palette():
    palette = random_image(6, 33, 29).quantize(8)
    palette.info["transparency"] = 2
    return palette


# name -> an image in one of the forms encode and the ImageProcessor take
IMAGE_FORMS = {
    "RGB": lambda: random_image(1, 35, 28),
    "L": lambda: random_image(2, 35, 28, "L"),
    "CMYK": lambda: random_image(3, 35, 28, "CMYK"),
    "I;16": lambda: random_image(4, 35, 28, "I;16"),
    "palette with transparency": _transparent_palette,
    "RGBA": lambda: PIL.Image.fromarray(_transparent_array()),
    "HxWx4 array": _transparent_array,
    "HxW array": lambda: random_pixels(7, 29, 31, None),
    "HxWx1 array": lambda: random_pixels(8, 29, 31, 1),
    "tensor": lambda: torch.from_numpy(random_pixels(9, 30, 30)),
    "CxHxW array": lambda: np.ascontiguousarray(np.moveaxis(random_pixels(10, 28, 35), -1, 0)),
    "LA PNG bytes": lambda: encode_image(random_image(11, 40, 33, "LA"), "PNG"),
    "JPEG bytes": lambda: encode_image(random_image(12, 40, 33), "JPEG"),
}


@pytest.mark.parametrize("form", IMAGE_FORMS)
def test_every_image_form_reaches_the_processor_as_it_would_directly(form):
    """encode loads an image to RGB, then its processor runs: the same features as the processor
    given the original form."""
    processor = ImageProcessor()
    assert_same_features(processor(load_image(0, IMAGE_FORMS[form]())), processor(IMAGE_FORMS[form]()))
