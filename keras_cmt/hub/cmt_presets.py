"""keras_cmt's named keras-hub presets, and the checks every CMT `from_preset` runs on a local directory first.

A named preset ("cmt_small_imagenet") is built on first use from the official release, through the same download,
conversion and cache as `keras_cmt.CMTSmall(weights="imagenet")`, into `<keras_cmt cache>/presets/<name>`; nothing
is published anywhere else, so a user never handles a file. keras-hub's own registry maps names to existing
handles only, so the names are served by the CMT classes' `from_preset` (`CMTImageClassifier.from_preset(
"cmt_small_imagenet")`); once built, the directory is an ordinary preset any keras-hub entry point loads.
"""

import contextlib
import contextvars
import json
import os
import shutil

from keras_cmt import variants
from keras_cmt.weights import pretrained

PRESETS = {
    v.preset_name: {
        "metadata": {
            "description": (
                f"{v.builder_name} ({v.name}) image classifier, the official ImageNet-1k weights (top-1 {v.top1}%), "
                f"converted; {v.default_size}x{v.default_size} input."
            ),
            "params": v.params,
            "path": "cmt",
        },
        "variant": v.name,
    }
    for v in variants.RELEASED.values()
}

BACKBONE_CLASS = "keras_cmt>CMTBackbone"
# How a named preset is built: `keras_cmt.hub.export.export_preset`, set by `keras_cmt/hub/__init__.py` (which runs
# before any of its modules). The classes whose `from_preset` resolves names are what the exporter builds, so this
# module takes the exporter instead of importing it.
_exporter = None


def set_exporter(export_preset):
    global _exporter
    _exporter = export_preset


WEIGHTS = (("model.weights.h5", "model.weights.json"), "the backbone's weights")
PREPROCESSOR_FILES = ((("preprocessor.json", "image_converter.json"), "the preprocessor"),)


def backbone_files(load_weights=True):
    return ((("config.json",), "the backbone's configuration"),) + ((WEIGHTS,) if load_weights else ())


def classifier_files(load_weights=True, new_head=False):
    """What a classifier needs: with its own head, task.json (and task.weights.h5 to load weights); for a new head
    (`num_classes=`), the backbone and a preprocessor."""
    files = backbone_files(load_weights)
    if new_head:
        return files + PREPROCESSOR_FILES
    files += ((("task.json",), "the classifier; pass num_classes= to put a new head on the backbone"),)
    if load_weights:
        files += ((("task.weights.h5",), "the classifier head's weights"),)
    return files


TASK_CLASS = "keras_cmt>CMTImageClassifier"
# Set while CMTImageClassifier.from_preset(..., num_classes=N) runs: a new head, so no task.weights.h5 is expected.
_new_head = contextvars.ContextVar("keras_cmt_new_head", default=False)


@contextlib.contextmanager
def new_head(active):
    token = _new_head.set(bool(active))
    try:
        yield
    finally:
        _new_head.reset(token)


def _registered_name(path):
    """The registered name a preset's JSON file names, or None if it names none (raises ValueError, one line, for a
    file that is not JSON)."""
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path}: cannot read it as JSON ({' '.join(str(e).split())[:120]}).") from None
    if not isinstance(config, dict):
        return None
    return config.get("registered_name") or config.get("class_name")


def task_json_error(preset):
    """Why the CMT preset directory `preset` gives no CMTImageClassifier configuration (one line naming the file),
    or None if its task.json is one."""
    path = os.path.join(preset, "task.json")
    if not os.path.isfile(path):
        return f"{preset}: no task.json (the classifier); pass num_classes= to put a new head on the backbone."
    found = _registered_name(path)
    if found != TASK_CLASS:
        return (
            f"{path}: the configuration of {found or 'an unknown model'}, not of keras_cmt's CMTImageClassifier "
            "(a damaged or mixed preset; pass num_classes= to put a new head on the backbone)."
        )
    return None


def check_head_weights(preset, num_classes):
    """Raises one ValueError line when a CMTImageClassifier built from the preset's task.json would keep a randomly
    initialised head: task.json there, task.weights.h5 missing, and no new head asked for (num_classes= to
    CMTImageClassifier.from_preset, or a class count other than task.json's)."""
    task_json = os.path.join(preset, "task.json")
    if _new_head.get() or not os.path.isfile(task_json) or os.path.isfile(os.path.join(preset, "task.weights.h5")):
        return
    try:
        with open(task_json, encoding="utf-8") as f:
            saved = json.load(f)["config"]["num_classes"]
    except (OSError, ValueError, KeyError, TypeError):
        saved = None
    if saved is not None and saved != num_classes:
        return  # keras-hub's from_preset(..., num_classes=N): a new head by request
    raise ValueError(
        f"{preset}: incomplete CMT preset, missing task.weights.h5 (the classifier head's weights): "
        "the head would be random; for a new head, CMTImageClassifier.from_preset(..., num_classes=N)."
    )


def listing():
    """A copy of `PRESETS`, as keras-hub's `presets` class properties give theirs."""
    return {name: {"metadata": dict(entry["metadata"]), "variant": entry["variant"]} for name, entry in PRESETS.items()}


def preset_dir(name, cache_dir=None):
    return os.path.join(cache_dir or pretrained.default_cache_dir(), "presets", name)


def _missing(path, need):
    for names, what in need:
        if not any(os.path.isfile(os.path.join(path, n)) for n in names):
            return f"{' or '.join(names)} ({what})"
    return None


def named_preset(name, cache_dir=None):
    """The local directory of a named preset, built from the official weights if it is not there yet."""
    path = preset_dir(name, cache_dir)
    if os.path.isdir(path) and _missing(path, classifier_files()) is None:
        return path
    if os.path.isdir(path):  # an interrupted or damaged copy: build it again
        shutil.rmtree(path)
    variant = PRESETS[name]["variant"]
    # Always in channels-last order, whatever this session's default: the cached preset is shared by every session
    # (the weights are the same in both layouts; a channels-first user loads it with image_shape=(3, H, W)).
    import keras

    data_format = keras.config.image_data_format()
    keras.config.set_image_data_format("channels_last")
    try:
        _exporter(variant, path, weights="imagenet")
    except (ValueError, OSError):
        if os.path.isdir(path) and _missing(path, classifier_files()) is None:
            return path  # another process built it meanwhile
        raise
    finally:
        keras.config.set_image_data_format(data_format)
    return path


def check_preset_dir(path, need):
    """Raises ValueError (one line, naming the path) unless `path` is a directory holding a CMT preset with the
    files in `need` ((alternative names, what they hold) pairs)."""
    if not os.path.exists(path):
        raise ValueError(f"{path}: no such preset directory (keras_cmt's named presets: {', '.join(PRESETS)}).")
    if not os.path.isdir(path):
        raise ValueError(f"{path}: not a preset directory (a file).")
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise ValueError(f"{path}: not a keras-hub preset (no config.json).")
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{config_path}: cannot read it as JSON ({' '.join(str(e).split())[:120]}).") from None
    found = config.get("registered_name") if isinstance(config, dict) else None
    if found != BACKBONE_CLASS:
        what = found or (config.get("class_name") if isinstance(config, dict) else None) or "an unknown model"
        raise ValueError(f"{path}: a preset of {what}, not of keras_cmt's CMTBackbone.")
    missing = _missing(path, need)
    if missing:
        raise ValueError(f"{path}: incomplete CMT preset, missing {missing}.")
    if any("task.json" in names for names, _ in need):
        error = task_json_error(path)
        if error:
            raise ValueError(error)


def resolve(preset, need):
    """A named preset's directory (built on first use); a local directory after `check_preset_dir`; any other
    handle (kaggle://, hf://, gs://, keras-hub's own names) unchanged, for keras-hub to resolve."""
    preset = os.fspath(preset) if isinstance(preset, os.PathLike) else preset
    if not isinstance(preset, str):
        raise ValueError(f"preset must be a name, a directory or a keras-hub handle; got {type(preset).__name__}.")
    if preset in PRESETS:
        return named_preset(preset)
    if preset.startswith("file://"):
        preset = preset[len("file://") :]
    if "://" in preset:
        return preset
    import keras_hub

    if preset in keras_hub.models.Backbone.presets:  # every model preset keras-hub ships
        return preset
    check_preset_dir(preset, need)
    return preset
