"""RandAugment as the official CMT recipe runs it (timm's `rand-m9-mstd0.5-inc1`), per image, in TensorFlow ops.

Keras' `RandAugment` has no magnitude noise and picks its operations once per call (once per batch in a batched
pipeline); timm's, which the reported accuracy was trained with, picks `num_ops` operations per image (with
replacement), applies each with probability 0.5 at a magnitude drawn from N(m, std) clipped to [0, 10], and uses
the "increasing" operation set, where a larger magnitude is always a stronger change. Hand-written here for that
reason; each operation follows the definition of its PIL counterpart on RGB images in [0, 255].
"""

import math

import tensorflow as tf

MAX_MAGNITUDE = 10.0
# timm's default fill for geometric operations: the ImageNet mean in [0, 255].
FILL = (124.0, 116.0, 104.0)
OPS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "Posterize",
    "Solarize",
    "SolarizeAdd",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
)


def sample_magnitude(magnitude, std, shape=(), seed=None):
    """N(magnitude, std) clipped to [0, 10]; `magnitude` itself when std is 0."""
    if std <= 0:
        return tf.fill(shape, tf.constant(float(magnitude)))
    draw = tf.random.normal(shape, float(magnitude), float(std), seed=seed)
    return tf.clip_by_value(draw, 0.0, MAX_MAGNITUDE)


def _random_sign(level, seed=None):
    return tf.where(tf.random.uniform([], seed=seed) < 0.5, -level, level)


def _blend(degenerate, image, factor):
    return tf.clip_by_value(degenerate + factor * (image - degenerate), 0.0, 255.0)


def _grey(image):
    # PIL's "L" conversion (ITU-R 601-2 luma), rounded as PIL stores it.
    return tf.round(tf.tensordot(image, tf.constant([0.299, 0.587, 0.114]), axes=1))[..., None]


def auto_contrast(image):
    """PIL's ImageOps.autocontrast per channel: [min, max] stretched to [0, 255], truncated as PIL's table is."""
    values = tf.cast(image, tf.float64)
    low = tf.reduce_min(values, axis=[0, 1], keepdims=True)
    high = tf.reduce_max(values, axis=[0, 1], keepdims=True)
    scale = 255.0 / tf.maximum(high - low, 1e-6)
    stretched = tf.clip_by_value(tf.floor(values * scale - low * scale), 0.0, 255.0)
    return tf.cast(tf.where(high > low, stretched, values), tf.float32)


def equalize(image):
    """PIL's ImageOps.equalize per channel: a lookup table from the cumulative histogram."""

    def channel(values):
        values = tf.cast(tf.clip_by_value(tf.round(values), 0, 255), tf.int32)
        hist = tf.math.bincount(tf.reshape(values, [-1]), minlength=256, maxlength=256)
        last_nonzero = tf.gather(hist, tf.reduce_max(tf.where(hist > 0)))
        step = (tf.reduce_sum(hist) - last_nonzero) // 255
        cumulative = tf.concat([[0], tf.cumsum(hist)[:-1]], axis=0)
        lut = tf.clip_by_value((cumulative + step // 2) // tf.maximum(step, 1), 0, 255)
        return tf.where(step > 0, tf.cast(tf.gather(lut, values), tf.float32), tf.cast(values, tf.float32))

    return tf.stack([channel(image[..., c]) for c in range(3)], axis=-1)


def posterize(image, bits):
    shift = tf.cast(8 - bits, tf.int32)
    values = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.int32)
    return tf.cast(tf.bitwise.left_shift(tf.bitwise.right_shift(values, shift), shift), tf.float32)


def solarize(image, threshold):
    return tf.where(image >= threshold, 255.0 - image, image)


def solarize_add(image, addition, threshold=128.0):
    return tf.where(image < threshold, tf.clip_by_value(image + addition, 0.0, 255.0), image)


def sharpness(image, factor):
    """PIL's ImageEnhance.Sharpness: blend with the SMOOTH-filtered image (border pixels kept)."""
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    smooth = tf.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1], "VALID")[0]
    smooth = tf.clip_by_value(tf.round(smooth), 0.0, 255.0)
    smooth = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    rows = tf.range(height)[:, None]
    cols = tf.range(width)[None, :]
    inside = (rows > 0) & (rows < height - 1) & (cols > 0) & (cols < width - 1)
    degenerate = tf.where(inside[..., None], smooth, image)
    return _blend(degenerate, image, factor)


def _affine(image, transform):
    """Output pixel (x, y) samples input (a0 x + a1 y + a2, b0 x + b1 y + b2), bilinear, FILL outside."""
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    with_mask = tf.concat([image, tf.ones_like(image[..., :1])], axis=-1)
    transform = tf.concat([tf.cast(transform, tf.float32), tf.zeros([2])], axis=0)[None]
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=with_mask[None],
        transforms=transform,
        output_shape=tf.stack([height, width]),
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )[0]
    mask = out[..., 3:]
    return out[..., :3] + (1.0 - mask) * tf.constant(FILL)


def rotate(image, degrees):
    height = tf.cast(tf.shape(image)[0], tf.float32)
    width = tf.cast(tf.shape(image)[1], tf.float32)
    angle = degrees * math.pi / 180.0
    cos, sin = tf.cos(angle), tf.sin(angle)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    # Counter-clockwise by `degrees` about the centre, as PIL's Image.rotate.
    return _affine(image, tf.stack([cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy]))


def shear_x(image, level):
    return _affine(image, tf.stack([1.0, level, 0.0, 0.0, 1.0, 0.0]))


def shear_y(image, level):
    return _affine(image, tf.stack([1.0, 0.0, 0.0, level, 1.0, 0.0]))


def translate_x(image, pixels):
    return _affine(image, tf.stack([1.0, 0.0, pixels, 0.0, 1.0, 0.0]))


def translate_y(image, pixels):
    return _affine(image, tf.stack([1.0, 0.0, 0.0, 0.0, 1.0, pixels]))


def apply_op(index, image, magnitude, seed=None):
    """OPS[index] on one (H, W, 3) float image in [0, 255] at `magnitude` (0..10), with timm's increasing
    level-to-argument mappings (signed operations take a random sign)."""
    level = magnitude / MAX_MAGNITUDE
    height = tf.cast(tf.shape(image)[0], tf.float32)
    width = tf.cast(tf.shape(image)[1], tf.float32)
    enhance = 1.0 + _random_sign(level * 0.9, seed)
    branches = [
        lambda: auto_contrast(image),
        lambda: equalize(image),
        lambda: 255.0 - image,
        lambda: rotate(image, _random_sign(level * 30.0, seed)),
        lambda: posterize(image, 4 - tf.cast(level * 4.0, tf.int32)),
        lambda: solarize(image, 256.0 - tf.floor(level * 256.0)),
        lambda: solarize_add(image, tf.floor(level * 110.0)),
        lambda: _blend(_grey(image), image, enhance),
        lambda: _blend(tf.round(tf.reduce_mean(_grey(image))), image, enhance),
        lambda: _blend(tf.zeros_like(image), image, enhance),
        lambda: sharpness(image, enhance),
        lambda: shear_x(image, _random_sign(level * 0.3, seed)),
        lambda: shear_y(image, _random_sign(level * 0.3, seed)),
        lambda: translate_x(image, _random_sign(level * 0.45, seed) * width),
        lambda: translate_y(image, _random_sign(level * 0.45, seed) * height),
    ]
    out = tf.switch_case(tf.cast(index, tf.int32), branches)
    return tf.ensure_shape(out, image.shape)


def rand_augment(image, magnitude=9.0, magnitude_std=0.5, num_ops=2, prob=0.5, seed=None):
    """timm's RandAugment on one (H, W, 3) float32 image in [0, 255]: `num_ops` operations drawn with replacement,
    each applied with probability `prob` at a magnitude from N(magnitude, magnitude_std) clipped to [0, 10]."""
    image = tf.convert_to_tensor(image, tf.float32)
    for _ in range(num_ops):
        index = tf.random.uniform([], 0, len(OPS), tf.int32, seed=seed)
        level = sample_magnitude(magnitude, magnitude_std, seed=seed)
        apply = tf.random.uniform([], seed=seed) < prob
        image = tf.cond(apply, lambda: apply_op(index, image, level, seed), lambda: image)
    return image
