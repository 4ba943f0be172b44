"""The official evaluation transform (against crops made by torchvision's recipe with PIL, committed as a fixture),
its TensorFlow path in tf.data, and image decoding with clear errors.

NumPy and Pillow only, whatever the Keras backend (tests/test_packaging.py runs them without TensorFlow), so these
tests run once, in the TensorFlow process of tests/run.py.
"""

import io
import os
import struct
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

import keras_cmt
from keras_cmt import image_transforms

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "pretrained")
sys.path.insert(0, FIXTURES)

from make_eval_transform_fixture import official_crop  # noqa: E402  (the recipe that made the fixture)

IMAGES = {
    "landscape": os.path.join(FIXTURES, "eval_transform_input.png"),
    "portrait": os.path.join(FIXTURES, "eval_transform_input_portrait.png"),
}


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(os.path.join(FIXTURES, "eval_transform_pil.npz")))


def _one_line_error(excinfo, name):
    message = str(excinfo.value)
    assert "\n" not in message and message.startswith(str(name)), message
    return message


def _png_declaring(width, height):
    """A real 2x2 PNG whose IHDR (and its CRC) is patched to declare width x height pixels."""
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    assert data[12:16] == b"IHDR"
    chunk = bytes(data[12:16]) + struct.pack(">II", width, height) + bytes(data[24:29])
    data[12:29] = chunk
    data[29:33] = struct.pack(">I", zlib.crc32(chunk))
    return bytes(data)


# ------------------------------------------------------------------------------------ the numpy (Pillow) path


def test_resize_size_is_the_official_expression():
    assert [image_transforms.resize_size(s) for s in (160, 192, 224, 256, 64)] == [182, 219, 256, 292, 73]
    assert [image_transforms.short_side(s) for s in (160, 192, 224, 256, 64)] == [182, 219, 256, 292, 73]
    assert [image_transforms.short_side(s, 1.0) for s in (160, 224, 64)] == [160, 224, 64]
    assert [image_transforms.short_side(s, 0.9) for s in (160, 224, 64)] == [177, 248, 71]


def test_shared_arithmetic_is_torchvisions():
    for extra in range(0, 40):
        assert image_transforms._crop_offset(extra) == int(round(extra / 2.0))
    for height, width, short in ((90, 120, 73), (120, 77, 109), (1, 999, 256), (333, 500, 256), (500, 333, 219)):
        new_h, new_w = image_transforms._resized_shape(height, width, min(height, width), short)
        if width < height:
            assert (new_w, new_h) == (short, int(short * height / width))
        else:
            assert (new_w, new_h) == (int(short * width / height), short)


@pytest.mark.parametrize("name", ["landscape", "portrait"])
@pytest.mark.parametrize("size", [64, 96])
def test_matches_the_official_pil_transform_exactly(reference, name, size):
    image = image_transforms.load_image(IMAGES[name])
    assert image.dtype == np.uint8 and image.shape == {"landscape": (90, 120, 3), "portrait": (120, 77, 3)}[name]
    expected = reference[f"{name}_{size}"].astype("float32")
    crop = image_transforms.eval_transform(image, size, normalize=False)
    assert isinstance(crop, np.ndarray) and crop.shape == (size, size, 3) and crop.dtype == np.float32
    np.testing.assert_array_equal(crop, expected)  # Pillow is what torchvision resizes with: bit for bit
    normalised = image_transforms.eval_transform(image, size)
    assert isinstance(normalised, np.ndarray) and normalised.dtype == np.float32
    mean, std = np.array(keras_cmt.IMAGENET_MEAN), np.array(keras_cmt.IMAGENET_STD)
    np.testing.assert_allclose(normalised, (expected / 255.0 - mean) / std, atol=1e-5)


@pytest.mark.parametrize("crop_pct", [1.0, 0.9, 0.5])
@pytest.mark.parametrize("name", ["landscape", "portrait"])
def test_other_crop_pct_matches_pil(name, crop_pct):
    image = image_transforms.load_image(IMAGES[name])
    for size in (48, 64):
        crop = image_transforms.eval_transform(image, size, normalize=False, crop_pct=crop_pct)
        np.testing.assert_array_equal(crop, official_crop(image, size, crop_pct).astype(np.float32))


def test_width_pass_first_on_every_pillow_version():
    # A tall image: Pillow >= 12.2 resizes some of these height first inside one `.resize` (rounding in between
    # differently); the official transform of its day, and this one, resample the width first.
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (261, 23, 3)).astype(np.uint8)
    crop = image_transforms.eval_transform(image, 16, normalize=False, crop_pct=0.9)
    new_w, new_h = 17, int(17 * 261 / 23)
    im = Image.fromarray(image).resize((new_w, 261), Image.BICUBIC).resize((new_w, new_h), Image.BICUBIC)
    top, left = int(round((new_h - 16) / 2.0)), int(round((new_w - 16) / 2.0))
    np.testing.assert_array_equal(crop, np.asarray(im)[top : top + 16, left : left + 16].astype(np.float32))


def test_float_and_other_array_input():
    image = image_transforms.load_image(IMAGES["portrait"])
    expected = image_transforms.eval_transform(image, 64)
    np.testing.assert_array_equal(image_transforms.eval_transform(image.astype(np.float32), 64), expected)
    np.testing.assert_array_equal(image_transforms.eval_transform(image.astype(np.float64) + 0.3, 64), expected)
    np.testing.assert_array_equal(image_transforms.eval_transform(image.tolist(), 64), expected)
    square = image_transforms.eval_transform(np.full((64, 64, 3), 7, np.uint8), 64, normalize=False, crop_pct=1.0)
    np.testing.assert_array_equal(square, np.full((64, 64, 3), 7.0, np.float32))  # nothing to resize or crop


def test_decodes_jpeg_and_png_kinds_as_pil_convert_rgb(tmp_path):
    yy, xx = np.mgrid[0:40, 0:50]
    rgb = np.stack([xx * 5, yy * 6, 255 - xx * 2 - yy * 3], -1).astype(np.uint8)
    files = {
        "photo.jpg": Image.fromarray(rgb),
        "grey.png": Image.fromarray(rgb[..., 0]),
        "palette.png": Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16),
        "rgba.png": Image.fromarray(np.concatenate([rgb, (xx * 5).astype(np.uint8)[..., None]], -1), "RGBA"),
        "image.bmp": Image.fromarray(rgb),
        "image.gif": Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=32),
    }
    for name, im in files.items():
        im.save(tmp_path / name, **({"quality": 100, "subsampling": 0} if name.endswith(".jpg") else {}))
        decoded = image_transforms.load_image(tmp_path / name)
        assert decoded.dtype == np.uint8 and decoded.shape == (40, 50, 3), name
        with Image.open(tmp_path / name) as expected:
            np.testing.assert_array_equal(decoded, np.asarray(expected.convert("RGB")), err_msg=name)
    assert np.abs(image_transforms.load_image(tmp_path / "photo.jpg").astype(int) - rgb).mean() < 2
    np.testing.assert_array_equal(
        image_transforms.load_image(tmp_path / "grey.png"), np.repeat(rgb[..., :1], 3, axis=-1)
    )
    np.testing.assert_array_equal(image_transforms.load_image(tmp_path / "rgba.png"), rgb)  # alpha dropped
    np.testing.assert_array_equal(image_transforms.load_image(tmp_path / "image.bmp"), rgb)


def test_decodes_the_first_gif_frame_and_16_bit_grey(tmp_path):
    first, second = np.full((8, 9, 3), 40, np.uint8), np.full((8, 9, 3), 200, np.uint8)
    Image.fromarray(first).save(tmp_path / "anim.gif", save_all=True, append_images=[Image.fromarray(second)])
    np.testing.assert_array_equal(image_transforms.load_image(tmp_path / "anim.gif"), first)
    wide = (np.arange(8 * 9).reshape(8, 9) * 900).astype(np.uint16)
    Image.fromarray(wide).save(tmp_path / "grey16.png")
    decoded = image_transforms.load_image(tmp_path / "grey16.png")  # the high byte, not clipped to white
    np.testing.assert_array_equal(decoded, np.repeat((wide >> 8).astype(np.uint8)[..., None], 3, axis=-1))


def test_decoding_errors_are_one_line_naming_the_file(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    with pytest.raises(ValueError, match=r"broken\.jpg: cannot decode the image \(JPEG, PNG, GIF or BMP") as error:
        image_transforms.load_image(broken)
    _one_line_error(error, broken)
    text = tmp_path / "notes.png"
    text.write_text("hello\nworld\n")
    with pytest.raises(ValueError, match=r"notes\.png: cannot decode the image") as error:
        image_transforms.load_image(text)
    _one_line_error(error, text)
    with pytest.raises(ValueError, match=r"missing\.png: no such image file") as error:
        image_transforms.load_image(tmp_path / "missing.png")
    _one_line_error(error, tmp_path / "missing.png")
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(buffer, "JPEG")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(buffer.getvalue()[:200])
    with pytest.raises(ValueError, match=r"truncated\.jpg: cannot decode the image") as error:
        image_transforms.load_image(truncated)
    _one_line_error(error, truncated)


def test_refuses_a_decompression_bomb(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_declaring(20000, 20000))  # 400 million pixels declared in a 70-byte file
    assert bomb.stat().st_size < 100
    with pytest.raises(ValueError, match=r"bomb\.png: cannot decode the image .*decompression bomb") as error:
        image_transforms.load_image(bomb)
    _one_line_error(error, bomb)
    # Pillow's own knob moves the limit: a small image over a lowered MAX_IMAGE_PIXELS is refused too.
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(small)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ValueError, match=r"small\.png: cannot decode the image .*exceeds limit") as error:
        image_transforms.load_image(small)
    _one_line_error(error, small)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # None: no limit, as in Pillow
    assert image_transforms.load_image(small).shape == (40, 50, 3)


def test_eval_transform_argument_errors():
    with pytest.raises(ValueError, match=r"one RGB image \(height, width, 3\); got shape \(2, 8, 8, 3\)"):
        image_transforms.eval_transform(np.zeros((2, 8, 8, 3), np.uint8), 64)
    with pytest.raises(ValueError, match=r"one RGB image \(height, width, 3\); got shape \(8, 8, 4\)"):
        image_transforms.eval_transform(np.zeros((8, 8, 4), np.uint8), 64)
    for size in (0, -1, 2.0, True, "64"):
        with pytest.raises(ValueError, match="size must be a positive int"):
            image_transforms.eval_transform(np.zeros((8, 8, 3), np.uint8), size)
    for crop_pct in (0, 0.0, -0.5, 1.01, float("nan"), True, "0.9", None):
        with pytest.raises(ValueError, match=r"crop_pct must be a number in \(0, 1\]"):
            image_transforms.eval_transform(np.zeros((8, 8, 3), np.uint8), 8, crop_pct=crop_pct)


# -------------------------------------------------------- the TensorFlow path (TensorFlow process only, no mark)


@pytest.mark.parametrize("name", ["landscape", "portrait"])
@pytest.mark.parametrize("size", [64, 96])
def test_tf_path_is_within_one_grey_level_of_pil(reference, name, size):
    import tensorflow as tf

    image = image_transforms.load_image(IMAGES[name])
    expected = reference[f"{name}_{size}"].astype("float32")
    crop = image_transforms.eval_transform(tf.constant(image), size, normalize=False)
    assert tf.is_tensor(crop) and crop.dtype == tf.float32 and tuple(crop.shape) == (size, size, 3)
    # PIL works in fixed point: at most one grey level apart, almost everywhere identical.
    diff = np.abs(crop.numpy() - expected)
    assert diff.max() <= 1.0 and diff.mean() < 0.01
    normalised = image_transforms.eval_transform(tf.constant(image), size)
    mean, std = np.array(keras_cmt.IMAGENET_MEAN), np.array(keras_cmt.IMAGENET_STD)
    np.testing.assert_allclose(normalised.numpy(), (crop.numpy() / 255.0 - mean) / std, atol=1e-5)
    for crop_pct in (1.0, 0.9):
        crop = image_transforms.eval_transform(tf.constant(image), size, normalize=False, crop_pct=crop_pct)
        diff = np.abs(crop.numpy() - official_crop(image, size, crop_pct))
        assert diff.max() <= 1.0 and diff.mean() < 0.01


def test_works_in_a_tf_data_pipeline(reference):
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices([IMAGES["landscape"], IMAGES["portrait"]])
    dataset = dataset.map(
        lambda path: image_transforms.eval_transform(
            image_transforms.decode_image(tf.io.read_file(path)), 64, normalize=False
        )
    ).batch(2)
    assert tuple(dataset.element_spec.shape) == (None, 64, 64, 3)
    batch = next(iter(dataset)).numpy()
    assert batch.shape == (2, 64, 64, 3)
    for row, name in zip(batch, ("landscape", "portrait")):
        assert np.abs(row - reference[f"{name}_64"]).max() <= 1.0
    crop_pct = tf.data.Dataset.from_tensor_slices([IMAGES["portrait"]]).map(
        lambda path: image_transforms.eval_transform(
            image_transforms.decode_image(tf.io.read_file(path)), 48, normalize=False, crop_pct=1.0
        )
    )
    expected = official_crop(image_transforms.load_image(IMAGES["portrait"]), 48, 1.0)
    assert np.abs(next(iter(crop_pct)).numpy() - expected).max() <= 1.0


def test_tf_decode_image_agrees_with_load_image():
    import tensorflow as tf

    for path in IMAGES.values():
        np.testing.assert_array_equal(
            image_transforms.decode_image(tf.io.read_file(path)).numpy(), image_transforms.load_image(path)
        )
