"""The official checkpoint key mapping: which PyTorch tensor fills which Keras variable, and how it is laid out.

Kept beside the model (as timm does) so the two change together. PyTorch stores convolutions as (O, I, kh, kw),
depthwise convolutions as (C, 1, kh, kw) and linear layers as (O, I); Keras wants (kh, kw, I, O), (kh, kw, C, 1)
and (I, O). q/k/v/proj are nn.Linear upstream and 1x1 Conv2D here (the same numbers, a 4-D-friendly form).
"""

import numpy as np

from keras_cmt.variants import STAGE_LETTERS


def _conv(w):
    if w.ndim == 2:  # nn.Linear used as a 1x1 convolution
        w = w[:, :, None, None]
    return np.transpose(w, (2, 3, 1, 0))


def _depthwise(w):
    return np.transpose(w, (2, 3, 0, 1))


def _dense(w):
    return np.transpose(w)


def _same(w):
    return w


def _to_official(key, transform, value):
    """The inverse of a layout transform: a Keras variable's value in the official layout of `key`."""
    if transform is _conv:
        value = np.transpose(value, (3, 2, 0, 1))
        linear = ".attn." in key and key.endswith(".weight")  # q, k, v, proj: nn.Linear upstream
        return value[:, :, 0, 0] if linear else value
    if transform is _depthwise:
        return np.transpose(value, (2, 3, 0, 1))
    if transform is _dense:
        return np.transpose(value)
    return value


def _conv_entries(layer, prefix, kernel_transform=_conv):
    entries = [(f"{prefix}.weight", layer.kernel, kernel_transform)]
    if layer.use_bias:
        entries.append((f"{prefix}.bias", layer.bias, _same))
    return entries


def _residual_depthwise_entries(layer, prefix):
    """A `LocalPerceptionUnit`: the official depthwise convolution, its bias held by the unit."""
    return [(f"{prefix}.weight", layer.proj.kernel, _depthwise), (f"{prefix}.bias", layer.bias, _same)]


def _batch_norm_entries(layer, prefix):
    return [
        (f"{prefix}.weight", layer.gamma, _same),
        (f"{prefix}.bias", layer.beta, _same),
        (f"{prefix}.running_mean", layer.moving_mean, _same),
        (f"{prefix}.running_var", layer.moving_variance, _same),
    ]


def _layer_norm_entries(layer, prefix):
    return [(f"{prefix}.weight", layer.gamma, _same), (f"{prefix}.bias", layer.beta, _same)]


def _block_entries(block, prefix):
    attn, mlp = block.attn, block.mlp
    entries = _residual_depthwise_entries(block.lpu, f"{prefix}.proj")
    entries += _layer_norm_entries(block.norm1, f"{prefix}.norm1")
    for name in ("q", "k", "v", "proj"):
        entries += _conv_entries(getattr(attn, name), f"{prefix}.attn.{name}")
    if attn.sr_ratio > 1:
        entries += _conv_entries(attn.sr, f"{prefix}.attn.sr.0", _depthwise)
        entries += _batch_norm_entries(attn.sr_norm, f"{prefix}.attn.sr.1")
    entries += _layer_norm_entries(block.norm2, f"{prefix}.norm2")
    entries += _conv_entries(mlp.conv1, f"{prefix}.mlp.conv1.0")
    entries += _batch_norm_entries(mlp.norm1, f"{prefix}.mlp.conv1.2")
    entries += _residual_depthwise_entries(mlp.dwconv, f"{prefix}.mlp.proj")
    entries += _batch_norm_entries(mlp.norm2, f"{prefix}.mlp.proj_bn")
    entries += _conv_entries(mlp.conv2, f"{prefix}.mlp.conv2.0")
    entries += _batch_norm_entries(mlp.norm3, f"{prefix}.mlp.conv2.1")
    return entries


def official_mapping(model):
    """Lists (official key, Keras variable, layout transform) for every weight of a CMT built by `keras_cmt.CMT`.

    The classifier ("head") is included only when the model has one.
    """
    names = {layer.name for layer in model.layers}
    entries = []
    for i in (1, 2, 3):
        entries += _conv_entries(model.get_layer(f"stem_conv{i}"), f"stem_conv{i}")
        entries += _batch_norm_entries(model.get_layer(f"stem_norm{i}"), f"stem_norm{i}")
    for letter in STAGE_LETTERS:
        embed = model.get_layer(f"patch_embed_{letter}")
        entries += _conv_entries(embed.proj, f"patch_embed_{letter}.proj")
        entries += _layer_norm_entries(embed.norm, f"patch_embed_{letter}.norm")
        entries.append((f"relative_pos_{letter}", model.get_layer(f"relative_pos_{letter}").bias, _same))
        index = 0
        while f"blocks_{letter}_{index}" in names:
            entries += _block_entries(model.get_layer(f"blocks_{letter}_{index}"), f"blocks_{letter}.{index}")
            index += 1
    entries += _conv_entries(model.get_layer("head_conv"), "_fc")
    entries += _batch_norm_entries(model.get_layer("head_norm"), "_bn")
    if "head" in names:
        head = model.get_layer("head")
        entries += [("head.weight", head.kernel, _dense), ("head.bias", head.bias, _same)]
    return entries


def export_state_dict(model):
    """The model's weights as an official state dict (numpy arrays under the official keys and layouts), what
    `cmt_pytorch/cmt.py`'s `load_state_dict` takes."""
    import keras

    return {
        key: _to_official(key, transform, np.asarray(keras.ops.convert_to_numpy(variable)))
        for key, variable, transform in official_mapping(model)
    }


def describe_state_dict(state_dict):
    """Guesses the configuration a state dict was trained with: embed dims, depths, stem width, classes."""

    def leading(key):  # a tensor's first dimension, None when absent or 0-d
        w = state_dict.get(key)
        shape = getattr(w, "shape", ())
        return int(shape[0]) if len(shape) else None

    embed_dims, depths = [], []
    for letter in STAGE_LETTERS:
        embed_dims.append(leading(f"patch_embed_{letter}.proj.weight"))
        prefix = f"blocks_{letter}."
        depths.append(len({k.split(".")[1] for k in state_dict if k.startswith(prefix)}))
    return {
        "embed_dims": embed_dims,
        "depths": depths,
        "stem_channels": leading("stem_conv1.weight"),
        "classes": leading("head.weight"),
    }
