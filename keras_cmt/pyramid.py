"""Multi-scale CMT features for detection and segmentation heads.

Follows keras-hub's `Backbone.pyramid_outputs` convention: a dict whose key "P<level>" holds the feature map at
stride 2**level, so the four CMT stages are "P2" (stride 4), "P3" (8), "P4" (16) and "P5" (32). keras-hub's
FPN-style heads build `keras.Model(backbone.inputs, {f"P{i}": backbone.pyramid_outputs[f"P{i}"] ...})`; the model
returned here is exactly that, and carries the dict as `.pyramid_outputs` too.

The features are the outputs of the builder's "stage_1".."stage_4" layers (after each stage's last block, before
the 1x1 head convolution), so any CMT model, with any weights already loaded, can be turned into a pyramid model
whose layers share those weights.
"""

import keras

from keras_cmt import cmt

PYRAMID_LEVELS = {"P2": "stage_1", "P3": "stage_2", "P4": "stage_3", "P5": "stage_4"}


def pyramid_outputs(model):
    """Returns {"P2": ..., "P5": ...}, the symbolic stage outputs (strides 4, 8, 16, 32) of a CMT `model`."""
    names = {layer.name for layer in model.layers}
    missing = [name for name in PYRAMID_LEVELS.values() if name not in names]
    if missing:
        raise ValueError(f"{model.name} is not a keras_cmt CMT model: it has no layer {missing[0]!r}.")
    return {level: model.get_layer(name).output for level, name in PYRAMID_LEVELS.items()}


def pyramid_model(model, min_level=2, max_level=5, name=None):
    """Wraps a CMT model into a dict-output model of its stage features P`min_level`..P`max_level`; it shares the
    model's layers (and weights)."""
    if not 2 <= min_level <= max_level <= 5:
        raise ValueError(f"levels must satisfy 2 <= min_level <= max_level <= 5; got {min_level}, {max_level}.")
    features = pyramid_outputs(model)
    outputs = {f"P{level}": features[f"P{level}"] for level in range(min_level, max_level + 1)}
    result = keras.Model(inputs=model.input, outputs=outputs, name=name or f"{model.name}_pyramid")
    result.pyramid_outputs = outputs
    return result


def CMTPyramid(
    variant="cmt_s",
    weights=None,
    input_shape=None,
    input_tensor=None,
    min_level=2,
    max_level=5,
    drop_path_rate=0.0,
    name=None,
):
    """Builds a released CMT variant as a multi-scale feature extractor.

    Args:
        variant: "cmt_ti", "cmt_xs", "cmt_s", "cmt_b" (or an alias such as "CMTSmall").
        weights: None, "imagenet" (the official weights, resized to `input_shape` if it differs from the
            checkpoint's) or a `.weights.h5` / `.pth` path; the classifier is left out.
        input_shape: (height, width, 3) (or (3, height, width) channels first), multiples of 32, square or not;
            default the variant's default size.
        input_tensor: optional Keras tensor to use as input.
        min_level, max_level: the pyramid levels to return (2..5).
        drop_path_rate: stochastic depth for fine-tuning.
        name: the model's name (default "<variant>_pyramid").

    Returns:
        A `keras.Model` mapping images (normalised by `keras_cmt.preprocess_input`) to a dict {"P2": (B, H/4, W/4,
        C1), "P3": (B, H/8, W/8, C2), "P4": (B, H/16, W/16, C3), "P5": (B, H/32, W/32, C4)} (channels first
        with the channels_first image data format).
    """
    base = cmt.build_model(
        variant,
        include_top=False,
        weights=weights,
        input_shape=input_shape,
        input_tensor=input_tensor,
        drop_path_rate=drop_path_rate,
    )
    return pyramid_model(base, min_level=min_level, max_level=max_level, name=name or f"{base.name}_pyramid")
