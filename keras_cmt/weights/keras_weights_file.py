"""Reads a Keras `.weights.h5` file of a CMT model into the official state-dict layout.

Keras 3 stores weights by object structure, with each layer's name kept as an attribute. Reading them by name and
converting to the official keys lets one loader (`loading.assign_state_dict`) check shapes, resize the
relative-position biases to another input size and leave out the classifier, whichever format the weights came in.
"""

import h5py
import numpy as np

from keras_cmt import checkpoint_mapping


def _inverse_transform(transform, value):
    """Undoes a `checkpoint_mapping` layout transform (Keras layout -> official layout)."""
    if transform is checkpoint_mapping._conv:
        return np.transpose(value, (3, 2, 0, 1))
    if transform is checkpoint_mapping._depthwise:
        return np.transpose(value, (2, 3, 0, 1))
    if transform is checkpoint_mapping._dense:
        return np.transpose(value)
    return value


def read_arrays(path):
    """Returns {"layer/sublayer": [array, ...]} for every layer that stored variables, named by layer names."""
    arrays = {}
    try:
        with h5py.File(path, "r") as f:

            def visit(group, names):
                for key, child in group.items():
                    if not isinstance(child, h5py.Group) or key == "vars":
                        continue
                    child_names = names
                    if "vars" in child:
                        child_names = names + [str(child["vars"].attrs.get("name", key))]
                        variables = child["vars"]
                        if len(variables):
                            arrays["/".join(child_names)] = [
                                np.asarray(variables[str(i)]) for i in range(len(variables))
                            ]
                    visit(child, child_names)

            visit(f, [])
    except OSError as e:
        raise ValueError(f"{path}: not a readable Keras .weights.h5 file ({e}).") from None
    if not arrays:
        raise ValueError(f"{path}: no weights found (not a Keras .weights.h5 file?).")
    return arrays


def _variable_index(model):
    """Maps id(variable) -> (layer path, index), in the order Keras' save_own_variables uses."""
    index = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        for i, variable in enumerate(layer._trainable_variables + layer._non_trainable_variables):
            index[id(variable)] = (variable.path.rsplit("/", 1)[0], i)
    return index


def read_as_state_dict(path, model):
    """Returns the weights in `path` as official keys (numpy arrays), matched to `model` by layer name.

    Layers of the file that `model` lacks come back under "h5:<layer>/<i>" keys (or the official head keys for
    the classifier) so the loader can report them as unexpected.
    """
    arrays = read_arrays(path)
    index = _variable_index(model)
    state, used = {}, set()
    for key, variable, transform in checkpoint_mapping.official_mapping(model):
        group, i = index[id(variable)]
        if group in arrays and i < len(arrays[group]):
            state[key] = _inverse_transform(transform, arrays[group][i])
            used.add(group)
    for group, values in arrays.items():
        if group in used:
            continue
        if group == "head" and len(values) == 2:
            state["head.weight"], state["head.bias"] = np.transpose(values[0]), values[1]
        else:
            for i, value in enumerate(values):
                state[f"h5:{group}/{i}"] = value
    return state
