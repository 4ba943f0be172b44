"""The official evaluation transform (against crops made by torchvision's recipe with PIL, committed as a fixture),
its use in tf.data, and image decoding with clear errors."""

import os

import numpy as np
import pytest
import tensorflow as tf

import keras_cmt
from keras_cmt import image_transforms

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "pretrained")
IMAGES = {"landscape": os.path.join(FIXTURES, "eval_transform_input.png"),
          "portrait": os.path.join(FIXTURES, "eval_transform_input_portrait.png")}


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(os.path.join(FIXTURES, "eval_transform_pil.npz")))


def test_resize_size_is_the_official_expression():
    assert [image_transforms.resize_size(s) for s in (160, 192, 224, 256, 64)] == [182, 219, 256, 292, 73]


@pytest.mark.parametrize("name", ["landscape", "portrait"])
@pytest.mark.parametrize("size", [64, 96])
def test_matches_the_official_pil_transform(reference, name, size):
    image = image_transforms.load_image(IMAGES[name])
    assert image.dtype == np.uint8 and image.shape == {"landscape": (90, 120, 3), "portrait": (120, 77, 3)}[name]
    expected = reference[f"{name}_{size}"].astype("float32")
    crop = image_transforms.eval_transform(image, size, normalize=False)
    assert isinstance(crop, np.ndarray) and crop.shape == (size, size, 3) and crop.dtype == np.float32
    # PIL works in fixed point: at most one grey level apart, almost everywhere identical.
    diff = np.abs(crop - expected)
    assert diff.max() <= 1.0 and diff.mean() < 0.01
    normalised = image_transforms.eval_transform(image, size)
    mean, std = np.array(keras_cmt.IMAGENET_MEAN), np.array(keras_cmt.IMAGENET_STD)
    np.testing.assert_allclose(normalised, (crop / 255.0 - mean) / std, atol=1e-5)


def test_works_in_a_tf_data_pipeline(reference):
    dataset = tf.data.Dataset.from_tensor_slices([IMAGES["landscape"], IMAGES["portrait"]])
    dataset = dataset.map(lambda path: image_transforms.eval_transform(
        image_transforms.decode_image(tf.io.read_file(path)), 64, normalize=False)).batch(2)
    batch = next(iter(dataset)).numpy()
    assert batch.shape == (2, 64, 64, 3)
    for row, name in zip(batch, ("landscape", "portrait")):
        assert np.abs(row - reference[f"{name}_64"]).max() <= 1.0


def test_decodes_jpeg_and_grey_png(tmp_path):
    yy, xx = np.mgrid[0:40, 0:50]
    rgb = np.stack([xx * 5, yy * 6, 255 - xx * 2 - yy * 3], -1).astype(np.uint8)  # smooth: JPEG keeps it closely
    jpeg = tmp_path / "photo.jpg"
    jpeg.write_bytes(tf.io.encode_jpeg(rgb, quality=100, chroma_downsampling=False).numpy())
    decoded = image_transforms.load_image(jpeg)
    assert decoded.shape == (40, 50, 3) and np.abs(decoded.astype(int) - rgb).mean() < 2
    grey = tmp_path / "grey.png"
    grey.write_bytes(tf.io.encode_png(rgb[..., :1]).numpy())
    decoded = image_transforms.load_image(grey)
    assert decoded.shape == (40, 50, 3)
    np.testing.assert_array_equal(decoded, np.repeat(rgb[..., :1], 3, axis=-1))


def test_errors(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    with pytest.raises(ValueError, match=r"broken\.jpg: cannot decode the image \(JPEG, PNG, GIF or BMP"):
        image_transforms.load_image(broken)
    text = tmp_path / "notes.png"
    text.write_text("hello")
    with pytest.raises(ValueError, match=r"notes\.png: cannot decode the image") as error:
        image_transforms.load_image(text)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match=r"missing\.png: no such image file"):
        image_transforms.load_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match=r"one RGB image \(height, width, 3\); got shape \(2, 8, 8, 3\)"):
        image_transforms.eval_transform(np.zeros((2, 8, 8, 3), np.uint8), 64)
    with pytest.raises(ValueError, match="size must be a positive int"):
        image_transforms.eval_transform(np.zeros((8, 8, 3), np.uint8), 0)
