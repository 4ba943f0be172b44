"""Loads weights into a CMT model from an official PyTorch `.pth` checkpoint or a Keras `.weights.h5` file.

Everything is checked before anything is assigned: missing, unexpected or mis-shaped tensors raise one error that
lists them, never a silent partial load. Relative-position biases of another input size are resized.
"""

import os

import numpy as np

from keras_cmt import checkpoint_mapping
from keras_cmt.weights import keras_weights_file, position_bias_resize
from keras_cmt.weights.torch_checkpoint import read_torch_checkpoint, select_state_dict

_IGNORED_SUFFIXES = ("num_batches_tracked",)


def _list(items, limit=8):
    items = sorted(items)
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _shape_text(shape):
    return "x".join(str(int(s)) for s in shape)


def assign_state_dict(model, state_dict, source="checkpoint", exclude_head=False, source_input_shape=None):
    """Assigns an official-layout state dict (numpy arrays) to `model`, all or nothing.

    `source_input_shape`: the (height, width, ...) the weights were saved at, to resize the relative-position
    biases exactly; without it their grids are inferred (square, or the model's aspect ratio)."""
    state_dict = {
        (k[len("module."):] if k.startswith("module.") else k): v for k, v in state_dict.items()
    }
    entries = checkpoint_mapping.official_mapping(model)
    model_has_head = any(key == "head.weight" for key, _, _ in entries)
    if exclude_head:
        entries = [e for e in entries if not e[0].startswith("head.")]
    expected = {key for key, _, _ in entries}
    skipped_head = exclude_head or not model_has_head
    unexpected = [
        k for k in state_dict
        if k not in expected and not k.endswith(_IGNORED_SUFFIXES) and not (skipped_head and k.startswith("head."))
    ]
    missing = [k for k in expected if k not in state_dict]

    values, mismatched, resize_errors = [], [], []
    for key, variable, transform in entries:
        if key not in state_dict:
            continue
        value = transform(np.asarray(state_dict[key]))
        target = tuple(variable.shape)
        is_bias = key.startswith("relative_pos_") and value.ndim == 3
        # With a known source size the bias is always regridded: 64x96 -> 96x64 keeps its shape but not its grid.
        if is_bias and (value.shape != target or source_input_shape is not None):
            layer = model.get_layer(key)
            source_query_size = None
            if source_input_shape is not None:
                stride = 4 * 2 ** "abcd".index(key[-1])
                source_query_size = (source_input_shape[0] // stride, source_input_shape[1] // stride)
            try:
                value = position_bias_resize.resize_for_layer(value, layer, source_query_size)
            except ValueError as e:
                resize_errors.append(str(e))
                mismatched.append((key, value.shape, target))
                continue
        if value.shape != target:
            mismatched.append((key, value.shape, target))
            continue
        values.append((variable, value))
    if resize_errors and len(mismatched) == len(resize_errors) and all(
            m[0].startswith("relative_pos_") for m in mismatched):
        raise ValueError(f"{source}: {resize_errors[0]}")

    head_mismatch = [m for m in mismatched if m[0].startswith("head.")]
    if head_mismatch and len(mismatched) == len(head_mismatch) and not missing and not unexpected:
        ckpt_classes = state_dict["head.weight"].shape[0]
        model_classes = model.get_layer("head").units
        raise ValueError(
            f"{source}: its classifier has {ckpt_classes} classes but the model has classes={model_classes}; "
            f"build with classes={ckpt_classes}, or with include_top=False, or load with exclude_head=True "
            "to fine-tune a new head."
        )
    if missing or unexpected or mismatched:
        parts = []
        if mismatched:
            parts.append("mis-shaped: " + _list(
                f"{k} (checkpoint {_shape_text(a)} vs model {_shape_text(b)})" for k, a, b in mismatched))
        if missing:
            parts.append(f"missing {len(missing)}: " + _list(missing))
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: " + _list(unexpected))
        found = checkpoint_mapping.describe_state_dict(state_dict)
        raise ValueError(
            f"{source} does not match this model (checkpoint config: embed_dims {found['embed_dims']}, "
            f"depths {found['depths']}, stem {found['stem_channels']}; a different CMT variant?): "
            + "; ".join(parts)
        )
    for variable, value in values:
        variable.assign(value.astype(variable.dtype))
    return model


def load_weights(model, path, exclude_head=False, prefer="auto", source_input_shape=None):
    """Loads `path` into a CMT `model` built by `keras_cmt.CMT` or a variant builder.

    Args:
        model: the model to fill.
        path: an official PyTorch checkpoint (`.pth`/`.pt`, read without torch) or a Keras `.weights.h5`.
        exclude_head: leave the classifier layer ("head") as initialised, to fine-tune to other classes.
        prefer: for DeiT-style training checkpoints, which weights: "auto" (model_ema when present, as the
            official evaluation does), "ema" or "model".
        source_input_shape: (height, width, 3) of the model the weights were saved from, needed only for files
            saved from a non-square model into a model of another aspect ratio (a file does not record it; square
            or same-aspect sources are inferred).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such weights file.")
    if path.endswith(".h5"):
        state = keras_weights_file.read_as_state_dict(path, model)
    else:
        state = select_state_dict(read_torch_checkpoint(path), prefer=prefer, source=path)
    return assign_state_dict(model, state, source=path, exclude_head=exclude_head,
                             source_input_shape=source_input_shape)
