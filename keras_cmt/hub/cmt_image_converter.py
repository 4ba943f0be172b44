"""The official evaluation transform as a keras-hub `ImageConverter`: raw RGB images of any size in, the model's
normalised square crop out, inside `predict`/`fit` (tf.data, grain or eager) on every backend.

The official evaluation (DeiT's transform, which CMT reuses) resizes the shorter side bicubically to
`int(size / 0.875)` (`keras_cmt.image_transforms.short_side`), centre-crops `size` x `size` and normalises with the
ImageNet mean and std. As in `keras_cmt.eval_transform`'s TensorFlow path, the resize is PIL's: antialiased
bicubic (a=-0.5), width first, then height, rounded to whole grey levels after each pass.
"""

import keras
from keras_hub.layers import ImageConverter

from keras_cmt.hub.cmt_backbone import CMTBackbone
from keras_cmt.image_transforms import DEFAULT_CROP_PCT, _crop_offset, _resized_shape, short_side
from keras_cmt.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from keras_cmt.hub import cmt_presets
from keras_cmt.hub.class_property import classproperty

# x / 255 then (x - mean) / std, as one scale and offset per channel.
IMAGENET_SCALE = [1.0 / (255.0 * s) for s in IMAGENET_STD]
IMAGENET_OFFSET = [-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]


@keras.saving.register_keras_serializable(package="keras_cmt")
class ShortSideResizeCenterCrop(keras.layers.Resizing):
    """Resizes the shorter side to `int(height / crop_pct)` (the longer in proportion, rounded down) and
    centre-crops `height` x `width` (torchvision's Resize + CenterCrop); `Resizing` otherwise."""

    def __init__(self, height, width, crop_pct=DEFAULT_CROP_PCT, **kwargs):
        if height is not None and height != width:
            raise ValueError(f"image_size must be square (the official crop); got ({height}, {width}).")
        super().__init__(height, width, **kwargs)
        self.crop_pct = float(crop_pct)

    def transform_images(self, images, transformation=None, training=True):
        """The image preprocessing layers' public hook (Keras' own `Resizing` implements it too)."""
        interpolation = self.interpolation
        ops = self.backend  # TensorFlow inside tf.data, the Keras backend otherwise
        images = ops.cast(images, "float32")
        shape = ops.shape(images)
        height, width = shape[self.height_axis], shape[self.width_axis]
        static = isinstance(height, int) and isinstance(width, int)
        shorter = min(height, width) if static else ops.numpy.minimum(height, width)
        new_h, new_w = _resized_shape(height, width, shorter, short_side(self.height, self.crop_pct))
        for size in ((height, new_w), (new_h, new_w)):  # PIL's two passes, each rounded
            images = ops.image.resize(
                images, size, interpolation=interpolation, antialias=self.antialias, data_format=self.data_format
            )
            images = ops.numpy.clip(ops.numpy.round(images), 0.0, 255.0)
        top, left = _crop_offset(new_h - self.height), _crop_offset(new_w - self.width)
        if self.data_format == "channels_last":
            return images[..., top : top + self.height, left : left + self.width, :]
        return images[..., top : top + self.height, left : left + self.width]

    def get_config(self):
        return {**super().get_config(), "crop_pct": self.crop_pct}


@keras.saving.register_keras_serializable(package="keras_cmt")
class CMTImageConverter(ImageConverter):
    """Raw RGB images (uint8 or float in [0, 255], any size) to CMT's input.

    Args:
        image_size: (size, size), the model's square input, e.g. (224, 224); None leaves the size alone.
        crop_pct: the crop's share of the resized shorter side (0.875, the official evaluation).
        scale, offset: per-channel `x * scale + offset` after resizing; default the ImageNet mean and std on
            [0, 255] pixels.
        interpolation, antialias: of the resize (bicubic, antialiased: PIL's, as the official evaluation).
    """

    backbone_cls = CMTBackbone

    def __init__(
        self,
        image_size=None,
        crop_pct=DEFAULT_CROP_PCT,
        scale=None,
        offset=None,
        interpolation="bicubic",
        antialias=True,
        **kwargs,
    ):
        if scale is None and offset is None:
            scale, offset = IMAGENET_SCALE, IMAGENET_OFFSET
        super().__init__(
            image_size=image_size,
            scale=scale,
            offset=offset,
            interpolation=interpolation,
            antialias=antialias,
            **kwargs,
        )
        if not 0.0 < float(crop_pct) <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1]; got {crop_pct!r}.")
        self.crop_pct = float(crop_pct)
        self.resizing = ShortSideResizeCenterCrop(
            height=image_size[0] if image_size else None,
            width=image_size[1] if image_size else None,
            crop_pct=self.crop_pct,
            interpolation=interpolation,
            antialias=antialias,
            data_format=self.data_format,
            dtype=self.dtype_policy,
            name="resizing",
        )

    def get_config(self):
        # data_format too: keras-hub's ImageConverter leaves it out, and a converter saved channels-first must not
        # crop the wrong axes where the default is channels-last.
        return {**super().get_config(), "crop_pct": self.crop_pct, "data_format": self.data_format}

    @classproperty
    def presets(cls):
        """keras_cmt's named presets ({name: {"metadata": ..., "variant": ...}}), built on first use."""
        return cmt_presets.listing()

    @classmethod
    def from_preset(cls, preset, **kwargs):
        """keras-hub's `ImageConverter.from_preset`, plus keras_cmt's named presets and a one-line error for a
        local directory that is not a CMT preset."""
        return super().from_preset(
            cmt_presets.resolve(preset, need=((("image_converter.json",), "the image converter"),)), **kwargs
        )
