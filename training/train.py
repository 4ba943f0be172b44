"""Train or fine-tune CMT with `model.fit` under any tf.distribute strategy, or Keras' distribution API on JAX
(`--distribution`): `python -m keras_cmt.training.train --help`.

    python -m keras_cmt.training.train --model=cmt_ti --dataset=digits --image_size=64 --epochs=15 --batch_size=64 \\
        --model_dir=/tmp/cmt_digits

`model_dir` receives: backup/ (BackupAndRestore: a killed run, even by SIGKILL, resumes at the epoch it reached,
optimizer state included), checkpoints/best.weights.h5 and last.weights.h5, metrics.csv, logs/ (TensorBoard),
curves.png, results.json, model.keras and model.weights.h5, and .lock while it runs (training/run_folder.py: one
command per folder). With several workers (or processes) only the chief writes these and holds the lock; every
worker keeps its own backup/<task>-<index>/ (Keras' callback has no chief logic; a shared folder would race).
"""

import gc
import hashlib
import os
import sys
import time

from absl import logging

from keras_cmt import quiet
from keras_cmt.training import flags as training_flags
from keras_cmt.training import keras_distribution, multiworker_compat, run_folder, storage

FLAGS = training_flags.FLAGS


class RunError(ValueError):
    """A weights problem found before training; one line."""


def _fail(message, status=2):
    sys.stderr.write(f"keras_cmt.training.train: error: {message}\n")
    sys.stderr.flush()
    sys.exit(status)


def build_optimizer(recipe, model, steps_per_epoch, epochs, batch_size):
    """AdamW (no decay on norms, biases and position biases; optional EMA) with warm-up + cosine decay.

    keras_cmt's AdamW is Keras' with the schedule evaluated once per step (keras_cmt/optimizers.py).
    """
    import keras

    import keras_cmt

    total = max(1, steps_per_epoch * epochs)
    warmup = min(int(round(recipe.warmup_epochs * steps_per_epoch)), total - 1)
    peak = recipe.peak_lr(batch_size)
    alpha = min(1.0, recipe.min_lr / peak) if peak > 0 else 0.0
    if warmup > 0:
        schedule = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=recipe.warmup_lr,
            decay_steps=total - warmup,
            alpha=alpha,
            warmup_target=peak,
            warmup_steps=warmup,
        )
    else:
        schedule = keras.optimizers.schedules.CosineDecay(initial_learning_rate=peak, decay_steps=total, alpha=alpha)
    optimizer = keras_cmt.optimizers.AdamW(
        learning_rate=schedule,
        weight_decay=recipe.weight_decay,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        use_ema=recipe.ema > 0,
        ema_momentum=recipe.ema if recipe.ema > 0 else 0.99,
    )
    optimizer.exclude_from_weight_decay(var_list=no_decay_variables(model))
    return optimizer


def no_decay_variables(model):
    """As timm's param groups: every 1-d weight (norm scales/offsets, biases) and CMT's relative position biases."""
    return [v for v in model.trainable_variables if len(v.shape) <= 1 or v.name == "bias"]


def load_start_weights(model, weights, model_name, image_size):
    """Loads `--weights` into the model; a checkpoint with another number of classes keeps the new head."""
    import keras_cmt

    if weights == "imagenet":
        # A 1000-class model with the released weights, then everything but the head into ours.
        import tempfile

        donor = keras_cmt.build_model(model_name, input_shape=(image_size, image_size, 3), weights="imagenet")
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "imagenet.weights.h5")
            donor.save_weights(path)
            keras_cmt.load_weights(model, path, exclude_head=model.output_shape[-1] != 1000)
        return
    try:
        with storage.local_copy(weights) as local:
            try:
                keras_cmt.load_weights(model, local, exclude_head=False)
                logging.info("Loaded %s", weights)
            except ValueError as e:
                logging.info(
                    "Checkpoint %s does not fit the head (%s); loading all but the head.",
                    weights,
                    str(e).splitlines()[0][:200],
                )
                keras_cmt.load_weights(model, local, exclude_head=True)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file: h5py, zip and pickle errors alike
        raise RunError(f"--weights={weights}: cannot load it: {_reason(e, weights)}") from None


def check_weights_file(weights):
    """A truncated or foreign `--weights` file fails in one line before the run folder is touched; whether its
    weights fit the model is checked when they are loaded."""
    if weights.endswith(".keras"):
        raise RunError(
            f"--weights={weights}: a .keras model, not a weights file; give its .weights.h5 (a run "
            "folder's model.weights.h5) or an official .pth"
        )
    if not weights.endswith(".h5"):
        return
    import h5py

    try:
        with storage.local_copy(weights) as local:
            h5py.File(local, "r").close()
    except Exception as e:  # noqa: BLE001 - h5py's OSError names the damage (truncated, no signature)
        raise RunError(f"--weights={weights}: not a readable .weights.h5 file: {_reason(e, weights)}") from None


def _reason(error, path):
    """The first line of a loading error without the path the caller already names (Keras and h5py repeat it)."""
    text = " ".join(storage.first_line(error).split())
    local = os.path.basename(path)
    for prefix in (f"{path}: ", f"{local}: "):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    return text[:300]


def build_model(model_name, image_size, num_classes, drop_path, overrides_json=None):
    """The variant, or with `--model_overrides` a `keras_cmt.CMT` of the variant's configuration changed by them."""
    import json

    import keras_cmt

    kwargs = dict(input_shape=(image_size, image_size, 3), classes=num_classes, drop_path_rate=drop_path)
    if not overrides_json:
        return keras_cmt.build_model(model_name, **kwargs)
    variant = keras_cmt.VARIANTS[model_name]
    config = {**variant.builder_kwargs(), "name": variant.name}
    config.update(json.loads(overrides_json))
    return keras_cmt.CMT(**config, **kwargs)


def set_backbone_trainable(model, trainable):
    for layer in model.layers:
        layer.trainable = trainable or layer.name == "head"


def weights_fingerprint(variables):
    """sha256 over the values of `variables`: equal on every worker when they hold the same weights."""
    import numpy as np

    return hashlib.sha256(b"".join(np.asarray(v).tobytes() for v in variables)).hexdigest()


class Paths:
    def __init__(self, model_dir, task_type, task_id, multi_worker):
        self.model_dir = model_dir
        self.metrics_csv = storage.join(model_dir, "metrics.csv")
        self.curves_png = storage.join(model_dir, "curves.png")
        self.results_json = storage.join(model_dir, "results.json")
        self.checkpoints = storage.join(model_dir, "checkpoints")
        self.logs = storage.join(model_dir, "logs")
        self.final_keras = storage.join(model_dir, "model.keras")
        self.final_weights = storage.join(model_dir, "model.weights.h5")
        backup_root = storage.join(model_dir, "backup")
        self.backup_root = storage.join(backup_root, f"{task_type}-{task_id}") if multi_worker else backup_root
        self.phase1_done = storage.join(self.backup_root, "frozen_phase_done.weights.h5")

    def backup_dir(self, phase):
        return storage.join(self.backup_root, phase)


def keras_backend():
    import keras

    return keras.config.backend()


def _replicas(n):
    return f"{n} replica{'' if n == 1 else 's'}"


def _fit_verbosity():
    """Keras fit's verbose for --progress: 1 a progress bar, 2 one line per epoch, 0 nothing."""
    progress = FLAGS.progress
    if progress == "auto":
        progress = "bar" if sys.stdout.isatty() else "epoch"
    return {"bar": 1, "epoch": 2, "none": 0}[progress]


def run(argv=None):
    """Everything after flag parsing. Returns the results dict (chief) or None."""
    from keras_cmt.training import data
    from keras_cmt.training import strategy as strategy_lib

    t_start = time.time()
    # ---- checks that need no TensorFlow runtime: bad input fails here, before any work.
    try:
        for name in ("model_dir", "config", "weights", "data_dir"):  # file:// URLs become local paths
            FLAGS[name].value = storage.normalize(FLAGS[name].value)
        training_flags.apply_config_file()
        recipe = training_flags.recipe_from_flags()
        strategy_lib.check_flags(FLAGS.strategy, FLAGS.tpu)
        processes = keras_distribution.check_flags(
            FLAGS.distribution,
            FLAGS.strategy,
            backend=keras_backend(),
            coordinator_address=FLAGS.coordinator_address,
            num_processes=FLAGS.num_processes,
            process_id=FLAGS.process_id,
            model_parallel_size=FLAGS.model_parallel_size,
        )
        if recipe.image_size % 32:
            raise training_flags.ConfigError(f"image_size={recipe.image_size} is not a multiple of 32")
        storage.check_reachable(FLAGS.model_dir, "--model_dir")  # a bad URL fails here, before any work
        run_identity = run_folder.identity(FLAGS.model, FLAGS.model_overrides, FLAGS.dataset, recipe.image_size)
        start_mode, start_line = run_folder.plan(FLAGS.model_dir, run_identity, FLAGS.overwrite)
        if FLAGS.weights and FLAGS.weights != "imagenet":
            storage.check_readable(FLAGS.weights, "--weights")
            check_weights_file(FLAGS.weights)
        source = data.resolve_source(
            FLAGS.dataset,
            FLAGS.data_dir,
            FLAGS.manual_dir,
            FLAGS.val_fraction,
            FLAGS.train_split,
            FLAGS.val_split,
            FLAGS.seed,
            FLAGS.split_seed,
        )
        if FLAGS.distribution == "none":
            strategy = strategy_lib.make_strategy(FLAGS.strategy, FLAGS.tpu, FLAGS.num_cpu_devices)
            task_type, task_id, is_chief = strategy_lib.worker_info(strategy)
        else:
            keras_distribution.check_model_parallel_classes(
                FLAGS.distribution, source.num_classes, FLAGS.model_parallel_size
            )
            strategy = keras_distribution.make(
                FLAGS.distribution, *processes, model_parallel_size=FLAGS.model_parallel_size
            )
            task_type, task_id, is_chief = "process", strategy.process_id, strategy.is_chief
        strategy_lib.check_batch_size(strategy, recipe.batch_size)
        # One command per folder: only the chief locks it (the workers of a multi-worker run share it). Taken
        # before anything is written there; the plan is made again under the lock, so that of two commands started
        # together the second sees what the first made of the folder.
        lock = run_folder.lock(FLAGS.model_dir) if is_chief else None
    except storage.NoSpaceError as e:
        _fail(str(e), status=1)
    except (
        training_flags.ConfigError,
        data.DatasetError,
        strategy_lib.StrategyError,
        RunError,
        run_folder.RunFolderError,
        storage.StorageError,
        keras_distribution.DistributionError,
    ) as e:
        _fail(str(e))
    try:
        try:
            storage.check_writable(FLAGS.model_dir, "--model_dir")
            if lock is not None:
                start_mode, start_line = run_folder.plan(FLAGS.model_dir, run_identity, FLAGS.overwrite)
        except storage.NoSpaceError as e:
            _fail(str(e), status=1)
        except (run_folder.RunFolderError, storage.StorageError) as e:
            _fail(str(e))
        return _train(
            recipe, source, strategy, start_mode, start_line, run_identity, lock, t_start, task_type, task_id, is_chief
        )
    except RunError as e:
        _fail(str(e))
    except run_folder.RunFolderInUse as e:  # the lease was taken over during the run
        _fail(str(e), status=1)
    except Exception as e:  # noqa: BLE001 - write failures and a stream with nothing decodable; else re-raised
        undecodable = data.pipeline_error(e)
        if undecodable is not None:
            _fail(undecodable)
        if not _is_write_failure(e):
            raise
        _fail(_write_failure_line(e), status=1)
    finally:
        if lock is not None:
            lock.release()


def _is_write_failure(error):
    """storage's WriteError, a full disk wherever it was met (TensorBoard's writer too), an OSError on model_dir."""
    return (
        isinstance(error, storage.WriteError)
        or storage.is_no_space(error)
        or (isinstance(error, OSError) and _under_model_dir(getattr(error, "filename", None)))
    )


def _under_model_dir(path):
    if not path:
        return False
    folder = storage.normalize(FLAGS.model_dir).rstrip("/")
    path = storage.normalize(os.fspath(path))
    if not storage.is_remote(folder):
        folder, path = os.path.abspath(folder), os.path.abspath(path)
    return path == folder or path.startswith(folder + "/")


def _write_failure_line(error):
    """One line for a failed write: the folder, the cause, the file it was writing."""
    path = getattr(error, "path", None) or getattr(error, "filename", None)
    where = f" (writing {path})" if path else ""
    if storage.is_no_space(error):
        return (
            f"--model_dir={FLAGS.model_dir}: no space left on device{where}; free some and run the same "
            "command again to resume after the last completed epoch"
        )
    reason = getattr(error, "reason", None) or getattr(error, "strerror", None) or storage.first_line(error)
    return f"--model_dir={FLAGS.model_dir}: {reason}{where}"


def _train(recipe, source, strategy, start_mode, start_line, run_identity, lock, t_start, task_type, task_id, is_chief):
    """The run itself, once the flags are checked and the folder locked."""
    from keras_cmt.training import callbacks as cb
    from keras_cmt.training import data
    from keras_cmt.training import strategy as strategy_lib

    import keras

    jax_distribution = keras_distribution.is_keras_distribution(strategy)
    multi_worker = strategy.is_multi_process if jax_distribution else multiworker_compat.is_multi_worker(strategy)
    paths = Paths(FLAGS.model_dir, task_type, task_id, multi_worker)
    if is_chief:
        if start_mode == "restart":
            run_folder.clear(FLAGS.model_dir)
        storage.makedirs(FLAGS.model_dir)
        run_folder.write_record(FLAGS.model_dir, run_identity, sys.argv)
        print(start_line, flush=True)
    else:
        storage.makedirs(FLAGS.model_dir)

    if FLAGS.mixed_precision:
        keras.mixed_precision.set_global_policy(
            "mixed_bfloat16" if jax_distribution else strategy_lib.mixed_precision_policy(strategy)
        )
    keras.utils.set_random_seed(FLAGS.seed)

    global_batch = recipe.batch_size
    steps = FLAGS.steps_per_epoch or data.steps_per_epoch(source, global_batch)
    val_steps = data.validation_steps(source, global_batch)
    epochs = recipe.epochs
    freeze_epochs = min(FLAGS.freeze_epochs, epochs)
    logging.info("Recipe: %s", recipe.to_dict())
    if is_chief:
        print(
            f"{FLAGS.model} on {source.name}: {source.num_classes} classes, {source.num_train} train / "
            f"{source.num_val} val images at {recipe.image_size}px; {_replicas(strategy.num_replicas_in_sync)}, "
            f"global batch {global_batch}, {steps} steps/epoch, {epochs} epochs, peak lr {recipe.peak_lr():.3g}",
            flush=True,
        )

    train_ds = strategy.distribute_datasets_from_function(
        lambda ctx: data.train_dataset(
            source,
            recipe,
            global_batch,
            ctx,
            seed=FLAGS.seed,
            shuffle_buffer=FLAGS.shuffle_buffer or None,
            deterministic=FLAGS.deterministic,
        )
    )
    val_ds = strategy.distribute_datasets_from_function(
        lambda ctx: data.val_dataset(source, recipe.image_size, recipe.crop_pct, global_batch, ctx)
    )

    with strategy.scope():
        model = build_model(FLAGS.model, recipe.image_size, source.num_classes, recipe.drop_path, FLAGS.model_overrides)
        if FLAGS.weights:
            load_start_weights(model, FLAGS.weights, FLAGS.model, recipe.image_size)

    def compile_for(phase_epochs):
        with strategy.scope():
            optimizer = build_optimizer(recipe, model, steps, phase_epochs, global_batch)
            model.compile(
                optimizer=optimizer,
                loss=keras.losses.CategoricalCrossentropy(label_smoothing=recipe.label_smoothing),
                # weighted_: Keras applies the sample weights (zero on validation padding) only to these.
                weighted_metrics=[
                    keras.metrics.CategoricalAccuracy(name="accuracy"),
                    keras.metrics.TopKCategoricalAccuracy(k=min(5, source.num_classes), name="top5"),
                ],
                # Under Keras' distribution the step is always compiled: JAX's eager step would run the
                # devices' collectives one op at a time (on CPU devices they then wait on each other forever).
                jit_compile=FLAGS.jit_compile or jax_distribution,
                steps_per_execution=FLAGS.steps_per_execution,
            )
            # Built here, not on the first step: under the default strategy Keras would create the optimizer's
            # slots inside the first trace of the train step, and TensorFlow then traces it a second time
            # (about 25 s of CMT-Ti's start-up on 2 cores).
            optimizer.build(model.trainable_variables)

    def callbacks_for(phase, backup_dir):
        """The phase's callbacks, and the epoch its `fit` begins with (after the backup it restores, if any)."""
        metadata = cb.read_backup_metadata(backup_dir)
        phase_start = freeze_epochs if phase == "train" else 0
        own_epoch = metadata["epoch"] if metadata else phase_start
        # Processes killed a moment apart hold backups an epoch apart (each keeps the one before): all resume
        # from the oldest.
        resume_epoch = strategy.min_over_processes(own_epoch) if jax_distribution else own_epoch
        if (
            resume_epoch not in (own_epoch, phase_start)
            and cb.read_backup_metadata(backup_dir, epoch=resume_epoch) is None
        ):
            raise RunError(
                f"{backup_dir}: this process's backup is of epoch {own_epoch}, another process's of "
                f"epoch {resume_epoch}, which this one no longer has: run again with --overwrite"
            )
        if is_chief and resume_epoch != own_epoch:
            print(f"another process's backup is of epoch {resume_epoch}: every process resumes after it", flush=True)
        # First: BatchNorm statistics are averaged over workers before anything saves them (collective). Not
        # under Keras' distribution: its step is one program over the global batch, whose statistics are global.
        result = [] if jax_distribution else [cb.SyncBatchNormStatistics(strategy)]
        result.append(keras.callbacks.TerminateOnNaN())
        if is_chief:
            cb.trim_metrics_csv(paths.metrics_csv, resume_epoch)
            best = max(
                (r["val_accuracy"] for r in cb.read_metrics_csv(paths.metrics_csv) if "val_accuracy" in r), default=None
            )
            result += [
                cb.MetricsCSV(paths.metrics_csv),
                cb.PlotCurves(paths.metrics_csv, paths.curves_png),
                cb.BestWeights(
                    storage.join(paths.checkpoints, "best.weights.h5"),
                    monitor="val_accuracy",
                    mode="max",
                    initial_value_threshold=best,
                ),
                keras.callbacks.TensorBoard(paths.logs, write_graph=False, profile_batch=0),
            ]
        if lock is not None:
            result.append(cb.CheckRunLock(lock))
        # Last, so that a kill between the two leaves an extra CSV row (trimmed on resume), never a missing one.
        backup = cb.AtomicBackup(
            backup_dir,
            last_copy=storage.join(paths.checkpoints, "last.weights.h5") if is_chief else None,
            keep_previous=multi_worker,
            restore_epoch=resume_epoch,
        )
        result.append(backup)
        return result, backup.initial_epoch(default=phase_start)

    # shuffle=False: the tf.data pipeline shuffles (Keras would only warn that it ignores shuffle=True).
    fit_kwargs = dict(
        validation_data=val_ds,
        steps_per_epoch=steps,
        validation_steps=val_steps,
        verbose=_fit_verbosity(),
        shuffle=False,
    )
    if freeze_epochs > 0:
        if storage.exists(paths.phase1_done):
            model.load_weights(paths.phase1_done)
            logging.info("Frozen-backbone phase already done; continuing with the whole model.")
        else:
            set_backbone_trainable(model, False)
            compile_for(freeze_epochs)
            logging.info(
                "Phase 1: head only for %d epochs (%d trainable weights)", freeze_epochs, len(model.trainable_weights)
            )
            callbacks, initial_epoch = callbacks_for("frozen", paths.backup_dir("frozen"))
            with cb.epoch_end_writes_finished():
                model.fit(
                    train_ds, epochs=freeze_epochs, initial_epoch=initial_epoch, callbacks=callbacks, **fit_kwargs
                )
            cb.atomic_save(model, paths.phase1_done, weights_only=True)
        set_backbone_trainable(model, True)
    history = None
    fit_exit = cb.FitExitClock()
    if epochs > freeze_epochs:
        compile_for(epochs - freeze_epochs)
        callbacks, initial_epoch = callbacks_for("train", paths.backup_dir("train"))
        with cb.epoch_end_writes_finished():
            history = model.fit(
                train_ds, epochs=epochs, initial_epoch=initial_epoch, callbacks=callbacks + [fit_exit], **fit_kwargs
            )

    fit_exit_timing = fit_exit.since_train_end()
    final = None if recipe.ema else _last_validation(history, epochs)
    if final is None:
        # Every worker evaluates (collective ops); with EMA, fit has already swapped the averaged weights in.
        final = model.evaluate(val_ds, steps=val_steps, return_dict=True, verbose=0)
    fingerprint = weights_fingerprint(model.get_weights())
    trainable_fingerprint = weights_fingerprint(model.trainable_weights)
    logging.info("Final validation: %s", final)
    fingerprint_line = f"FINAL_WEIGHTS_SHA256 {task_type}-{task_id} {fingerprint} trainable={trainable_fingerprint}"
    if multi_worker:  # what the workers' logs are compared by: every worker must end with the same weights
        print(fingerprint_line, flush=True)
    else:
        logging.info(fingerprint_line)
    if storage.exists(paths.phase1_done):
        storage.remove(paths.phase1_done)
    if not is_chief:
        return None
    rows = cb.read_metrics_csv(paths.metrics_csv)
    results = {
        "model": FLAGS.model,
        "dataset": source.name,
        "image_size": recipe.image_size,
        "num_classes": source.num_classes,
        "val_accuracy": float(final["accuracy"]),
        "val_top5": float(final["top5"]),
        "val_loss": float(final["loss"]),
        "epochs": epochs,
        "epochs_logged": len(rows),
        "steps_per_epoch": steps,
        "steps": steps * epochs,
        "global_batch_size": global_batch,
        "replicas": strategy.num_replicas_in_sync,
        "distribution": FLAGS.distribution,
        "seed": FLAGS.seed,
        "split_seed": FLAGS.split_seed,
        "wall_time_s": round(time.time() - t_start, 1),
        "fit_exit": fit_exit_timing,  # from the last epoch's end to `fit` returning: near zero unless it stalled
        "resumed": bool(history is not None and history.epoch and history.epoch[0] > freeze_epochs),
        "recipe": recipe.to_dict(),
        "skipped_files": source.skipped_files,
        "weights_sha256": fingerprint,
    }
    cb.atomic_save(model, paths.final_weights, weights_only=True, include_optimizer=False)
    cb.atomic_save(model, paths.final_keras, include_optimizer=False)
    cb.plot_curves(paths.metrics_csv, paths.curves_png)
    storage.write_json(paths.results_json, results)  # last: its presence means the run finished
    print(
        f"val top-1 {results['val_accuracy'] * 100:.2f}%, top-5 {results['val_top5'] * 100:.2f}% after "
        f"{epochs} epochs ({results['wall_time_s'] / 60:.1f} min); wrote {FLAGS.model_dir}",
        flush=True,
    )
    return results


def _last_validation(history, epochs):
    """The last epoch's validation metrics from `fit`'s history when that epoch was the run's last, else None.

    Without EMA nothing changes the weights after that validation (the BatchNorm statistics are synchronised
    before it), so evaluating again would only repeat it. The condition is the same on every worker."""
    if history is None or not history.epoch or history.epoch[-1] != epochs - 1:
        return None
    logs = history.history
    if not all(f"val_{name}" in logs for name in ("accuracy", "top5", "loss")):
        return None
    return {name: float(logs[f"val_{name}"][-1]) for name in ("accuracy", "top5", "loss")}


def main(argv):
    logging.set_verbosity(logging.WARNING if quiet.is_quiet() else logging.INFO)
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        run()
    except KeyboardInterrupt:
        _interrupted()
    # Everything is written (atomically) by now. The interpreter's shutdown would garbage-collect TensorFlow's
    # and the traced step's millions of objects one last time (2.4 s of CMT-Ti's run on 2 cores); frozen, they
    # are left to the process's exit.
    gc.freeze()


def _interrupted():
    sys.stderr.write(
        f"\ninterrupted: run the same command again to resume {FLAGS.model_dir} after its last completed epoch\n"
    )
    sys.exit(130)


def console_main():
    """Entry point of the `cmt-train` console script."""
    training_flags.define_flags()
    training_flags.run_with_help(main, training_flags, __doc__)


if __name__ == "__main__":
    console_main()
