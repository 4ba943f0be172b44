"""keras_cmt: CMT (Convolutional Neural Networks Meet Vision Transformers, CVPR 2022) for Keras 3."""

# Imported inside command_startup(): keras_cmt's own commands start quiet (see keras_cmt/quiet.py); nothing changes
# for a program that imports keras_cmt.
from keras_cmt import quiet as _quiet

with _quiet.command_startup():
    from keras_cmt.cmt import BUILDERS as _BUILDERS
    from keras_cmt.cmt import CMT, build_model
    from keras_cmt.flops import count_macs
    from keras_cmt import optimizers
    from keras_cmt.inference import fuse_for_inference
    from keras_cmt.image_transforms import eval_transform, load_image
    from keras_cmt.preprocessing import (
        IMAGENET_MEAN,
        IMAGENET_STD,
        decode_predictions,
        imagenet_labels,
        preprocess_input,
    )
    from keras_cmt.pyramid import CMTPyramid, pyramid_model, pyramid_outputs
    from keras_cmt.variants import VARIANTS, get_variant
    from keras_cmt.weights.loading import load_weights

from keras_cmt import hub_registration as _hub_registration

_hub_registration.install()

# The variant builders, one per row of `VARIANTS`: CMTTiny, CMTXS, CMTSmall, CMTBase.
globals().update(_BUILDERS)

__version__ = "0.1.0"

__all__ = [
    "CMT",
    "CMTPyramid",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VARIANTS",
    "build_model",
    "count_macs",
    "decode_predictions",
    "eval_transform",
    "fuse_for_inference",
    "get_variant",
    "imagenet_labels",
    "load_image",
    "load_weights",
    "optimizers",
    "preprocess_input",
    "pyramid_model",
    "pyramid_outputs",
    *_BUILDERS,
]
