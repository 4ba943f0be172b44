"""Loads weights into a CMT model from an official PyTorch `.pth` checkpoint or a Keras `.weights.h5` file, and
`.keras` model files (`load_model_file`, in Keras' safe mode), each failing in one line that names the file.

A `.pth` goes through the official key mapping (`keras_cmt.checkpoint_mapping`); a `.weights.h5` through Keras' own
`load_weights`, after its layout has been compared with the one the model saves, so that a file of another model
is refused with a list of what differs instead of loading into the wrong layers. Either way everything is checked
before anything is assigned, and a failed load leaves the model as it was. Relative-position biases of another
input size are resized (`RelativePositionBias.load_own_variables` for Keras files).
"""

import math
import os
import tempfile

import h5py
import keras
import numpy as np

from keras_cmt import checkpoint_mapping
from keras_cmt.layers import RelativePositionBias, exact_gelu
from keras_cmt.weights import position_bias_resize
from keras_cmt.weights.torch_checkpoint import read_torch_checkpoint, select_state_dict

_IGNORED_SUFFIXES = ("num_batches_tracked",)
# Keras files address a functional model's layers by class name: the classifier is the model's one Dense layer.
_KERAS_HEAD_GROUP = "layers/dense/"


def _list(items, limit=8):
    items = sorted(items)
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _shape_text(shape):
    return "x".join(str(int(s)) for s in shape)


def _has_head(model):
    return any(layer.name == "head" for layer in model.layers)


def assign_state_dict(model, state_dict, source="checkpoint", exclude_head=False):
    """Assigns an official-layout state dict (numpy arrays) to `model`, all or nothing."""
    state_dict = {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state_dict.items()}
    entries = checkpoint_mapping.official_mapping(model)
    if exclude_head:
        entries = [e for e in entries if not e[0].startswith("head.")]
    expected = {key for key, _, _ in entries}
    skipped_head = exclude_head or not _has_head(model)
    unexpected = [
        k
        for k in state_dict
        if k not in expected and not k.endswith(_IGNORED_SUFFIXES) and not (skipped_head and k.startswith("head."))
    ]
    missing = [k for k in expected if k not in state_dict]

    values, mismatched, resize_errors, wrong_type = [], [], [], []
    for key, variable, transform in entries:
        if key not in state_dict:
            continue
        raw = np.asarray(state_dict[key])
        target = tuple(variable.shape)
        if raw.dtype.kind != "f":  # an integer or boolean tensor is not a weight: never cast it into one
            wrong_type.append(f"{key} ({raw.dtype})")
            continue
        try:
            value = transform(raw)
        except (ValueError, IndexError):  # another rank than the layout transform takes
            mismatched.append((key, raw.shape, target))
            continue
        if key.startswith("relative_pos_") and value.ndim == 3 and value.shape != target:
            try:
                value = position_bias_resize.resize_for_layer(value, model.get_layer(key))
            except ValueError as e:
                resize_errors.append(str(e))
                mismatched.append((key, value.shape, target))
                continue
        if value.shape != target:
            mismatched.append((key, value.shape, target))
            continue
        values.append((variable, value))
    if resize_errors and len(mismatched) == len(resize_errors):
        raise ValueError(f"{source}: {resize_errors[0]}")

    if wrong_type:
        raise ValueError(
            f"{source}: tensors that are not floating point (not weights of this model?): " + _list(wrong_type)
        )
    head_mismatch = [m for m in mismatched if m[0].startswith("head.")]
    head = np.asarray(state_dict.get("head.weight", ()))
    if head_mismatch and len(mismatched) == len(head_mismatch) and not missing and not unexpected and head.ndim == 2:
        raise _classes_error(source, head.shape[0], model)
    if missing or unexpected or mismatched:
        found = checkpoint_mapping.describe_state_dict(state_dict)
        raise ValueError(
            f"{source} does not match this model (checkpoint config: embed_dims {found['embed_dims']}, "
            f"depths {found['depths']}, stem {found['stem_channels']}; a different CMT variant?): "
            + _differences(missing, unexpected, mismatched)
        )
    for variable, value in values:
        variable.assign(value.astype(variable.dtype))
    return model


def _classes_error(source, file_classes, model):
    model_classes = model.get_layer("head").units
    return ValueError(
        f"{source}: its classifier has {file_classes} classes but the model has classes={model_classes}; "
        f"build with classes={file_classes}, or with include_top=False, or load with exclude_head=True "
        "to fine-tune a new head."
    )


def _differences(missing, unexpected, mismatched):
    parts = []
    if mismatched:
        parts.append(
            "mis-shaped: " + _list(f"{k} (file {_shape_text(a)} vs model {_shape_text(b)})" for k, a, b in mismatched)
        )
    if missing:
        parts.append(f"missing {len(missing)}: " + _list(missing))
    if unexpected:
        parts.append(f"unexpected {len(unexpected)}: " + _list(unexpected))
    return "; ".join(parts)


# A `.weights.h5` holds at most this many bytes of tensors (as the PyTorch reader's limit): the relative-position
# biases may be of another input size, everything else has the model's own shapes.
MAX_H5_BYTES = 4 << 30


def _clean(text, limit=80):
    """A name or message from a file, on one short line."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _h5_layout(path):
    """({dataset path: shape}, {top-level group: layer name}, {dataset path: dtype}) of a `.weights.h5` file: its
    structure only, no tensor data is read."""
    shapes, names, dtypes = {}, {}, {}
    try:
        with h5py.File(path, "r") as f:

            def visit(name, item):
                if isinstance(item, h5py.Dataset):
                    shapes[name] = tuple(int(s) for s in item.shape)
                    dtypes[name] = item.dtype
                    group = "/".join(name.split("/")[:2])
                    if group not in names:
                        attrs = f[group + "/vars"].attrs if group + "/vars" in f else {}
                        names[group] = _clean(attrs.get("name", group))

            f.visititems(visit)
    except Exception as e:  # noqa: BLE001 - h5py raises OSError, KeyError, RuntimeError, TypeError... on bad files
        raise ValueError(f"{path}: not a readable Keras .weights.h5 file ({_clean(e, 300)}).") from None
    if not shapes:
        raise ValueError(f"{path}: no weights found (not a Keras .weights.h5 file?).")
    return shapes, names, dtypes


def _dtype_fits(found, expected):
    """Whether a dataset of dtype `found` may fill a variable saved as `expected`: the same dtype; a float16 or
    float32 dataset for a float variable (exact in float32, and how a float32 file fills a float16 model); any
    integer for an integer variable. Not float64 into float32 (not a file of this model: its values would be
    rounded, large ones to inf), nor integers, booleans, strings or compound data for floats."""
    found, expected = np.dtype(found), np.dtype(expected)
    if found == expected:
        return True
    if expected.kind == "f":
        return found.kind == "f" and found.itemsize <= 4
    if expected.kind in "iu":
        return found.kind in "iu"
    return False


def _check_dtypes(path, found, expected, expected_names):
    wrong = []
    for dataset, dtype in expected.items():
        if dataset in found and not _dtype_fits(found[dataset], dtype):
            layer = expected_names.get(_group(dataset), _group(dataset))
            wrong.append(f"{layer} ({dataset} is {_clean(found[dataset], 24)}, the model holds {np.dtype(dtype).name})")
    if wrong:
        raise ValueError(f"{path}: datasets of the wrong type (not weights of this model?): " + _list(wrong))


def _check_data(path, datasets, shapes, dtypes):
    """Reads every dataset Keras is about to load, so that a corrupt or truncated file fails here, before any
    variable is assigned, and not half-way through Keras' load."""
    total = sum(math.prod(shapes[d]) * np.dtype(dtypes[d]).itemsize for d in datasets)
    if total > MAX_H5_BYTES:
        raise ValueError(
            f"{path}: its tensors declare {total} bytes, more than a CMT's weights take "
            f"(at most {MAX_H5_BYTES >> 30} GiB); refused before reading them."
        )
    current = None
    try:
        with h5py.File(path, "r") as f:
            for current in datasets:
                values = np.asarray(f[current][()])
                if values.shape != shapes[current]:
                    raise ValueError(f"unexpected data for shape {shapes[current]}")
    except Exception as e:  # noqa: BLE001 - whatever h5py raises while reading data
        where = f" (reading {current})" if current else ""
        raise ValueError(f"{path}: corrupt or truncated .weights.h5 file{where}: {_clean(e, 300)}.") from None


def _saved_layout(model):
    """The layout (shapes, names, dtypes) of the `.weights.h5` file `model` saves."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.weights.h5")
        model.save_weights(path)
        return _h5_layout(path)


def _group(dataset_path):
    return "/".join(dataset_path.split("/")[:2])


def load_keras_weights(model, path, exclude_head=False):
    """Loads a Keras `.weights.h5` of a CMT into `model` with Keras, after checking that it fits: the same layers
    (by position, as Keras addresses them, and by name) holding tensors of the same shapes, the relative-position
    biases excepted (they are resized), of dtypes that fit (`_dtype_fits`), and readable to the last byte. Each
    check fails with one ValueError line naming the file, before any variable is assigned."""
    found, found_names, found_dtypes = _h5_layout(path)
    target = model
    if _has_head(model) and exclude_head:
        target = keras.Model(model.inputs, model.get_layer("head").input)
    expected, expected_names, expected_dtypes = _saved_layout(target)
    skip_head = exclude_head or not _has_head(model)
    biases = {layer.name for layer in model.layers if isinstance(layer, RelativePositionBias)}

    def fits(dataset):
        a, b = found[dataset], expected[dataset]
        return a == b or (expected_names[_group(dataset)] in biases and len(a) == 3 and a[0] == b[0])

    missing = [expected_names[g] for g in expected_names if g not in found_names]
    unexpected = [
        found_names[g]
        for g in found_names
        if g not in expected_names and not (skip_head and g + "/" == _KERAS_HEAD_GROUP)
    ]
    mismatched = {}
    for group, name in expected_names.items():
        if group not in found_names:
            continue
        ours = [p for p in expected if _group(p) == group]
        theirs = {p for p in found if _group(p) == group}
        if found_names[group] != name or theirs != set(ours) or not all(fits(p) for p in ours):
            mismatched[group] = name
    kernel = f"{_KERAS_HEAD_GROUP}vars/0"
    if list(mismatched.values()) == ["head"] and not missing and not unexpected and len(found.get(kernel, ())) == 2:
        raise _classes_error(path, found[kernel][-1], model)
    if missing or unexpected or mismatched:
        parts = []
        if mismatched:
            parts.append(
                "different: "
                + _list(
                    f"{name} (the file's {found_names[group]})" if found_names[group] != name else name
                    for group, name in mismatched.items()
                )
            )
        if missing:
            parts.append(f"missing {len(missing)}: " + _list(missing))
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: " + _list(unexpected))
        raise ValueError(f"{path} does not fit this model (a different CMT configuration?): " + "; ".join(parts))
    _check_dtypes(path, found_dtypes, expected_dtypes, expected_names)
    _check_data(path, sorted(expected), found, found_dtypes)
    before = [np.array(keras.ops.convert_to_numpy(v)) for v in model.weights]
    try:
        target.load_weights(path)
    except Exception as e:  # noqa: BLE001 - whatever Keras raised, the model goes back to where it was
        for variable, value in zip(model.weights, before):
            variable.assign(value)
        raise ValueError(f"{path}: {' '.join(str(e).split())[:300]}") from None
    return model


def check_weights_file(path):
    """Raises one ValueError line naming `path` unless it is a Keras `.weights.h5` file whose every dataset reads
    back whole: for loaders that hand the file to Keras (keras-hub presets), so that a truncated or corrupt file
    fails before any variable is assigned, with its path (h5py's own errors do not name it)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such weights file.")
    shapes, _, dtypes = _h5_layout(path)
    _check_data(path, sorted(shapes), shapes, dtypes)
    return path


# A `.keras` file's config.json is parsed whole (by Keras too): beyond this it is not a model's configuration.
MAX_KERAS_CONFIG_BYTES = 64 << 20
_KERAS_PACKAGES = ("keras", "keras_hub", "keras_cv", "keras_nlp")  # the modules Keras itself imports from a config


def _resolvable(entry):
    """Whether Keras can find the class a serialised object in a .keras config names (its registered name, or a
    class of a Keras package's module), without importing anything else."""
    import importlib

    registered = entry.get("registered_name")
    if isinstance(registered, str) and keras.saving.get_registered_object(registered) is not None:
        return True
    name, module = entry.get("class_name"), entry.get("module")
    if name in keras.saving.get_custom_objects():
        return True
    if not (isinstance(module, str) and module.split(".")[0] in _KERAS_PACKAGES):
        return False
    if name == "function":  # a Keras function (activation, loss, ...): the function's name is its config
        name = entry.get("config")
    try:
        return isinstance(name, str) and hasattr(importlib.import_module(module), name)
    except ImportError:
        return False


def _unresolvable_class(config):
    """The first "module.class_name" in a .keras config that Keras cannot resolve, or None."""
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            name = node.get("class_name")
            if isinstance(name, str) and not name.startswith("__") and "module" in node and not _resolvable(node):
                return _clean(f"{node.get('module')}.{name}" if node.get("module") else name)
            stack.extend(reversed(list(node.values())))
        elif isinstance(node, list):
            stack.extend(reversed(node))
    return None


def _keras_error(error):
    """Keras' load error on one short line: the innermost cause, without the object config it prints."""
    text = str(error)
    if "Exception encountered:" in text:
        text = text.rsplit("Exception encountered:", 1)[1]
    for cut in (" Full object config", "config={", " Make sure custom classes"):
        text = text.split(cut, 1)[0]
    return _clean(text or type(error).__name__, 240)


def load_model_file(path):
    """Loads a `.keras` model file with Keras in safe mode (`safe_mode=True`: lambdas and other arbitrary code in
    the file are refused, never run) and without compiling it; any way the file can be wrong (missing, not a zip,
    truncated, a config naming a class Keras cannot resolve such as os.system, weights that do not load) is one
    ValueError line naming the file."""
    import json
    import zipfile

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such .keras file.")
    try:
        if not zipfile.is_zipfile(path):
            raise ValueError(f"{path}: not a Keras .keras file (not a zip archive: truncated, or another format).")
        with zipfile.ZipFile(path) as archive:
            try:
                info = archive.getinfo("config.json")
            except KeyError:
                raise ValueError(f"{path}: not a Keras .keras file (no config.json in the archive).") from None
            if info.file_size > MAX_KERAS_CONFIG_BYTES:
                raise ValueError(
                    f"{path}: its config.json declares {info.file_size} bytes, more than a model's "
                    f"configuration takes; refused."
                )
            text = archive.read(info)
    except ValueError:
        raise
    except (OSError, zipfile.BadZipFile, EOFError, RuntimeError, NotImplementedError) as e:
        raise ValueError(f"{path}: corrupt .keras archive ({_clean(e, 200)}).") from None
    try:
        config = json.loads(text)
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path}: its config.json is not valid JSON ({_clean(e, 120)}).") from None
    if not isinstance(config, dict) or "class_name" not in config:
        raise ValueError(f"{path}: its config.json is not a Keras model configuration.")
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - Keras raises TypeError, ValueError, KeyError, OSError (h5py), ...
        if "safe_mode" in str(e):
            raise ValueError(
                f"{path}: refused: it holds Python code (a lambda) that Keras' safe mode does not load; "
                "nothing in the file was run."
            ) from None
        unknown = _unresolvable_class(config)
        if unknown:
            raise ValueError(
                f"{path}: refused: its config names {unknown}, which is neither a Keras class nor one "
                "registered with Keras (loaded in safe mode; nothing in the file was run)."
            ) from None
        raise ValueError(f"{path}: cannot load it as a Keras model: {_keras_error(e)}") from None
    _stem_gelus_as_exact_gelu(model)
    return model


def _stem_gelus_as_exact_gelu(model):
    """A CMT saved before its stem's GELUs were `exact_gelu` has Activation("gelu") there: the same function, but
    on TensorFlow tf.nn.gelu, whose Erfc ONNX lacks. Those layers get `exact_gelu` (they hold no weights)."""
    for layer in getattr(model, "layers", ()):
        if (
            isinstance(layer, keras.layers.Activation)
            and layer.name.startswith("stem_gelu")
            and layer.activation is keras.activations.gelu
        ):
            layer.activation = exact_gelu
        _stem_gelus_as_exact_gelu(layer)  # nested models (a keras-hub task's backbone)


def load_weights(model, path, exclude_head=False, prefer="auto"):
    """Loads `path` into a CMT `model` built by `keras_cmt.CMT` or a variant builder.

    Args:
        model: the model to fill.
        path: an official PyTorch checkpoint (`.pth`/`.pt`, read without torch) or a Keras `.weights.h5`.
        exclude_head: leave the classifier layer ("head") as initialised, to fine-tune to other classes.
        prefer: for DeiT-style training checkpoints, which weights: "auto" (model_ema when present, as the
            official evaluation does), "ema" or "model".
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such weights file.")
    if path.endswith(".h5"):
        return load_keras_weights(model, path, exclude_head=exclude_head)
    state = select_state_dict(read_torch_checkpoint(path), prefer=prefer, source=path)
    return assign_state_dict(model, state, source=path, exclude_head=exclude_head)
