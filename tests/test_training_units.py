"""Fast in-process tests of training/: presets, config precedence, optimizer, transforms, data, callbacks."""

import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fixtures", "training"))

import helpers  # noqa: E402

sys.path.insert(0, helpers.REPO)

import keras  # noqa: E402
import keras_cmt  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_cmt.training import augment, callbacks, data, presets, train  # noqa: E402
from keras_cmt.training import flags as training_flags  # noqa: E402


# ------------------------------------------------------------------------------------------ presets and flags


def test_presets_follow_the_official_recipe_and_scale_lr_by_batch():
    ti = presets.get_recipe("cmt_ti")
    assert (ti.image_size, ti.batch_size, ti.epochs, ti.drop_path, ti.ema) == (160, 2048, 800, 0.1, 0.0)
    assert ti.peak_lr() == pytest.approx(8e-4 * 2048 / 512)
    assert ti.peak_lr(256) == pytest.approx(8e-4 * 256 / 512)
    b = presets.get_recipe("cmt_b")
    assert (b.image_size, b.batch_size, b.drop_path, b.ema, b.min_lr, b.warmup_lr) == (
        256,
        512,
        0.25,
        0.99996,
        2e-5,
        1e-6,
    )
    assert presets.get_recipe("cmt_s", dataset="digits") is presets.SMALL_DATA_PRESET
    assert presets.get_recipe("cmt_s", preset="imagenet", dataset="digits").image_size == 224
    with pytest.raises(ValueError, match="--preset"):
        presets.get_recipe("cmt_ti", preset="bogus")


def _parse(argv):
    training_flags.define_flags()
    flags = training_flags.FLAGS
    flags.unparse_flags()
    flags(["train"] + argv)
    training_flags.apply_config_file()
    return training_flags.recipe_from_flags()


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_config_file_overrides_preset_and_command_line_overrides_config(tmp_path, suffix):
    values = {"model": "cmt_xs", "epochs": 7, "weight_decay": 0.01, "mixup": 0.0, "hflip": False}
    path = tmp_path / f"recipe{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(values))
    else:
        path.write_text("".join(f"{k}: {str(v).lower() if isinstance(v, bool) else v}\n" for k, v in values.items()))
    recipe = _parse([f"--model_dir={tmp_path}", f"--config={path}", "--epochs=3", "--dataset=imagenette"])
    xs = presets.IMAGENET_PRESETS["cmt_xs"]
    assert training_flags.FLAGS.model == "cmt_xs"
    assert recipe.epochs == 3  # command line beats config
    assert recipe.weight_decay == 0.01 and recipe.mixup == 0.0 and recipe.hflip is False  # config beats preset
    assert recipe.image_size == xs.image_size and recipe.ema == xs.ema  # preset where nothing else says


def test_config_file_with_unknown_key_is_a_one_line_error(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"epochz": 3}))
    with pytest.raises(training_flags.ConfigError, match=r"unknown key 'epochz'"):
        _parse([f"--model_dir={tmp_path}", f"--config={path}"])


# ------------------------------------------------------------------------------------------------ optimizer


def _tiny_model(classes=10, size=32):
    return train.build_model("cmt_ti", size, classes, 0.0, helpers.TINY_MODEL)


def test_optimizer_schedule_warms_up_then_cosine_decays_to_min_lr():
    recipe = presets.IMAGENET_PRESETS["cmt_s"].replace(warmup_epochs=2)
    model = _tiny_model()
    opt = train.build_optimizer(recipe, model, steps_per_epoch=10, epochs=10, batch_size=512)
    assert isinstance(opt, keras_cmt.optimizers.AdamW)  # the schedule evaluated once per step
    schedule = opt._learning_rate
    peak = 5e-4
    assert float(schedule(0)) == pytest.approx(1e-7, rel=1e-3)
    assert float(schedule(10)) == pytest.approx((1e-7 + peak) / 2, rel=1e-2)  # halfway through warm-up
    assert float(schedule(20)) == pytest.approx(peak, rel=1e-4)
    assert float(schedule(100)) == pytest.approx(1e-5, rel=1e-3)
    assert float(schedule(60)) < peak and float(schedule(60)) > 1e-5


def test_weight_decay_skips_norms_biases_and_relative_position_biases_only():
    model = _tiny_model()
    opt = train.build_optimizer(presets.IMAGENET_PRESETS["cmt_ti"], model, 10, 1, 64)
    decayed = {v.path for v in model.trainable_variables if opt._use_weight_decay(v)}
    skipped = {v.path for v in model.trainable_variables if not opt._use_weight_decay(v)}
    rel_pos = [v.path for v in model.trainable_variables if len(v.shape) == 3 and v.name == "bias"]
    assert rel_pos and set(rel_pos) <= skipped
    assert all(len(v.shape) <= 1 for v in model.trainable_variables if v.path in skipped and v.path not in rel_pos)
    assert any("gamma" in p or "beta" in p for p in skipped)
    kernels = [v.path for v in model.trainable_variables if len(v.shape) >= 2 and v.name != "bias"]
    assert kernels and set(kernels) == decayed


def test_ema_is_used_when_the_recipe_has_it():
    model = _tiny_model()
    opt = train.build_optimizer(presets.IMAGENET_PRESETS["cmt_xs"], model, 10, 1, 64)
    assert opt.use_ema and opt.ema_momentum == pytest.approx(0.9998)
    assert not train.build_optimizer(presets.IMAGENET_PRESETS["cmt_ti"], model, 10, 1, 64).use_ema


# ----------------------------------------------------------------------------------------------- transforms


def test_center_crop_takes_the_centre_after_resizing_the_short_side():
    image = np.zeros((64, 128, 3), np.uint8)
    image[:, 32:96] = 200  # the central 64x64 square is bright, the sides black
    out = augment.center_crop(tf.constant(image), 32, crop_pct=1.0).numpy()
    assert out.shape == (32, 32, 3)
    assert out.min() > 150  # bicubic rings a little at the border; a black side would give ~0
    out = augment.center_crop(tf.constant(image), 32, crop_pct=0.5).numpy()  # short side 64: keeps the middle
    assert out.min() > 150


def test_random_resized_crop_outputs_the_size_within_range():
    image = tf.constant(np.random.default_rng(0).integers(0, 256, (50, 70, 3)), tf.uint8)
    for _ in range(5):
        out = augment.random_resized_crop(image, 32, 0.08)
        assert out.shape == (32, 32, 3) and out.dtype == tf.float32
        assert float(tf.reduce_min(out)) >= 0 and float(tf.reduce_max(out)) <= 255


def test_decode_random_resized_crop_reads_jpeg_and_png(tmp_path):
    helpers.make_image_folder(str(tmp_path), per_class=3, corrupt=False)
    for name in ("000.png", "001.jpg"):
        encoded = tf.io.read_file(str(tmp_path / "dark" / name))
        out = augment.decode_random_resized_crop(encoded, 32, 0.5).numpy()
        assert out.shape == (32, 32, 3)
        assert out[..., 2].mean() > out[..., 0].mean() + 50  # still the blue 'dark' class


def test_batch_augment_mixes_labels_and_normalises():
    recipe = presets.IMAGENET_PRESETS["cmt_ti"]
    images = tf.constant(np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3)), tf.float32)
    labels = tf.constant([0, 1, 2, 3, 4, 5, 6, 7])
    x, y = augment.BatchAugment(recipe, 10, seed=3)(images, labels)
    assert x.shape == (8, 32, 32, 3) and y.shape == (8, 10)
    np.testing.assert_allclose(tf.reduce_sum(y, axis=1).numpy(), 1.0, rtol=1e-5)
    plain = recipe.replace(randaugment_magnitude=0, mixup=0, cutmix=0, random_erasing=0, color_jitter=0)
    x, y = augment.BatchAugment(plain, 10)(images, labels)
    np.testing.assert_allclose(y.numpy(), tf.one_hot(labels, 10).numpy())
    np.testing.assert_allclose(x.numpy(), augment.normalize(images).numpy(), rtol=1e-6)


def _timm_erased_fractions(n, size, rng, min_area=0.02, max_area=1 / 3, min_aspect=0.3):
    """Erased area fractions of timm's RandomErasing procedure (probability 1), drawn in plain Python."""
    fractions = []
    for _ in range(n):
        fraction = 0.0
        for _ in range(10):
            area = rng.uniform(min_area, max_area) * size * size
            aspect = np.exp(rng.uniform(np.log(min_aspect), -np.log(min_aspect)))
            h, w = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
            if w < size and h < size:
                fraction = h * w / (size * size)
                break
        fractions.append(fraction)
    return np.array(fractions)


def test_random_erasing_matches_the_official_recipes_statistics():
    size, n = 32, 4000
    images = tf.fill([n, size, size, 3], 100.0)  # a value N(0, 1) noise never takes
    erased = augment.random_erasing(images, 1.0, seed=7).numpy() != 100.0
    fractions = erased.mean(axis=(1, 2, 3))
    reference = _timm_erased_fractions(20000, size, np.random.default_rng(0))
    assert abs(fractions.mean() - reference.mean()) < 0.006, (fractions.mean(), reference.mean())
    assert abs(fractions.std() - reference.std()) < 0.006, (fractions.std(), reference.std())
    # One axis-aligned box per image, the same in every channel.
    for image in erased[:200]:
        rows, cols = np.where(image[..., 0])
        assert (image[..., 0] == image[..., 1]).all()
        if rows.size:
            assert image[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1, 0].all()
    noise = augment.random_erasing(images, 1.0, seed=8).numpy()
    noise = noise[noise != 100.0]
    assert abs(noise.mean()) < 0.01 and abs(noise.std() - 1.0) < 0.01  # per-pixel N(0, 1) fill
    some = augment.random_erasing(images, 0.25, seed=9).numpy() != 100.0
    assert abs(some.any(axis=(1, 2, 3)).mean() - 0.25 * (reference > 0).mean()) < 0.025  # the probability


def test_normalize_matches_keras_cmt_preprocess_input():
    import keras_cmt

    images = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(
        augment.normalize(images).numpy(), np.asarray(keras_cmt.preprocess_input(images)), rtol=1e-5, atol=1e-5
    )


# ----------------------------------------------------------------------------------------------------- data


def test_digits_is_a_stratified_held_out_split():
    source = data.digits_source()
    assert (source.num_train, source.num_val, source.num_classes) == (1437, 360, 10)
    train_labels = np.array([int(y) for _, y in source.train_fn(None)])
    val_labels = np.array([int(y) for _, y in source.val_fn()])
    assert np.bincount(val_labels).min() >= 34 and np.bincount(val_labels).max() <= 38
    assert len(train_labels) == 1437


def test_the_held_out_split_depends_on_split_seed_not_on_the_training_seed():
    def val_images(**kwargs):
        return np.stack([x.numpy() for x, _ in data.resolve_source("digits", **kwargs).val_fn()])

    np.testing.assert_array_equal(val_images(seed=0), val_images(seed=5))
    assert not np.array_equal(val_images(split_seed=0), val_images(split_seed=1))


@pytest.mark.parametrize("pipelines", [1, 2])
def test_validation_counts_every_image_once_on_every_pipeline_split(pipelines):
    source = data.digits_source()
    global_batch = 64
    steps = data.validation_steps(source, global_batch)
    total_weight, seen = 0.0, 0
    for pid in range(pipelines):
        ctx = tf.distribute.InputContext(
            num_input_pipelines=pipelines, input_pipeline_id=pid, num_replicas_in_sync=pipelines
        )
        ds = data.val_dataset(source, 32, 1.0, global_batch, ctx)
        for x, y, w in ds.take(steps):
            assert x.shape == (global_batch // pipelines, 32, 32, 3)
            total_weight += float(tf.reduce_sum(w))
            seen += 1
    assert seen == steps * pipelines
    assert total_weight == source.num_val


def test_folder_skips_and_counts_non_images_and_splits_by_class(tmp_path):
    n = helpers.make_image_folder(str(tmp_path))
    source = data.resolve_source(str(tmp_path), val_fraction=0.25)
    assert source.class_names == ["bright", "dark"]
    assert source.skipped_files == 1  # the text file; the truncated JPEG passes the scan, tf.data drops it
    assert source.num_train + source.num_val == n + 1
    recipe = presets.SMALL_DATA_PRESET.replace(image_size=32)
    batches = list(data.train_dataset(source, recipe, 4).take(8))
    assert all(x.shape == (4, 32, 32, 3) for x, _ in batches)


def test_folder_with_train_and_val_subfolders(tmp_path):
    helpers.make_image_folder(str(tmp_path / "train"), per_class=4, corrupt=False)
    helpers.make_image_folder(str(tmp_path / "val"), per_class=2, corrupt=False)
    source = data.resolve_source(str(tmp_path))
    assert (source.num_train, source.num_val, source.num_classes) == (8, 4, 2)


def test_bad_datasets_are_one_line_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a_class").mkdir()
    with pytest.raises(data.DatasetError, match=r"no images found") as e:
        data.resolve_source(str(tmp_path / "empty"))
    assert "\n" not in str(e.value)
    with pytest.raises(data.DatasetError, match=r"unknown dataset") as e:
        data.resolve_source("no_such_dataset_xyz")
    assert "\n" not in str(e.value)
    with pytest.raises(data.DatasetError, match=r"no such folder"):
        data.resolve_source(str(tmp_path / "missing"))


# ------------------------------------------------------------------------------------------------ callbacks


def test_trim_metrics_csv_keeps_epochs_before_the_resume_point(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,loss,val_accuracy\n0,2.0,0.1\n1,1.5,0.2\n2,1.2,0.3\n3,1.1,0.4\n2,1.2")
    callbacks.trim_metrics_csv(str(path), 2)
    assert [r["epoch"] for r in callbacks.read_metrics_csv(str(path))] == [0, 1]


def test_read_metrics_csv_keeps_a_row_with_an_na_cell(tmp_path):
    """MetricsCSV writes NA for a metric an epoch lacks: that cell is absent, the row and its timings stay."""
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,loss,val_accuracy,wall_train_s\n0,2.0,NA,12.5\n1,1.5,0.2,11.0\n2,1.2")
    rows = callbacks.read_metrics_csv(str(path))
    assert rows[:2] == [
        {"epoch": 0, "loss": 2.0, "wall_train_s": 12.5},
        {"epoch": 1, "loss": 1.5, "val_accuracy": 0.2, "wall_train_s": 11.0},
    ]
    assert [t.get("wall_train_s") for t in callbacks.epoch_timings(str(path))] == [12.5, 11.0, None]


def test_atomic_backup_restores_weights_optimizer_and_epoch(tmp_path):
    def make():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        model.compile(optimizer=keras.optimizers.AdamW(1e-2), loss="mse")
        return model

    x, y = np.ones((8, 3), "float32"), np.zeros((8, 2), "float32")
    model = make()
    backup = callbacks.AtomicBackup(str(tmp_path / "backup"), delete_checkpoint=False)
    assert backup.initial_epoch(default=7) == 7  # nothing backed up yet

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                self.model.stop_training = True

    model.fit(x, y, epochs=5, batch_size=4, verbose=0, callbacks=[backup, Stop()])
    files = sorted(os.listdir(tmp_path / "backup"))
    assert files == ["epoch-000002-batch-000000000.weights.h5", "training_metadata.json"]  # no temp files left
    metadata = callbacks.read_backup_metadata(str(tmp_path / "backup"))
    assert metadata["epoch"] == 2
    restored = make()
    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if not seen:
                seen.append(
                    (epoch, int(self.model.optimizer.iterations.numpy()), [w.copy() for w in self.model.get_weights()])
                )

    last = tmp_path / "checkpoints" / "last.weights.h5"
    again = callbacks.AtomicBackup(str(tmp_path / "backup"), last_copy=str(last))
    assert again.initial_epoch() == 2
    restored.fit(
        x, y, epochs=3, batch_size=4, verbose=0, initial_epoch=again.initial_epoch(), callbacks=[again, Record()]
    )
    epoch, iterations, weights = seen[0]
    assert epoch == 2 and iterations == 4
    for a, b in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not os.path.exists(tmp_path / "backup")  # deleted once training finished
    # ... and the last epoch's weights stay as last.weights.h5, whole, with nothing beside them.
    assert os.listdir(tmp_path / "checkpoints") == ["last.weights.h5"]
    final = make()
    final.load_weights(str(last))
    for a, b in zip(final.get_weights(), restored.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_best_weights_are_written_only_for_a_better_epoch(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    path = tmp_path / "best.weights.h5"
    best = callbacks.BestWeights(str(path), monitor="val_accuracy", initial_value_threshold=0.5)
    best.set_model(model)
    best.on_epoch_end(0, {"val_accuracy": 0.4})  # not better than the epochs before the resume
    best.on_train_end()
    assert not path.exists()
    best.on_epoch_end(1, {"val_accuracy": 0.6})
    # The weights of the epoch's end, even when they change before the file is on disk.
    model.layers[0].kernel.assign(np.ones((3, 2)))
    best.on_train_end()
    written = path.stat().st_mtime_ns
    best.on_epoch_end(2, {"val_accuracy": 0.6})  # equal is not better
    best.on_train_end()
    reloaded = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    reloaded.load_weights(str(path))  # the weights alone: no optimizer state in the file
    assert not np.array_equal(reloaded.layers[0].kernel.numpy(), np.ones((3, 2)))
    assert path.stat().st_mtime_ns == written and os.listdir(tmp_path) == ["best.weights.h5"]
    best.on_epoch_end(3, {"val_accuracy": 0.7})
    best.on_train_end()
    reloaded.load_weights(str(path))
    np.testing.assert_array_equal(reloaded.layers[0].kernel.numpy(), np.ones((3, 2)))
    assert best.best == 0.7


def test_a_background_write_that_fails_fails_the_run_at_the_next_epoch_end(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    (tmp_path / "not_a_folder").write_text("")
    best = callbacks.BestWeights(str(tmp_path / "not_a_folder" / "best.weights.h5"), monitor="val_accuracy")
    best.set_model(model)
    best.on_epoch_end(0, {"val_accuracy": 0.4})  # returns before the write fails ...
    with pytest.raises(OSError, match="not_a_folder"):
        best.on_epoch_end(1, {"val_accuracy": 0.6})  # ... which the training thread sees at the next one
    assert os.listdir(tmp_path) == ["not_a_folder"]


def test_when_fit_raises_the_pending_writes_finish_first_and_its_error_goes_on(tmp_path):
    import time

    def slow_write(name):
        def write():
            time.sleep(0.3)
            (tmp_path / name).write_text("written")

        return write

    with pytest.raises(KeyboardInterrupt):
        with callbacks.epoch_end_writes_finished():
            callbacks.EPOCH_END_WRITES.submit(slow_write("backup"))
            raise KeyboardInterrupt  # Ctrl-C during the next epoch
    assert (tmp_path / "backup").read_text() == "written"  # finished before the lock could be released

    def failing_write():
        raise OSError("disk gone")

    with pytest.raises(RuntimeError, match="bad data"):  # the first error, not the write's
        with callbacks.epoch_end_writes_finished():
            callbacks.EPOCH_END_WRITES.submit(failing_write)
            raise RuntimeError("bad data")
    callbacks.EPOCH_END_WRITES.wait()  # nothing left pending


def test_the_best_checkpoint_is_written_before_the_backup_of_its_epoch(tmp_path, monkeypatch):
    order = []
    write_bytes = callbacks.storage.write_bytes
    monkeypatch.setattr(
        callbacks.storage,
        "write_bytes",
        lambda path, data: order.append(os.path.basename(path)) or write_bytes(path, data),
    )
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    best = callbacks.BestWeights(str(tmp_path / "best.weights.h5"), monitor="val_accuracy")
    backup = callbacks.AtomicBackup(str(tmp_path / "backup"), delete_checkpoint=False)
    for callback in (best, backup):
        callback.set_model(model)
    for epoch in range(2):
        best.on_epoch_end(epoch, {"val_accuracy": 0.5 + epoch})
        backup.on_epoch_end(epoch, {"val_accuracy": 0.5 + epoch})
    backup.on_train_end()
    weights = [name for name in order if name.endswith(".h5")]
    assert weights == [
        "best.weights.h5",
        "epoch-000001-batch-000000000.weights.h5",
        "best.weights.h5",
        "epoch-000002-batch-000000000.weights.h5",
    ]
    assert order.index("training_metadata.json") > order.index("epoch-000001-batch-000000000.weights.h5")


def test_atomic_save_leaves_only_the_target(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    callbacks.atomic_save(model, str(tmp_path / "m.weights.h5"))
    callbacks.atomic_save(model, str(tmp_path / "m.keras"))
    assert sorted(os.listdir(tmp_path)) == ["m.keras", "m.weights.h5"]
    assert keras.saving.load_model(str(tmp_path / "m.keras")).count_params() == model.count_params()


def test_exports_leave_the_optimizer_state_out(tmp_path):
    """Keras writes a compiled model's optimizer slots into save_weights/save; the exports and best checkpoint
    (include_optimizer=False) hold the layers only and load back to the same outputs."""
    import h5py

    model = keras.Sequential([keras.Input((256,)), keras.layers.Dense(256), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.AdamW(1e-2), loss="mse")
    model.fit(np.ones((8, 256), "float32"), np.zeros((8, 2), "float32"), epochs=1, verbose=0)
    callbacks.atomic_save(model, str(tmp_path / "with.weights.h5"))
    callbacks.atomic_save(model, str(tmp_path / "without.weights.h5"), include_optimizer=False)
    callbacks.atomic_save(model, str(tmp_path / "without.keras"), include_optimizer=False)
    with h5py.File(tmp_path / "with.weights.h5") as f:
        assert "optimizer" in f
    with h5py.File(tmp_path / "without.weights.h5") as f:
        assert "optimizer" not in f and "layers" in f
    assert os.path.getsize(tmp_path / "without.weights.h5") < 0.5 * os.path.getsize(tmp_path / "with.weights.h5")
    x = np.random.default_rng(0).standard_normal((4, 256)).astype("float32")
    fresh = keras.Sequential([keras.Input((256,)), keras.layers.Dense(256), keras.layers.Dense(2)])
    fresh.load_weights(str(tmp_path / "without.weights.h5"))
    np.testing.assert_allclose(fresh.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    loaded = keras.saving.load_model(str(tmp_path / "without.keras"))
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert model.optimizer is not None  # the training model itself is untouched


def test_weights_h5_bytes_pins_the_keras_internals_it_uses(tmp_path):
    """callbacks.weights_h5_bytes builds a .weights.h5 in memory through two private names of Keras' saving_lib
    (H5IOStore, _save_state), so that a full disk is Python's clean OSError rather than HDF5's crash. Without them
    it falls back to save_weights on disk: this test fails first, on a Keras release that moves them. The bytes are
    what save_weights writes: they load back to the same outputs."""
    from keras.src.saving import saving_lib

    assert hasattr(saving_lib, "H5IOStore") and hasattr(saving_lib, "_save_state"), keras.__version__
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(4), keras.layers.BatchNormalization(), keras.layers.Dense(2)]
    )
    model(np.ones((2, 8), "float32"))
    data_bytes = callbacks.weights_h5_bytes(model)
    assert data_bytes is not None and bytes(data_bytes[:8]) == b"\x89HDF\r\n\x1a\n"
    path = tmp_path / "memory.weights.h5"
    path.write_bytes(bytes(data_bytes))
    fresh = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(4), keras.layers.BatchNormalization(), keras.layers.Dense(2)]
    )
    fresh.load_weights(str(path))
    x = np.random.default_rng(0).standard_normal((3, 8)).astype("float32")
    np.testing.assert_allclose(fresh.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_checkpoint_saves_build_no_throwaway_layers(monkeypatch):
    """Keras 3.15's saver caches its attribute skip sets under one name and looks them up under another, so each
    save built a throwaway Layer per layer saved (0.2 of CMT-Ti's 0.7 s per backup). After the first save, our
    saves build none, and a skip set primed by us is the one Keras computes."""
    from keras.src.backend.common import global_state
    from keras.src.saving import saving_lib

    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4), keras.layers.Dense(2)])
    model.compile(optimizer="adamw", loss="mse")
    model.optimizer.build(model.trainable_variables)
    callbacks.weights_h5_bytes(model)
    built = []
    original_init = keras.layers.Layer.__init__

    def counting_init(self, *args, **kwargs):
        built.append(type(self).__name__)
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(keras.layers.Layer, "__init__", counting_init)
    callbacks.weights_h5_bytes(model)
    assert built == []
    primed = global_state.get_global_attribute("saving_attr_skiplist_Layer")
    monkeypatch.setattr(keras.layers.Layer, "__init__", original_init)
    global_state.set_global_attribute("saving_attr_skiplist_Layer", None)
    assert primed == saving_lib.get_attr_skipset("Layer")


# ------------------------------------------------------------------------------------------ decompression bombs


def _encoded(image, fmt):
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, fmt)
    return buffer.getvalue()


def _png_declaring(width, height):
    """A real 2x2 PNG whose IHDR (and its CRC) declares width x height pixels."""
    import struct
    import zlib

    data = bytearray(_encoded(np.zeros((2, 2, 3), np.uint8), "PNG"))
    chunk = bytes(data[12:16]) + struct.pack(">II", width, height) + bytes(data[24:29])
    data[12:29] = chunk
    data[29:33] = struct.pack(">I", zlib.crc32(chunk))
    return bytes(data)


def test_declared_pixels_reads_each_format_header():
    image = np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    for fmt in ("JPEG", "PNG", "GIF", "BMP"):
        assert int(augment.declared_pixels(tf.constant(_encoded(image, fmt)))) == 37 * 53, fmt
    assert int(augment.declared_pixels(tf.constant(b"not an image at all"))) == 0
    assert int(augment.declared_pixels(tf.constant(_png_declaring(40000, 30000)))) == 40000 * 30000


def test_pipelines_skip_a_decompression_bomb_before_decoding_it():
    good = _encoded(np.full((48, 64, 3), 100, np.uint8), "PNG")
    encoded = tf.data.Dataset.from_tensor_slices([good, _png_declaring(40000, 30000), good])
    for transform in (
        lambda e: augment.decode_random_resized_crop(e, 32),
        lambda e: augment.center_crop(augment.decode(e), 32, 1.0),
    ):
        images = list(encoded.map(transform).ignore_errors())
        assert len(images) == 2 and all(tuple(i.shape) == (32, 32, 3) for i in images)
    with pytest.raises(tf.errors.InvalidArgumentError, match="decompression-bomb limit"):
        augment.decode(tf.constant(_png_declaring(40000, 30000)))


def test_pipelines_run_without_tf_datas_autotuning_thread():
    """Deleting an iterator waits for its autotuning thread's sleep (up to a minute): Keras deletes the training
    iterator when `fit` returns and the validation iterator at every evaluation, so neither pipeline may have one."""
    source = data.digits_source()
    recipe = presets.SMALL_DATA_PRESET.replace(image_size=32)
    for deterministic in (False, True):
        train = data.train_dataset(source, recipe, 8, seed=0, deterministic=deterministic)
        assert train.options().autotune.enabled is False
    val = data.val_dataset(source, 32, 1.0, 8)
    assert val.options().autotune.enabled is False
    x, _ = next(iter(train))  # and they still produce batches
    assert x.shape == (8, 32, 32, 3)


def test_the_wait_after_the_last_epoch_is_timed_and_a_long_one_is_a_stall():
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    y = keras.utils.to_categorical(np.arange(16) % 2, 2)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("sgd", "categorical_crossentropy")
    clock = callbacks.FitExitClock()
    assert clock.since_train_end() == {}  # training has not ended
    model.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[clock])
    timing = clock.since_train_end()
    assert set(timing) == {"wall_fit_exit_s", "cpu_fit_exit_s"} and all(v >= 0 for v in timing.values())
    rows = [{"epoch": "after the last", "wall_fit_exit_s": 45.0, "cpu_fit_exit_s": 0.2}]
    assert callbacks.stalls(rows) == [{"epoch": "after the last", "phase": "fit_exit", "wall_s": 45.0, "cpu_s": 0.2}]
    assert callbacks.stalls([{"epoch": "after the last", "wall_fit_exit_s": 45.0, "cpu_fit_exit_s": 40.0}]) == []


def test_metrics_csv_times_each_epoch_and_a_waiting_validation_shows_as_a_stall(tmp_path):
    import time

    class WaitBeforeValidation(keras.callbacks.Callback):
        """Sleeps where Keras replaces the validation iterator (after the last step, before validation)."""

        def on_test_begin(self, logs=None):
            if self.epoch == 1:
                time.sleep(3.0)

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = keras.utils.to_categorical(np.arange(32) % 2, 2)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("sgd", "categorical_crossentropy", metrics=["accuracy"])
    path = tmp_path / "metrics.csv"
    model.fit(
        x,
        y,
        validation_data=(x, y),
        epochs=3,
        batch_size=8,
        verbose=0,
        callbacks=[callbacks.MetricsCSV(str(path)), WaitBeforeValidation()],
    )
    assert path.read_text().splitlines()[0].split(",")[-4:] == list(callbacks.TIMING_KEYS)
    timings = callbacks.epoch_timings(str(path))
    assert [row["epoch"] for row in timings] == [0, 1, 2]
    assert all(row[key] >= 0 for row in timings for key in callbacks.TIMING_KEYS)
    assert timings[1]["wall_val_s"] >= 3.0 > timings[2]["wall_val_s"]
    found = [(s["epoch"], s["phase"]) for s in callbacks.stalls(timings, min_wall_s=2.5)]
    assert (1, "val") in found and (2, "val") not in found, timings


def test_the_final_metrics_come_from_the_last_epochs_validation_only_when_fit_ran_it():
    """Without EMA the run's final metrics are the last epoch's validation (the mirrored and storage tests check
    they equal a fresh evaluation of the saved model); a resumed fit that ran no epoch, or one that stopped
    early, evaluates again."""
    history = keras.callbacks.History()
    history.epoch = [7, 8, 9]
    history.history = {"val_accuracy": [0.5, 0.6, 0.75], "val_top5": [1.0, 1.0, 1.0], "val_loss": [2.0, 1.5, 1.25]}
    assert train._last_validation(history, 10) == {"accuracy": 0.75, "top5": 1.0, "loss": 1.25}
    assert train._last_validation(history, 11) is None  # stopped before the last epoch (TerminateOnNaN)
    assert train._last_validation(None, 10) is None  # every epoch was done before this resume
    history.history.pop("val_top5")
    assert train._last_validation(history, 10) is None


def test_a_finished_training_command_leaves_its_objects_to_the_process_exit(monkeypatch):
    """The interpreter's shutdown collected TensorFlow's and the traced step's objects one last time (2.4 s of the
    main job's training process): once `run` has returned, the command freezes them for the exit instead."""
    import gc

    monkeypatch.setattr(train, "run", lambda argv=None: None)
    gc.unfreeze()
    try:
        train.main(["train.py"])
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
