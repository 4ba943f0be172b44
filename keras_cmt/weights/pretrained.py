"""The official ImageNet-1k weights: downloaded once, converted to a Keras `.weights.h5`, cached, loaded.

`CMTSmall(weights="imagenet")` (and the other variants) come here. The release (GitHub ggjy/CMT.pytorch,
`release-v1`) holds DeiT-style PyTorch training checkpoints; reading one takes a while and needs the whole file,
so it is fetched with `keras.utils.get_file`, checked, converted once and cached as
`<cache>/<variant>_imagenet.weights.h5` with a JSON record beside it (`.json`: URL, sha256 of the fetched file,
which weights were taken). The downloaded `.pth` is deleted after conversion. Later calls read only the cache and
need no network; the cache is at any resolution the model has (relative-position biases are resized on load).

Which weights: the official evaluation (`train.py --eval --resume`) loads `model_ema` when the run kept an EMA
(the XS, S and B recipes) and `model` otherwise (Ti trains with `--no-model-ema`); so does `prefer="auto"`.
`prefer="model"` takes the raw weights even where an EMA exists, `prefer="ema"` insists on the EMA. Each choice has
its own cache file.

Settings (environment variables, read at call time):
- `KERAS_CMT_WEIGHTS_URL`: base URL of the release files (default: the official release); the file name is
  appended. Point it at a mirror, or at a local server in tests.
- `KERAS_CMT_WEIGHTS_PREFER`: "auto" (default), "ema" or "model", for the builders' `weights="imagenet"`.
- `KERAS_CMT_WEIGHTS_SHA256_<VARIANT>` (e.g. `KERAS_CMT_WEIGHTS_SHA256_CMT_S`): pin the sha256 of the `.pth`; a
  fetched file with another hash is refused, a cache recorded from another hash is rebuilt.
- `KERAS_HOME`: the Keras cache folder (default `~/.keras`); the files live in `<KERAS_HOME>/models/keras_cmt/`.

Offline: put the release file, fetched by hand, at `<cache>/<release file name>` (the error after a failed
download prints both the URL and this path); it is converted on the next call and left where it is.
"""

import datetime
import hashlib
import json
import os
import tempfile
import time
import uuid

import keras

from keras_cmt import atomic_files, checkpoint_mapping, variants
from keras_cmt.weights import loading
from keras_cmt.weights.torch_checkpoint import CheckpointError, read_torch_checkpoint, select_state_dict

DEFAULT_BASE_URL = "https://github.com/ggjy/CMT.pytorch/releases/download/release-v1"
BASE_URL_ENV = "KERAS_CMT_WEIGHTS_URL"
PREFER_ENV = "KERAS_CMT_WEIGHTS_PREFER"
SHA256_ENV_PREFIX = "KERAS_CMT_WEIGHTS_SHA256_"
CACHE_SUBDIR = os.path.join("models", "keras_cmt")

# A cmt_xs.pth fetched before mid-2022 was a copy of cmt_small.pth.
_KNOWN_MIXUPS = {
    ("cmt_xs", "cmt_s"): " (cmt_xs.pth files fetched before mid-2022 were a copy of cmt_small.pth: fetch it again)",
}


class PretrainedWeightsError(ValueError):
    """The ImageNet weights could not be fetched, read or matched to the variant."""


def weights_url(variant, base_url=None):
    """The URL of a variant's release checkpoint (`KERAS_CMT_WEIGHTS_URL` or the official release + file name)."""
    variant = variants.get_variant(variant)
    base = base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    return f"{base.rstrip('/')}/{variant.weights_file}"


def keras_home():
    """`KERAS_HOME` or `~/.keras`, or `.keras` under the temp folder when that is not writable (as Keras)."""
    base = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        os.makedirs(base, exist_ok=True)
    except OSError:
        pass
    if not os.access(base, os.W_OK):
        base = os.path.join(tempfile.gettempdir(), ".keras")
    return base


def default_cache_dir():
    """`<keras_home()>/models/keras_cmt`."""
    return os.path.join(keras_home(), CACHE_SUBDIR)


def _resolve_prefer(prefer):
    prefer = prefer or os.environ.get(PREFER_ENV) or "auto"
    if prefer not in ("auto", "ema", "model"):
        raise PretrainedWeightsError(f"prefer (or ${PREFER_ENV}) must be 'auto', 'ema' or 'model'; got {prefer!r}.")
    return prefer


def _resolve_sha256(variant, sha256):
    pinned = sha256 or os.environ.get(SHA256_ENV_PREFIX + variant.name.upper())
    if pinned is None:
        return None
    pinned = pinned.strip().lower()
    if len(pinned) != 64 or any(c not in "0123456789abcdef" for c in pinned):
        raise PretrainedWeightsError(f"the pinned sha256 for {variant.name} is not 64 hex digits: {pinned!r}.")
    return pinned


def cache_paths(variant, prefer="auto", cache_dir=None):
    """Returns (weights_h5, record_json, hand_placed_pth) for a variant: where the converted weights, their record
    and a checkpoint fetched by hand live."""
    variant = variants.get_variant(variant)
    folder = cache_dir or default_cache_dir()
    suffix = "" if prefer == "auto" else f"_{prefer}"
    weights = os.path.join(folder, f"{variant.name}_imagenet{suffix}.weights.h5")
    return weights, weights + ".json", os.path.join(folder, variant.weights_file)


def sha256_of(path, chunk=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_record(record_path):
    try:
        with open(record_path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _cache_is_valid(weights_path, record_path, pinned):
    """A cache is used only when its record exists, the weights file has the recorded hash (not truncated or
    replaced) and, when a hash is pinned, it was converted from a file with that hash."""
    if not os.path.isfile(weights_path):
        return False
    record = _read_record(record_path)
    if not record or record.get("weights_sha256") != sha256_of(weights_path):
        return False
    return pinned is None or record.get("source_sha256") == pinned


_DOWNLOAD_SUFFIX = ".download.pth"


def _remove_stale_downloads(folder, max_age_s=24 * 3600):
    """Deletes downloads left by killed processes (a live download is younger than a day)."""
    now = time.time()
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if name.startswith(".") and name.endswith(_DOWNLOAD_SUFFIX):
            try:
                if now - os.path.getmtime(path) > max_age_s:
                    os.remove(path)
            except OSError:
                pass


def _download(url, folder, hand_placed):
    """Fetches `url` into a temporary file of `folder` with keras.utils.get_file (progress bar); returns its path."""
    _remove_stale_downloads(folder)
    tmp_name = f".{uuid.uuid4().hex}{_DOWNLOAD_SUFFIX}"
    try:
        return keras.utils.get_file(fname=tmp_name, origin=url, cache_dir=folder, cache_subdir="")
    except BaseException as e:  # noqa: B036 - get_file removes its partial file; we add where to go by hand
        partial = os.path.join(folder, tmp_name)
        if os.path.exists(partial):
            os.remove(partial)
        if isinstance(e, KeyboardInterrupt):
            raise
        reason = " ".join(str(e).split()) or type(e).__name__
        raise PretrainedWeightsError(
            f"could not download {url} ({reason}); fetch it by hand and save it as {hand_placed}, "
            "then run again (it is converted once and cached)."
        ) from None


def _check_variant(state_dict, variant, source):
    found = checkpoint_mapping.describe_state_dict(state_dict)
    expected = {
        "embed_dims": list(variant.embed_dims),
        "depths": list(variant.depths),
        "stem_channels": variant.stem_channels,
    }
    if all(found[k] == v for k, v in expected.items()):
        return
    actual = next(
        (
            v.name
            for v in variants.VARIANTS.values()
            if [list(v.embed_dims), list(v.depths), v.stem_channels]
            == [found["embed_dims"], found["depths"], found["stem_channels"]]
        ),
        None,
    )
    what = actual or "an unknown CMT"
    hint = _KNOWN_MIXUPS.get((variant.name, actual), "")
    raise PretrainedWeightsError(
        f"{source} holds {what} weights (embed_dims {found['embed_dims']}, depths {found['depths']}, "
        f"stem {found['stem_channels']}), not {variant.name} (embed_dims {expected['embed_dims']}, "
        f"depths {expected['depths']}, stem {expected['stem_channels']}){hint}; nothing was cached."
    )


def _reference_model(variant, state_dict, builder):
    """A model of `variant` shaped exactly like the checkpoint (its input size, head width and classes), built by
    `builder` (`keras_cmt.CMT`), to write the cache from."""
    queries = state_dict["relative_pos_a"].shape[1]
    side = int(round(queries**0.5))
    if side * side != queries:
        raise PretrainedWeightsError(f"relative_pos_a of {queries} query positions is not a square grid.")
    found = checkpoint_mapping.describe_state_dict(state_dict)
    size = 4 * side
    return builder(
        **variant.builder_kwargs(),
        head_channels=int(state_dict["_fc.weight"].shape[0]),
        include_top=found["classes"] is not None,
        classes=found["classes"] or 1000,
        input_shape=(size, size, 3) if keras.config.image_data_format() == "channels_last" else (3, size, size),
        name=variant.name,
    )


def _matches_exactly(model, state_dict):
    """True when `model` has exactly the checkpoint's tensors and shapes (same size, head and classes), so it can
    write the cache itself instead of a freshly built reference model."""
    # A compiled model would also save its optimizer, a wrapper its extra layers: neither is a clean cache.
    if model is None or getattr(model, "optimizer", None) is not None:
        return False
    try:
        entries = checkpoint_mapping.official_mapping(model)
    except ValueError:
        return False
    if len(entries) != len(model.weights):
        return False
    keys = {k for k in state_dict if not k.endswith("num_batches_tracked")}
    if keys != {key for key, _, _ in entries}:
        return False
    return all(transform(state_dict[key]).shape == tuple(variable.shape) for key, variable, transform in entries)


def _convert(checkpoint_path, source, variant, prefer, weights_path, record_path, record, builder, model=None):
    """Reads, checks and converts a release checkpoint into the cache (weights file, then its record).

    Returns True when it filled `model` on the way (a model shaped exactly like the checkpoint)."""
    try:
        checkpoint = read_torch_checkpoint(checkpoint_path)
        state = select_state_dict(checkpoint, prefer=prefer, source=source)
    except CheckpointError as e:
        message = str(e).replace(checkpoint_path, source)
        raise PretrainedWeightsError(f"{message} Nothing was cached.") from None
    _check_variant(state, variant, source)
    has_ema = isinstance(checkpoint, dict) and isinstance(checkpoint.get("model_ema"), dict)
    taken = "model_ema" if prefer != "model" and has_ema else ("model" if "model" in checkpoint else "state_dict")
    filled = _matches_exactly(model, state)
    reference = model if filled else _reference_model(variant, state, builder)
    loading.assign_state_dict(reference, state, source=source)
    atomic_files.write_atomically(weights_path, reference.save_weights)
    record = dict(
        record,
        weights=taken,
        epoch=_plain(checkpoint.get("epoch")),
        weights_sha256=sha256_of(weights_path),
        converted_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    atomic_files.write_json(record_path, record)
    return filled


def _plain(value):
    return value if isinstance(value, (int, float, str, type(None))) else None


def imagenet_weights_path(variant, builder, prefer=None, sha256=None, cache_dir=None, base_url=None):
    """Returns the cached `.weights.h5` of a variant's official ImageNet weights, fetching and converting the
    release checkpoint first when there is no valid cache.

    Args:
        variant: a name ("cmt_s", "CMTSmall", ...) or a `keras_cmt.variants.Variant`.
        builder: `keras_cmt.CMT`, which builds the model the cache is written from (passed in because the builder
            itself loads weights through this module).
        prefer: "auto" (model_ema when the checkpoint has one, as the official evaluation), "ema" or "model";
            default `$KERAS_CMT_WEIGHTS_PREFER` or "auto".
        sha256: pin the sha256 of the release file (default `$KERAS_CMT_WEIGHTS_SHA256_<VARIANT>`).
        cache_dir: the cache folder (default `<KERAS_HOME>/models/keras_cmt`).
        base_url: the release base URL (default `$KERAS_CMT_WEIGHTS_URL` or the official release).
    """
    return _ensure_cache(variant, builder, prefer, sha256, cache_dir, base_url)[0]


def _ensure_cache(variant, builder, prefer, sha256, cache_dir, base_url, model=None):
    """Returns (weights path, whether `model` was filled while converting)."""
    variant = variants.get_variant(variant)
    prefer = _resolve_prefer(prefer)
    pinned = _resolve_sha256(variant, sha256)
    weights_path, record_path, hand_placed = cache_paths(variant, prefer, cache_dir)
    if _cache_is_valid(weights_path, record_path, pinned):
        return weights_path, False
    folder = os.path.dirname(weights_path)
    os.makedirs(folder, exist_ok=True)
    url = weights_url(variant, base_url)

    if os.path.isfile(hand_placed):
        checkpoint_path, source, downloaded = hand_placed, hand_placed, False
    else:
        checkpoint_path, source, downloaded = _download(url, folder, hand_placed), url, True
    try:
        fetched_sha256 = sha256_of(checkpoint_path)
        if pinned is not None and fetched_sha256 != pinned:
            raise PretrainedWeightsError(
                f"{source} has sha256 {fetched_sha256}, not the pinned {pinned}; nothing was cached"
                + (" (replace or delete that file)." if not downloaded else ".")
            )
        record = {
            "variant": variant.name,
            "url": url,
            "source": source,
            "source_sha256": fetched_sha256,
            "prefer": prefer,
        }
        filled = _convert(checkpoint_path, source, variant, prefer, weights_path, record_path, record, builder, model)
    finally:
        if downloaded and os.path.exists(checkpoint_path):
            os.remove(checkpoint_path)
    return weights_path, filled


def load_imagenet_weights(model, variant, builder, prefer=None, sha256=None, cache_dir=None, base_url=None):
    """Loads a variant's official ImageNet weights into `model` (any input size; without the classifier when the
    model has none). The arguments are those of `imagenet_weights_path`."""
    path, filled = _ensure_cache(variant, builder, prefer, sha256, cache_dir, base_url, model=model)
    return model if filled else loading.load_weights(model, path)
