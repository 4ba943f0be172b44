"""What a `--model_dir` may hold, and whether a training command starts, resumes or refuses there.

A run folder holds only the training command's outputs and `run.json`, the record of what is trained in it (variant,
architecture overrides, dataset, input size). A second command in the same folder resumes an interrupted run of the
same thing from its last backed-up epoch, starts it again when no epoch was completed, and refuses a folder that
holds another run or files that are not a run's, so that nothing of the user's is overwritten; `--overwrite`
replaces a run (of anything), never unrelated files.
"""

import json

from keras_cmt.training import storage

RUN_RECORD = "run.json"
# Everything keras_cmt.training.train writes at the top of model_dir.
OUTPUTS = frozenset({"backup", "checkpoints", "logs", "metrics.csv", "curves.png", "results.json", "model.keras",
                     "model.weights.h5", RUN_RECORD})


class RunFolderError(ValueError):
    """A model_dir the command must not use; one line naming the folder and the cause."""


def identity(model, model_overrides, dataset, image_size):
    """What makes two commands the same run (the schedule may change between a run and its resumption)."""
    overrides = json.loads(model_overrides) if model_overrides else None
    return {"model": model, "model_overrides": overrides, "dataset": dataset, "image_size": int(image_size)}


def describe(ident):
    extra = f" with {json.dumps(ident['model_overrides'], sort_keys=True)}" if ident.get("model_overrides") else ""
    return f"{ident.get('model')}{extra} on {ident.get('dataset')} at {ident.get('image_size')}px"


def read_record(model_dir):
    path = storage.join(model_dir, RUN_RECORD)
    if not storage.exists(path):
        return None
    try:
        record = storage.read_json(path)
        return record if isinstance(record, dict) and isinstance(record.get("identity"), dict) else {}
    except (OSError, ValueError):
        return {}  # unreadable: a record that matches nothing


def last_backed_up_epoch(model_dir):
    """The highest epoch any backup under model_dir/backup completed (0 when there is none)."""
    epochs = [0]
    backup = storage.join(model_dir, "backup")
    if not storage.isdir(backup):
        return 0
    for folder, _, files in storage.walk(backup):
        if "training_metadata.json" in files:
            try:
                epochs.append(int(storage.read_json(storage.join(folder, "training_metadata.json"))["epoch"]))
            except (OSError, ValueError, KeyError, TypeError):
                pass
    return max(epochs)


def plan(model_dir, ident, overwrite):
    """("new" | "resume" | "restart", the line to print). Raises RunFolderError for a folder it must not use."""
    if storage.exists(model_dir) and not storage.isdir(model_dir):
        raise RunFolderError(f"--model_dir={model_dir} is a file, not a folder")
    entries = storage.listdir(model_dir) if storage.isdir(model_dir) else []
    entries = [e for e in entries if not e.startswith(".tmp-")]  # leftovers of an interrupted atomic write
    if not entries:
        return "new", f"starting a new run in {model_dir}"
    foreign = [e for e in entries if e not in OUTPUTS]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise RunFolderError(f"--model_dir={model_dir} holds files that are not a keras_cmt run ({shown}); "
                             "give a new or empty folder")
    record = read_record(model_dir)
    if record is not None and record.get("identity") != ident:
        other = describe(record["identity"]) if record.get("identity") else f"something unreadable ({RUN_RECORD})"
        if not overwrite:
            raise RunFolderError(f"--model_dir={model_dir} holds a run of {other}, not of {describe(ident)}; use "
                                 "another --model_dir or --overwrite to replace it")
        return "restart", f"replacing the run of {other} in {model_dir} (--overwrite)"
    if storage.exists(storage.join(model_dir, "results.json")):
        if not overwrite:
            raise RunFolderError(f"--model_dir={model_dir} holds a finished run ({model_dir}/results.json); use "
                                 "another --model_dir or --overwrite")
        return "restart", f"starting the run in {model_dir} again (--overwrite)"
    if overwrite:
        return "restart", f"starting the run in {model_dir} again (--overwrite)"
    epoch = last_backed_up_epoch(model_dir)
    if epoch > 0:
        return "resume", f"resuming the interrupted run in {model_dir} after epoch {epoch}"
    return "new", f"starting the run in {model_dir} again: the interrupted one completed no epoch"


def clear(model_dir):
    """Removes a previous run's outputs (only the names in OUTPUTS)."""
    for name in OUTPUTS:
        storage.remove(storage.join(model_dir, name))


def write_record(model_dir, ident, argv):
    storage.write_json(storage.join(model_dir, RUN_RECORD), {"identity": ident, "command": list(argv)})
