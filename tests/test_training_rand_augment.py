"""RandAugment as the official recipe's (timm's rand-m9-mstd0.5-inc1): the magnitude's statistics, and each
operation against its PIL definition."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from keras_cmt.training import rand_augment


def _image(seed=0, size=24):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_magnitude_is_normal_around_m_clipped_to_ten():
    draws = rand_augment.sample_magnitude(9.0, 0.5, shape=[200000], seed=1).numpy()
    reference = np.clip(np.random.default_rng(0).normal(9.0, 0.5, 200000), 0, 10)
    assert abs(draws.mean() - reference.mean()) < 0.005 and abs(draws.std() - reference.std()) < 0.005
    assert draws.min() >= 0 and draws.max() == 10.0 and 0.015 < (draws == 10.0).mean() < 0.03
    assert (rand_augment.sample_magnitude(7.0, 0.0, shape=[3]).numpy() == 7.0).all()


@pytest.mark.parametrize(
    "name, ours, pil",
    [
        ("auto_contrast", rand_augment.auto_contrast, ImageOps.autocontrast),
        ("equalize", rand_augment.equalize, ImageOps.equalize),
        ("posterize 2 bits", lambda x: rand_augment.posterize(x, 2), lambda im: ImageOps.posterize(im, 2)),
        ("solarize at 100", lambda x: rand_augment.solarize(x, 100.0), lambda im: ImageOps.solarize(im, 100)),
    ],
)
def test_point_operations_equal_pil(name, ours, pil):
    image = _image(1)
    image[..., 0] = np.clip(image[..., 0], 40, 200)  # a channel that auto-contrast must stretch
    expected = np.asarray(pil(Image.fromarray(image)), np.float32)
    got = ours(tf.constant(image, tf.float32)).numpy()
    np.testing.assert_array_equal(got, expected, err_msg=name)


@pytest.mark.parametrize(
    "enhancer, ours",
    [
        (ImageEnhance.Color, lambda x, f: rand_augment._blend(rand_augment._grey(x), x, f)),
        (ImageEnhance.Brightness, lambda x, f: rand_augment._blend(tf.zeros_like(x), x, f)),
        (ImageEnhance.Sharpness, rand_augment.sharpness),
    ],
)
def test_enhance_operations_match_pil_within_rounding(enhancer, ours):
    image = _image(2)
    for factor in (0.2, 1.7):
        expected = np.asarray(enhancer(Image.fromarray(image)).enhance(factor), np.float32)
        got = ours(tf.constant(image, tf.float32), factor).numpy()
        assert np.abs(got - expected).max() <= 1.0, (enhancer.__name__, factor)


def test_translation_moves_pixels_and_fills_with_the_mean():
    image = tf.constant(_image(3), tf.float32)
    moved = rand_augment.translate_x(image, 5.0).numpy()  # output x samples input x + 5
    np.testing.assert_allclose(moved[:, :-5], image.numpy()[:, 5:], atol=1e-3)
    np.testing.assert_allclose(moved[:, -5:], np.broadcast_to(rand_augment.FILL, moved[:, -5:].shape), atol=1e-3)


def test_every_operation_keeps_shape_and_range_and_rand_augment_changes_images():
    image = tf.constant(_image(4), tf.float32)
    for index, name in enumerate(rand_augment.OPS):
        out = rand_augment.apply_op(index, image, tf.constant(9.0)).numpy()
        assert out.shape == image.shape and out.min() >= 0 and out.max() <= 255, name
    changed = [
        not np.array_equal(rand_augment.rand_augment(image, seed=None).numpy(), image.numpy()) for _ in range(60)
    ]
    # 2 ops at probability 0.5: P(no op applied) = 1/4 (a few operations may also leave this image as it is).
    assert 0.55 < np.mean(changed) < 0.95
