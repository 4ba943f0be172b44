"""The official checkpoint key mapping: which PyTorch tensor fills which Keras variable, and how it is laid out.

Each part of the paper lists its own keys (`checkpoint_entries`, beside its computation, as timm keeps a model's
checkpoint filter beside it; layouts in `keras_cmt.layers.checkpoint_layout`); this module walks a model's stem,
stages and head, and goes the other way for `export_state_dict`.
"""

import numpy as np

from keras_cmt.layers.checkpoint_layout import batch_norm_entries, conv, conv_entries, dense, depthwise, same
from keras_cmt.variants import STAGE_LETTERS


def _to_official(key, transform, value):
    """The inverse of a layout transform: a Keras variable's value in the official layout of `key`."""
    if transform is conv:
        value = np.transpose(value, (3, 2, 0, 1))
        linear = ".attn." in key and key.endswith(".weight")  # q, k, v, proj: nn.Linear upstream
        return value[:, :, 0, 0] if linear else value
    if transform is depthwise:
        return np.transpose(value, (2, 3, 0, 1))
    if transform is dense:
        return np.transpose(value)
    return value


def official_mapping(model):
    """Lists (official key, Keras variable, layout transform) for every weight of a CMT built by `keras_cmt.CMT`.

    The classifier ("head") is included only when the model has one.
    """
    names = {layer.name for layer in model.layers}
    entries = []
    for i in (1, 2, 3):
        entries += conv_entries(model.get_layer(f"stem_conv{i}"), f"stem_conv{i}")
        entries += batch_norm_entries(model.get_layer(f"stem_norm{i}"), f"stem_norm{i}")
    for letter in STAGE_LETTERS:
        entries += model.get_layer(f"patch_embed_{letter}").checkpoint_entries(f"patch_embed_{letter}")
        entries.append((f"relative_pos_{letter}", model.get_layer(f"relative_pos_{letter}").bias, same))
        index = 0
        while f"blocks_{letter}_{index}" in names:
            entries += model.get_layer(f"blocks_{letter}_{index}").checkpoint_entries(f"blocks_{letter}.{index}")
            index += 1
    entries += conv_entries(model.get_layer("head_conv"), "_fc")
    entries += batch_norm_entries(model.get_layer("head_norm"), "_bn")
    if "head" in names:
        head = model.get_layer("head")
        entries += [("head.weight", head.kernel, dense), ("head.bias", head.bias, same)]
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
