"""Fault-tolerance and output callbacks: what Keras' own do, written so that a kill at any moment loses nothing.

Keras' `BackupAndRestore` and `ModelCheckpoint` write their `.weights.h5` in place, so a SIGKILL during the write
leaves a truncated file, and `BackupAndRestore` writes weights and epoch number as two files (a kill between them
resumes from mismatched state). `AtomicBackup` and `BestWeights` do their jobs on the public callback hooks,
writing to a temporary file and renaming it; the backup names its weights file inside its metadata so that the
pair changes in one rename. Keras' `CSVLogger` appends to
an open file, which object stores cannot do (and its `GFile` has no `closed`): `MetricsCSV` rewrites the small
file whole after each epoch. All paths go through `storage`, so a run folder may be a `gs://` URL.
"""

import concurrent.futures
import contextlib
import csv
import io
import os
import time

import keras
from absl import logging

from keras_cmt.training import storage


def without_optimizer(model):
    """The model's layers and variables as an uncompiled functional model: Keras' `save_weights` and `save` write a
    compiled model's optimizer state too (for AdamW, twice the weights), which exports and best checkpoints do not
    need."""
    if getattr(model, "optimizer", None) is None:
        return model
    return keras.Model(model.inputs, model.outputs, name=model.name)


def atomic_save(model, path, weights_only=None, include_optimizer=True):
    """model.save / model.save_weights to a temporary file in the same folder, then rename over `path`."""
    if weights_only is None:
        weights_only = path.endswith(".weights.h5")
    if weights_only:
        weights_file_job(model, path, include_optimizer)()
        return
    _keras_save(without_optimizer(model) if not include_optimizer else model, path, weights_only=False)


def weights_file_job(model, path, include_optimizer=True):
    """`atomic_save(model, path)` for a `.weights.h5`, split in two: the file's bytes are built now, and the
    returned function writes them (atomically) whenever it is called, from any thread."""
    if not include_optimizer:
        model = without_optimizer(model)
    data = weights_h5_bytes(model)
    if data is None:  # this Keras lacks the internals: Keras writes the file now
        _keras_save(model, path, weights_only=True)
        return lambda: None
    return lambda: storage.write_bytes(path, data)


def _keras_save(model, path, weights_only):
    """Keras' own `save_weights` / `save` to a temporary file, renamed over `path`."""
    _prime_keras_skipset_cache()
    save = model.save_weights if weights_only else model.save
    storage.write_atomically(path, lambda tmp: save(tmp, overwrite=True))


class BackgroundWriter:
    """Runs file writes on one thread of their own, one after the other, so that the next epoch's steps run while
    the disk syncs (each write is atomic: a kill leaves the files before or after it, never half). `submit` waits
    for the write before, so the files appear in the order they were submitted. `wait()` returns once everything
    submitted is written, raising the first failure (a full disk, say) in the training thread; `check()`, called
    after each step, raises it as soon as it happened."""

    def __init__(self):
        self._executor = None
        self._pending = None

    def submit(self, job):
        self.wait()
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="keras_cmt-writer")
        self._pending = self._executor.submit(job)

    def wait(self):
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def check(self):
        if self._pending is not None and self._pending.done():
            self.wait()

    def close(self):
        """`wait()`, then the thread ends."""
        try:
            self.wait()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None


# The epoch ends' writes of every callback, in one order: the best checkpoint of an epoch is on disk before the backup
# that a restart resumes after (the order of the callbacks, as when they wrote synchronously).
EPOCH_END_WRITES = BackgroundWriter()


@contextlib.contextmanager
def epoch_end_writes_finished():
    """Around `fit`: when it raises (Ctrl-C, a lost lease, bad data), the epoch ends' writes still in progress are
    finished before the exception goes on (and before the run folder's lock is released); a failed write is then
    logged, not raised over the first error. (`fit` calls no `on_train_end` when it raises.)"""
    try:
        yield
    except BaseException:
        try:
            EPOCH_END_WRITES.close()
        except Exception as e:  # noqa: BLE001 - the exception already on its way says what went wrong first
            logging.warning("A checkpoint write also failed: %s", storage.first_line(e))
        raise


def weights_h5_bytes(model):
    """What `model.save_weights` writes, built in memory (None where this Keras lacks the internals used).

    HDF5 must never meet a failed write: on a full disk its flushes of a half-written file fail again as each
    object is freed and closing the file then crashes the interpreter (a segmentation fault). In memory the file
    is completed first; the bytes are then written by Python, whose OSError is clean. (`.keras` archives already
    hold their H5 in memory inside Keras.)"""
    import io

    from keras.src.saving import saving_lib

    store_class, save_state = getattr(saving_lib, "H5IOStore", None), getattr(saving_lib, "_save_state", None)
    if store_class is None or save_state is None:
        return None
    _prime_keras_skipset_cache()
    buffer = io.BytesIO()
    store = store_class(buffer, mode="w")
    try:
        save_state(model, weights_store=store, assets_store=None, inner_path="", visited_saveables=set())
    finally:
        store.close()
    return buffer.getbuffer()


# The object types whose attribute skip sets Keras' saver builds (saving_lib.get_attr_skipset).
_SKIPSET_TYPES = ("Operation", "Layer", "Functional", "Sequential", "Metric", "Optimizer", "Loss")


def _prime_keras_skipset_cache():
    """Keras 3.15's `get_attr_skipset` stores its result under `saving_attr_skipset_<type>` but looks it up under
    `saving_attr_skiplist_<type>`, so every save builds a throwaway Layer (and its dir()) per layer saved: 0.2 of
    CMT-Ti's 0.7 s per backup, ten backups and best checkpoints a run. The value is stored under the name it is
    looked up by (thread-local, as Keras' global state is); where Keras finds it already, nothing changes."""
    from keras.src.backend.common import global_state
    from keras.src.saving import saving_lib

    for obj_type in _SKIPSET_TYPES:
        key = f"saving_attr_skiplist_{obj_type}"
        if global_state.get_global_attribute(key) is None:
            global_state.set_global_attribute(key, saving_lib.get_attr_skipset(obj_type))


class BestWeights(keras.callbacks.Callback):
    """The weights of the epoch with the best `monitor` so far, written whole or not at all, without the optimizer
    state (resuming is the backup's job).

    What `keras.callbacks.ModelCheckpoint(save_best_only=True, save_weights_only=True)` does for one file, on the
    public callback hooks: Keras' writes the file in place, so a kill during the write leaves a truncated one.
    `initial_value_threshold` is the best value of the epochs before a resume, which only a better epoch replaces.
    The file's bytes are taken at the epoch's end and written while the next epoch trains; `fit` returns once they
    are.
    """

    def __init__(self, path, monitor="val_accuracy", mode="max", initial_value_threshold=None):
        super().__init__()
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min'; got {mode!r}")
        self.path, self.monitor, self.mode, self.best = path, monitor, mode, initial_value_threshold
        self._writer = EPOCH_END_WRITES

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            logging.warning("%s is not in the epoch's logs: %s not updated", self.monitor, self.path)
            return
        value = float(value)
        if self.best is None or (value > self.best if self.mode == "max" else value < self.best):
            self._writer.submit(weights_file_job(self.model, self.path, include_optimizer=False))
            self.best = value

    def on_train_batch_end(self, batch, logs=None):
        self._writer.check()

    def on_train_end(self, logs=None):
        self._writer.close()


class AtomicBackup(keras.callbacks.Callback):
    """The training state (weights, optimizer state, epoch) backed up after each epoch, safe against SIGKILL at any
    time; restored at the start of `fit`, which resumes at `initial_epoch()`.

    What `keras.callbacks.BackupAndRestore` does, on the public callback hooks: Keras' writes its weights file in
    place and the epoch as a second file (a kill during or between the two resumes from a truncated or mismatched
    state), and resumes by setting a private attribute of the model; here `fit`'s own `initial_epoch` does that.
    Each backup goes to `epoch-<n>.weights.h5`; then `training_metadata.json`, naming that file, is replaced
    atomically; then older weight files are deleted. A restart reads whichever metadata was last complete. With
    `last_copy`, that path becomes the same file (a hard link where possible): the last epoch's weights without a
    second save per epoch. With `keep_previous`, the epoch before stays too (named in the metadata), and
    `restore_epoch` picks which of the two a restart loads: processes of one run killed a moment apart hold
    backups an epoch apart, and must all resume from the older. With `delete_checkpoint`, the backup folder is
    removed when `fit` ends. The weights' bytes are taken at the epoch's end; the files are written, in that order,
    while the next epoch trains (`EPOCH_END_WRITES`; a kill before they are resumes from the epoch before, as a kill
    during a synchronous write would), and `fit` returns once they are. With `keep_previous` the epoch end waits
    for them.
    """

    def __init__(self, backup_dir, delete_checkpoint=True, last_copy=None, keep_previous=False, restore_epoch=None):
        super().__init__()
        self.backup_dir = backup_dir
        self.delete_checkpoint = delete_checkpoint
        self.last_copy = last_copy
        self.keep_previous = keep_previous
        self.restore_epoch = restore_epoch
        self._writer = EPOCH_END_WRITES

    def _restore_point(self):
        return read_backup_metadata(self.backup_dir, epoch=self.restore_epoch)

    def initial_epoch(self, default=0):
        """The epoch `fit` resumes at: the backup's, or `default` when there is none."""
        metadata = self._restore_point()
        return metadata["epoch"] if metadata else default

    def on_train_begin(self, logs=None):
        metadata = self._restore_point()
        if metadata is None:
            return
        if not self.model.built:
            raise ValueError("AtomicBackup needs a built model before fit().")
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)  # its variables are in the backup too
        self.model.load_weights(storage.join(self.backup_dir, metadata["weights"]))
        logging.info("Restored the backup of epoch %d from %s", metadata["epoch"], self.backup_dir)

    def on_epoch_end(self, epoch, logs=None):
        self._writer.wait()  # the previous epoch's backup is complete: its metadata is the one to read
        storage.makedirs(self.backup_dir)
        epoch += 1  # the epoch a restart begins with
        name = f"epoch-{epoch:06d}-batch-000000000.weights.h5"  # the batch field of Keras' per-batch backups
        previous = read_backup_metadata(self.backup_dir) if self.keep_previous else None
        write_weights = weights_file_job(self.model, storage.join(self.backup_dir, name))
        record = {"epoch": epoch, "batch": 0, "weights": name}
        if previous and previous["weights"] != name:
            record["previous"] = {key: previous[key] for key in ("epoch", "batch", "weights")}

        def write():
            write_weights()
            storage.write_json(storage.join(self.backup_dir, "training_metadata.json"), record)
            if self.last_copy:
                storage.publish_copy(storage.join(self.backup_dir, name), self.last_copy)
            keep = {name, record.get("previous", {}).get("weights")}
            for old in storage.listdir(self.backup_dir):
                if old.endswith(".weights.h5") and old not in keep:
                    storage.remove(storage.join(self.backup_dir, old))

        self._writer.submit(write)
        if self.keep_previous:
            # Processes of one run keep the epoch before theirs for each other: none may be more than one behind.
            self._writer.wait()

    def on_train_batch_end(self, batch, logs=None):
        self._writer.check()

    def on_train_end(self, logs=None):
        self._writer.close()
        if self.delete_checkpoint and storage.exists(self.backup_dir):
            storage.remove(self.backup_dir)


class CheckRunLock(keras.callbacks.Callback):
    """Stops the run when another process has taken over its run folder's lease (`run_folder.Lease.check`), before
    the next epoch's backup would overwrite that process's."""

    def __init__(self, lock):
        super().__init__()
        self.lock = lock

    def on_epoch_end(self, epoch, logs=None):
        self.lock.check()


def read_backup_metadata(backup_dir, epoch=None):
    """The last complete backup's {'epoch', 'batch', 'weights'}, or with `epoch` the kept backup of that epoch
    (the last or the one before it); None when there is none."""
    path = storage.join(backup_dir, "training_metadata.json")
    if not storage.exists(path):
        return None
    metadata = storage.read_json(path)
    if epoch is not None and metadata.get("epoch") != epoch:
        metadata = metadata.get("previous") or {}
        if metadata.get("epoch") != epoch:
            return None
    if "weights" not in metadata or not storage.exists(storage.join(backup_dir, metadata["weights"])):
        return None
    return metadata


def read_metrics_csv(path):
    """Rows of metrics.csv as dicts of floats (epoch as int), less the cells MetricsCSV wrote as NA; [] if absent."""
    if not storage.exists(path):
        return []
    rows = list(csv.DictReader(io.StringIO(storage.read_text(path))))
    out = []
    for row in rows:
        try:
            out.append({k: (int(v) if k == "epoch" else float(v)) for k, v in row.items() if v not in (None, "", "NA")})
        except ValueError:
            continue  # a half-written last line
    return out


def trim_metrics_csv(path, before_epoch):
    """Keeps only rows of epochs < `before_epoch` (0-based, as MetricsCSV writes them), so that a resumed run logs
    each epoch once, whatever moment the previous run was killed at."""
    if not storage.exists(path):
        return
    lines = storage.read_text(path).splitlines()
    if not lines:
        return
    header, kept = lines[0], [lines[0]]
    epoch_col = next(csv.reader([header])).index("epoch")
    for line in lines[1:]:
        fields = next(csv.reader([line]), [])
        if (
            len(fields) == len(next(csv.reader([header])))
            and fields[epoch_col].isdigit()
            and int(fields[epoch_col]) < before_epoch
        ):
            kept.append(line)
    if kept != lines:
        storage.write_text(path, "\n".join(kept) + "\n")


# Wall and CPU seconds of an epoch's training steps and of its validation (from the last training step to the end of
# validation: Keras replaces the validation iterator in between), appended to each row. CPU time well below the wall
# time (computing keeps it at 1-2x the wall time on 2 cores) shows a stall: the process waiting, not computing.
TIMING_KEYS = ("wall_train_s", "cpu_train_s", "wall_val_s", "cpu_val_s")


def _clock():
    times = os.times()
    return time.perf_counter(), times.user + times.system


def _span(name, begin, end):
    """{"wall_<name>_s", "cpu_<name>_s"} between two `_clock()` readings."""
    return {f"{kind}_{name}_s": round(end[i] - begin[i], 2) for i, kind in enumerate(("wall", "cpu"))}


def epoch_timings(metrics_csv):
    """Per epoch of a metrics.csv written by MetricsCSV: the TIMING_KEYS it holds."""
    return [
        {"epoch": row["epoch"], **{k: row[k] for k in TIMING_KEYS if k in row}} for row in read_metrics_csv(metrics_csv)
    ]


def stalls(epochs, min_wall_s=3.0, max_cpu_share=0.3):
    """The phases (each `wall_<phase>_s` of a row with its `cpu_<phase>_s`) in which the process mostly waited: at
    least `min_wall_s` of wall time with CPU time under `max_cpu_share` of it (computing keeps it at 1-2x the wall
    time on 2 cores)."""
    found = []
    for row in epochs:
        phases = [k[len("wall_") : -len("_s")] for k in row if k.startswith("wall_") and k.endswith("_s")]
        for phase in phases:
            wall, cpu = row.get(f"wall_{phase}_s"), row.get(f"cpu_{phase}_s")
            if wall is not None and cpu is not None and wall >= min_wall_s and cpu < max_cpu_share * wall:
                found.append({"epoch": row["epoch"], "phase": phase, "wall_s": wall, "cpu_s": cpu})
    return found


class FitExitClock(keras.callbacks.Callback):
    """Times what follows `fit`'s last callback until `fit` returns: there Keras deletes the training iterator, which
    waits for tf.data's autotuning thread where a pipeline has one (`training.data._options`)."""

    def __init__(self):
        super().__init__()
        self._mark = None

    def on_train_end(self, logs=None):
        self._mark = _clock()

    def since_train_end(self):
        """{"wall_fit_exit_s", "cpu_fit_exit_s"} from the end of training to now; empty if training did not end."""
        if self._mark is None:
            return {}
        return _span("fit_exit", self._mark, _clock())


class MetricsCSV(keras.callbacks.Callback):
    """One row per epoch (`epoch`, then the logs' keys sorted, as Keras' CSVLogger writes them, then TIMING_KEYS),
    the whole file rewritten atomically each time: a few hundred bytes, on any file system `storage` reaches."""

    def __init__(self, path):
        super().__init__()
        self.path = path
        self._marks = {}

    def on_epoch_begin(self, epoch, logs=None):
        self._marks = {"epoch": _clock()}

    def on_train_batch_end(self, batch, logs=None):
        self._marks["steps_end"] = _clock()

    def on_test_end(self, logs=None):
        self._marks["val_end"] = _clock()

    def _timings(self):
        marks = self._marks
        if "epoch" not in marks or "steps_end" not in marks:
            return {}
        spans = {
            "train": (marks["epoch"], marks["steps_end"]),
            "val": (marks["steps_end"], marks.get("val_end", marks["steps_end"])),
        }
        return {key: value for name, (begin, end) in spans.items() for key, value in _span(name, begin, end).items()}

    def on_epoch_end(self, epoch, logs=None):
        logs = {**(logs or {}), **self._timings()}
        text = storage.read_text(self.path) if storage.exists(self.path) else ""
        lines = text.splitlines()
        if lines:
            keys = next(csv.reader([lines[0]]))[1:]
        else:
            keys = sorted(k for k in logs if k not in TIMING_KEYS)
            if keys and not any(k.startswith("val_") for k in keys):
                keys += [f"val_{k}" for k in keys]
            keys += list(TIMING_KEYS)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        if not lines:
            writer.writerow(["epoch"] + keys)
        writer.writerow([epoch] + [_csv_value(logs.get(k, "NA")) for k in keys])
        storage.write_text(self.path, "".join(line + "\n" for line in lines) + out.getvalue())


def _csv_value(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


class PlotCurves(keras.callbacks.Callback):
    """After each epoch, redraws loss and accuracy (train and validation) from metrics.csv into a PNG."""

    def __init__(self, csv_path, png_path):
        super().__init__()
        self.csv_path = csv_path
        self.png_path = png_path

    def on_epoch_end(self, epoch, logs=None):
        plot_curves(self.csv_path, self.png_path)


def plot_curves(csv_path, png_path):
    rows = read_metrics_csv(csv_path)
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    epochs = [r["epoch"] + 1 for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for prefix, style in (("", "-"), ("val_", "--")):
            key = prefix + metric
            if all(key in r for r in rows):
                ax.plot(epochs, [r[key] for r in rows], style, marker="o", label=key)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    storage.write_atomically(png_path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


class SyncBatchNormStatistics(keras.callbacks.Callback):
    """Averages BatchNorm moving statistics over all replicas before each validation and after each epoch.

    The gradients of a synchronous strategy keep the trainable weights identical everywhere, but each replica
    updates its BatchNorm moving mean/variance from its own batches (as PyTorch DDP does without SyncBN), so
    workers would otherwise end with different inference weights. Collective: every worker must run it.
    """

    def __init__(self, strategy):
        super().__init__()
        self.strategy = strategy
        self._fn = None

    def _sync(self):
        if self.strategy.num_replicas_in_sync < 2:
            return
        if self._fn is None:
            import tensorflow as tf

            variables = [
                v.value if hasattr(v, "value") else v
                for v in self.model.non_trainable_weights
                if v.path.endswith(("moving_mean", "moving_variance"))
            ]
            strategy = self.strategy

            def replica_fn():
                ctx = tf.distribute.get_replica_context()
                return [ctx.all_reduce("MEAN", tf.identity(v)) for v in variables]

            @tf.function
            def sync():
                averaged = strategy.run(replica_fn)
                for v, value in zip(variables, averaged):
                    v.assign(strategy.experimental_local_results(value)[0])

            self._fn = sync
        self._fn()

    def on_test_begin(self, logs=None):
        self._sync()

    def on_epoch_end(self, epoch, logs=None):
        self._sync()
