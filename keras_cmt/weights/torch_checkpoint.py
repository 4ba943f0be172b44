"""Reads PyTorch `.pth` checkpoints without PyTorch and without executing pickled code.

A `torch.save` file (the zip format of torch >= 1.6) is a zip holding `data.pkl` and one raw file per tensor
storage. `pickle` would import and call whatever the file names; this unpickler instead resolves only the few
globals a tensor checkpoint needs (tensor/parameter rebuild functions, storage types, OrderedDict) and replaces
every other global (`argparse.Namespace` in DeiT-style training checkpoints, optimizer classes, ...) by an inert
stub that only records its arguments. Tensors become numpy arrays.

A file from the internet can do nothing but fail to load: everything it declares is checked before it is used.
- The zip: one `data.pkl` of at most `MAX_PICKLE_BYTES`, no entry twice, and storages whose declared sizes add up
  to at most `max_bytes` (4 GiB by default, far more than any CMT needs) -- all from the zip directory, before a
  byte is inflated; zip reads never go past an entry's declared size.
- The pickle runs in Python's pure-Python unpickler, whose reads are bounded by the data (the C unpickler
  allocates what a length or memo index declares before reading it), and may only BUILD inert stubs and
  OrderedDicts.
- Storages: persistent ids exactly `("storage", torch.<Type>Storage, key, location, numel)` with one of the
  storage types below; the zip entry must hold exactly numel * itemsize bytes, checked before it is read.
- Tensor records: sizes and strides are non-negative integers of int64 range, the storage offset lies within the
  storage, the highest element addressed lies inside it, and the element count neither overflows nor takes the
  tensors past `max_bytes` in all. Only then is a view made, of exactly the addressed span, and copied.
Anything else raises `CheckpointError`, one line starting with the file's path.
"""

import collections
import io
import math
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

# Everything one checkpoint may hold in memory: its storages as read, and again its tensors as copied out.
MAX_BYTES = 4 << 30
# A checkpoint's pickle holds only structure (keys, tensor records, optimizer settings): the micro fixture's is 34 KB
# for 253 tensors; the tensors themselves live in the storages.
MAX_PICKLE_BYTES = 32 << 20
_MAX_DIMS = 32
_INT64_MAX = (1 << 63) - 1
_MAX_KEY_CHARS = 256


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


class _Frozen:
    """Tokens handed to the pickle: it may pass them around but not change them (BUILD would set attributes)."""

    __slots__ = ()

    def __setattr__(self, name, value):
        raise CheckpointError(f"the pickle tries to change a {type(self).__name__.strip('_')}.")

    def __setstate__(self, state):
        raise CheckpointError(f"the pickle tries to change a {type(self).__name__.strip('_')}.")


class _StorageType(_Frozen):
    __slots__ = ("name",)

    def __init__(self, name):
        object.__setattr__(self, "name", name)


class _Storage(_Frozen):
    """A loaded storage as the pickle sees it: a token. Its bytes stay in the unpickler, keyed by the token."""

    __slots__ = ("key",)

    def __init__(self, key):
        object.__setattr__(self, "key", key)


def _numpy_dtype(dtype):
    if dtype == "bfloat16":
        try:
            import ml_dtypes
        except ImportError:
            raise CheckpointError("bfloat16 tensors need the ml_dtypes package (pip install ml_dtypes).") from None
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype)


def _describe(value):
    """A short, safe description of a value from the file (no repr of arbitrary, possibly deep, objects)."""
    if value is None or isinstance(value, (bool, int, float)):
        text = str(value)
        return text if len(text) <= 24 else f"an integer of {len(text)} digits"
    if isinstance(value, str):
        return repr(value[:40] + ("..." if len(value) > 40 else ""))
    if isinstance(value, InertObject) or (isinstance(value, type) and issubclass(value, InertObject)):
        return value.qualified_name[:80]
    if isinstance(value, _StorageType):
        return f"torch.{value.name}"
    if isinstance(value, _Storage):
        return "a storage"
    return f"a {type(value).__name__}"


def _size_text(n):
    return f"{n / (1 << 30):g} GiB" if n >= 1 << 30 else f"{n / (1 << 20):g} MiB"


def _int_field(value, what):
    if type(value) is not int or not 0 <= value <= _INT64_MAX:
        raise CheckpointError(f"{what} is {_describe(value)}, not a non-negative 64-bit integer.")
    return value


def _int_tuple(value, what):
    if type(value) not in (tuple, list):
        raise CheckpointError(f"a tensor record's {what} is {_describe(value)}, not a tuple of integers.")
    if len(value) > _MAX_DIMS:
        raise CheckpointError(f"a tensor record's {what} has {len(value)} dimensions (at most {_MAX_DIMS}).")
    return tuple(_int_field(v, f"a tensor record's {what} entry") for v in value)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *state):
    return data


_ALLOWED = {
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
}
_TORCH_DTYPE_NAMES = {"float32", "float16", "bfloat16", "float64", "int64"}


class _RestrictedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler (its reads are bounded by the data), resolving only what a checkpoint needs."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, data, archive, entries, prefix, byteorder, max_bytes):
        super().__init__(io.BytesIO(data))
        self._archive = archive
        self._entries = entries
        self._prefix = prefix
        self._byteorder = byteorder
        self._max_bytes = max_bytes
        self._storages = {}  # key -> (token, storage type name, numel)
        self._arrays = {}  # id(token) -> the storage's elements (a read-only numpy array)
        self._tensor_bytes = 0
        self.stubbed = set()

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return self._rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == "torch" and name in _TORCH_DTYPE_NAMES:
            return name
        qualified = f"{module}.{name}"
        self.stubbed.add(qualified)
        return type(name, (InertObject,), {"qualified_name": qualified})

    def load_build(self):
        # BUILD sets state on the object below it: allowed on inert stubs (argparse.Namespace, ...) and on an
        # OrderedDict's own attributes (torch's state dicts carry `_metadata`), on nothing the reader relies on.
        state, inst = self.stack[-1], self.stack[-2]
        if isinstance(inst, collections.OrderedDict):
            if not (
                isinstance(state, dict)
                and all(isinstance(k, str) and not hasattr(collections.OrderedDict, k) for k in state)
            ):
                raise CheckpointError("the pickle sets an unexpected state on an OrderedDict.")
        elif not isinstance(inst, InertObject):
            raise CheckpointError(f"the pickle sets state on {_describe(inst)}.")
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build

    def persistent_load(self, pid):
        if type(pid) is not tuple or len(pid) != 5 or pid[0] != "storage":
            shape = f"a tuple of {len(pid)}" if type(pid) is tuple else _describe(pid)
            raise CheckpointError(
                f"unsupported persistent id in checkpoint ({shape}; a checkpoint's are "
                "('storage', torch.<Type>Storage, key, location, element count))."
            )
        _, storage_type, key, location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"unsupported storage type {_describe(storage_type)} in checkpoint.")
        if type(key) is not str or not 0 < len(key) <= _MAX_KEY_CHARS:
            raise CheckpointError(f"a storage key is {_describe(key)}, not a short string.")
        if type(location) is not str:
            raise CheckpointError(f"storage {key}'s location is {_describe(location)}, not a string.")
        numel = _int_field(numel, f"storage {key}'s element count")
        if key in self._storages:
            token, type_name, known_numel = self._storages[key]
            if (type_name, known_numel) != (storage_type.name, numel):
                raise CheckpointError(
                    f"storage {key} is declared twice, as {known_numel} {type_name} and as {numel} "
                    f"{storage_type.name} elements."
                )
            return token
        dtype = _numpy_dtype(_STORAGE_DTYPES[storage_type.name]).newbyteorder(self._byteorder)
        info = self._entries.get(f"{self._prefix}data/{key}")
        if info is None:
            raise CheckpointError(f"storage {key} is missing from the archive (truncated file?)")
        expected = numel * dtype.itemsize
        if info.file_size < expected:
            raise CheckpointError(
                f"storage {key} is cut short: it declares {numel} {storage_type.name} elements, {expected} bytes, "
                f"and holds {info.file_size}; a tensor on it runs past its storage (truncated file?)"
            )
        if info.file_size > expected:
            raise CheckpointError(
                f"storage {key}'s zip entry declares {info.file_size} bytes, more than its {numel} "
                f"{storage_type.name} elements take ({expected}); refused before reading it."
            )
        raw = self._archive.read(info)  # zipfile reads at most the declared size
        if len(raw) != expected:
            raise CheckpointError(f"storage {key} holds {len(raw)} bytes, not {expected} (truncated file?)")
        token = _Storage(key)
        self._storages[key] = (token, storage_type.name, numel)
        self._arrays[id(token)] = np.frombuffer(raw, dtype=dtype)
        return token

    def _rebuild_tensor_v2(
        self, storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None
    ):
        """A tensor record: checked against its storage, then copied out of exactly the span it addresses."""
        array = self._arrays.get(id(storage)) if type(storage) is _Storage else None
        if array is None:
            raise CheckpointError(f"a tensor record's storage is {_describe(storage)}, not a storage of the file.")
        key = storage.key
        offset = _int_field(storage_offset, f"the storage offset of a tensor on storage {key}")
        size = _int_tuple(size, "size")
        stride = _int_tuple(stride, "stride")
        if len(size) != len(stride):
            raise CheckpointError(f"a tensor record on storage {key} has size {size} but stride {stride}.")
        numel = array.size
        if offset > numel:
            raise CheckpointError(
                f"a tensor record's storage offset {offset} lies outside storage {key} ({numel} elements)."
            )
        itemsize = array.dtype.itemsize
        budget = self._max_bytes - self._tensor_bytes
        count = math.prod(size)
        # Zero-sized dimensions hide the others from the element count; numpy would still overflow on them.
        if math.prod(max(s, 1) for s in size) * itemsize > budget:
            raise CheckpointError(
                f"a tensor of size {size} needs more memory than a CMT checkpoint may take "
                f"({_size_text(self._max_bytes)} in all); refused."
            )
        self._tensor_bytes += count * itemsize
        if count == 0:
            return np.empty(size, dtype=array.dtype.newbyteorder("="))
        highest = offset + sum((s - 1) * st for s, st in zip(size, stride))
        if highest >= numel:
            raise CheckpointError(
                f"a tensor of size {size}, stride {stride} at storage offset {offset} addresses element {highest} "
                f"of storage {key}, which has {numel}: it runs past its storage."
            )
        # All indices lie in [offset, highest], inside `span`; dimensions of size 1 step nowhere.
        span = array[offset : highest + 1]
        strides = tuple(0 if s == 1 else st * itemsize for s, st in zip(size, stride))
        view = np.lib.stride_tricks.as_strided(span, shape=size, strides=strides, writeable=False)
        return view.astype(array.dtype.newbyteorder("="), order="C", copy=True)


def _read_archive(archive, max_bytes):
    infos = archive.infolist()
    entries = {}
    for info in infos:
        if info.filename in entries:
            raise CheckpointError(f"the zip holds entry {info.filename[:80]!r} twice.")
        entries[info.filename] = info
    pickles = [n for n in entries if n == "data.pkl" or n.endswith("/data.pkl")]
    if not pickles:
        raise CheckpointError("zip file without data.pkl, not a PyTorch checkpoint.")
    if len(pickles) > 1:
        raise CheckpointError(f"zip file with {len(pickles)} data.pkl entries; a checkpoint has one.")
    pickle_info = entries[pickles[0]]
    prefix = pickles[0][: -len("data.pkl")]
    if pickle_info.file_size > MAX_PICKLE_BYTES:
        raise CheckpointError(
            f"its data.pkl declares {pickle_info.file_size} bytes, more than a checkpoint's pickle takes "
            f"(at most {_size_text(MAX_PICKLE_BYTES)}); refused before reading it."
        )
    declared = sum(info.file_size for name, info in entries.items() if name.startswith(prefix + "data/"))
    if declared > max_bytes:
        raise CheckpointError(
            f"its storages declare {declared} bytes in all, more than a CMT checkpoint takes "
            f"(at most {_size_text(max_bytes)}); refused before reading them."
        )
    byteorder = "<"
    order_info = entries.get(prefix + "byteorder")
    if order_info is not None:
        text = archive.read(order_info) if order_info.file_size <= 16 else b""
        if text not in (b"little", b"big"):
            what = repr(text) if text else f"{order_info.file_size} bytes long"
            raise CheckpointError(f"its byteorder entry is {what}, neither 'little' nor 'big'.")
        byteorder = "<" if text == b"little" else ">"
    data = archive.read(pickle_info)
    return _RestrictedUnpickler(data, archive, entries, prefix, byteorder, max_bytes).load()


def _one_line(text, limit=300):
    try:
        text = " ".join(str(text).split())
    except Exception:  # noqa: BLE001 - an exception about a hostile object may not even print
        text = f"<unprintable {type(text).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_torch_checkpoint(path, max_bytes=None):
    """Returns the object saved in a torch zip checkpoint, tensors as numpy arrays.

    Raises CheckpointError (a ValueError) naming the file for anything that is not a complete, well-formed torch
    zip checkpoint, including one whose storages or tensors would take more than `max_bytes` (default
    `MAX_BYTES`, 4 GiB).
    """
    path = os.fspath(path)
    max_bytes = MAX_BYTES if max_bytes is None else int(max_bytes)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file.")
    try:
        is_zip = zipfile.is_zipfile(path)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the file ({_one_line(e)}).") from None
    if not is_zip:
        with open(path, "rb") as f:
            head = f.read(64)
        hint = " (it looks like an HTML page: a failed download?)" if b"<" in head[:16] else ""
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint (expected the zip format written by torch.save){hint}."
        )
    try:
        with zipfile.ZipFile(path) as archive:
            return _read_archive(archive, max_bytes)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {_one_line(e)}") from None
    except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError, OSError) as e:
        raise CheckpointError(
            f"{path}: unreadable PyTorch checkpoint ({type(e).__name__}: {_one_line(e, 200)}); "
            "the file may be truncated."
        ) from None
    except Exception as e:  # noqa: BLE001 - whatever a malformed pickle or zip raises, the file fails to load
        raise CheckpointError(
            f"{path}: malformed PyTorch checkpoint ({type(e).__name__}: {_one_line(e, 200)})."
        ) from None


def select_state_dict(checkpoint, prefer="auto", source="checkpoint"):
    """Picks the model weights out of a loaded checkpoint.

    DeiT-style training checkpoints hold `model` and, when EMA was on, `model_ema`; the official evaluation loads
    the EMA weights when present. `prefer` is "auto" (model_ema when present and not None, else model), "ema" or
    "model". A bare state dict is returned as is (its tensors under string keys).
    """
    if prefer not in ("auto", "ema", "model"):
        raise ValueError(f"prefer must be 'auto', 'ema' or 'model'; got {prefer!r}.")
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{source}: holds {_describe(checkpoint)}, not a state dict.")
    has_ema = isinstance(dict.get(checkpoint, "model_ema"), dict)
    if "model" in checkpoint or "model_ema" in checkpoint:
        if prefer == "ema" and not has_ema:
            raise CheckpointError(f"{source}: has no model_ema weights.")
        if prefer in ("auto", "ema") and has_ema:
            state = checkpoint["model_ema"]
        else:
            state = dict.get(checkpoint, "model")
        if not isinstance(state, dict):
            raise CheckpointError(f"{source}: its 'model' entry is not a state dict.")
    else:
        state = checkpoint
    arrays = {k: v for k, v in dict.items(state) if isinstance(k, str) and isinstance(v, np.ndarray)}
    if not arrays:
        raise CheckpointError(f"{source}: no tensors found in the state dict.")
    return arrays
