"""Reads PyTorch `.pth` checkpoints without PyTorch and without executing pickled code.

A `torch.save` file (the zip format of torch >= 1.6) is a zip holding `data.pkl` and one raw file per tensor
storage. `pickle` would import and call whatever the file names; this unpickler instead resolves only the few
globals a tensor checkpoint needs (tensor/parameter rebuild functions, storage types, OrderedDict) and replaces
every other global (`argparse.Namespace` in DeiT-style training checkpoints, optimizer classes, ...) by an inert
stub that only records its arguments. Tensors become numpy arrays.
"""

import collections
import io
import os
import pickle
import zipfile

import numpy as np

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class CheckpointError(ValueError):
    """A file that is not a readable PyTorch checkpoint."""


class InertObject:
    """Stands in for any global the checkpoint names that is not needed to rebuild tensors.

    Construction and state restoration only record their arguments; nothing is imported or executed.
    """

    qualified_name = "?"

    def __init__(self, *args, **kwargs):
        self.args = args
        self.kwargs = kwargs

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<inert {self.qualified_name}>"


class _StorageType:
    def __init__(self, name):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


def _numpy_dtype(dtype):
    if dtype == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    size, stride = tuple(size), tuple(stride)
    if not size:
        return np.array(storage[storage_offset])
    itemsize = storage.dtype.itemsize
    needed = storage_offset + sum((s - 1) * st for s, st in zip(size, stride)) + 1
    if needed > storage.size:
        raise CheckpointError(f"tensor of size {size} runs past its storage ({storage.size} elements).")
    view = np.lib.stride_tricks.as_strided(
        storage[storage_offset:], shape=size, strides=tuple(st * itemsize for st in stride), writeable=False
    )
    return np.ascontiguousarray(view)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *state):
    return data


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data, archive, prefix):
        super().__init__(io.BytesIO(data))
        self._archive = archive
        self._prefix = prefix
        self._storages = {}
        self.stubbed = set()

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == "torch" and name in {"float32", "float16", "bfloat16", "float64", "int64"}:
            return name
        qualified = f"{module}.{name}"
        self.stubbed.add(qualified)
        return type(name, (InertObject,), {"qualified_name": qualified})

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise CheckpointError(f"unsupported persistent id in checkpoint: {pid!r:.80}")
        storage_type, key = pid[1], str(pid[2])
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"unsupported storage type {storage_type!r:.80} in checkpoint.")
        if key not in self._storages:
            try:
                raw = self._archive.read(f"{self._prefix}data/{key}")
            except KeyError:
                raise CheckpointError(f"storage {key} is missing from the archive (truncated file?)") from None
            self._storages[key] = np.frombuffer(raw, dtype=_numpy_dtype(storage_type.dtype))
        return self._storages[key]


def read_torch_checkpoint(path):
    """Returns the object saved in a torch zip checkpoint, tensors as numpy arrays.

    Raises CheckpointError (a ValueError) naming the file for anything that is not a complete torch zip checkpoint.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file.")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(64)
        hint = " (it looks like an HTML page: a failed download?)" if b"<" in head[:16] else ""
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint (expected the zip format written by torch.save){hint}."
        )
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
            if not pickles:
                raise CheckpointError(f"{path}: zip file without data.pkl, not a PyTorch checkpoint.")
            prefix = pickles[0][: -len("data.pkl")]
            unpickler = _RestrictedUnpickler(archive.read(pickles[0]), archive, prefix)
            return unpickler.load()
    except CheckpointError as e:
        if str(e).startswith(path):
            raise
        raise CheckpointError(f"{path}: {e}") from None
    except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError, OSError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: unreadable PyTorch checkpoint ({type(e).__name__}: {e}); "
                              "the file may be truncated.") from None


def select_state_dict(checkpoint, prefer="auto", source="checkpoint"):
    """Picks the model weights out of a loaded checkpoint.

    DeiT-style training checkpoints hold `model` and, when EMA was on, `model_ema`; the official evaluation loads
    the EMA weights when present. `prefer` is "auto" (model_ema when present and not None, else model), "ema" or
    "model". A bare state dict is returned as is.
    """
    if prefer not in ("auto", "ema", "model"):
        raise ValueError(f"prefer must be 'auto', 'ema' or 'model'; got {prefer!r}.")
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{source}: holds a {type(checkpoint).__name__}, not a state dict.")
    has_ema = isinstance(checkpoint.get("model_ema"), dict)
    if "model" in checkpoint or "model_ema" in checkpoint:
        if prefer == "ema" and not has_ema:
            raise CheckpointError(f"{source}: has no model_ema weights.")
        if prefer in ("auto", "ema") and has_ema:
            state = checkpoint["model_ema"]
        else:
            state = checkpoint.get("model")
        if not isinstance(state, dict):
            raise CheckpointError(f"{source}: its 'model' entry is not a state dict.")
    else:
        state = checkpoint
    arrays = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    if not arrays:
        raise CheckpointError(f"{source}: no tensors found in the state dict.")
    return arrays
