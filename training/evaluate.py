"""Top-1 / top-5 of a CMT model on a dataset split at a chosen resolution (`python -m keras_cmt.training.evaluate
--help`).

    python -m keras_cmt.training.evaluate --model_path=/tmp/cmt_digits/model.keras --dataset=digits
    python -m keras_cmt.training.evaluate --model=cmt_s --weights=cmt_small.pth --dataset=imagenet2012 --image_size=224

Uses the training pipeline's eval transform (resize the short side to size / crop_pct, bicubic, centre crop) and
counts every image of the split exactly once. With `--model_path` (a .keras file) the model's own input size is
used; with `--model` and `--weights` the model is built at `--image_size` and the weights loaded into it.
"""

import sys

from absl import flags, logging


flags.DEFINE_string("model_path", None, "A .keras model saved by keras_cmt.training.train.")
flags.DEFINE_string("model", "cmt_ti", "Variant to build when --weights is given.")
flags.DEFINE_string("model_overrides", None, "JSON of keras_cmt.CMT arguments (as in keras_cmt.training.train).")
flags.DEFINE_string("weights", None, "A .weights.h5 or official .pth to load into --model.")
flags.DEFINE_string("dataset", "digits", "'digits', a folder of class sub-folders, or a tfds name.")
flags.DEFINE_string("data_dir", None, "tfds data_dir.")
flags.DEFINE_string("manual_dir", None, "tfds manual_dir.")
flags.DEFINE_string(
    "split",
    None,
    "tfds split to evaluate (default: validation, else test). For digits and "
    "folders: the held-out split of --val_fraction, as in training.",
)
flags.DEFINE_float("val_fraction", 0.2, "As in keras_cmt.training.train, so that the held-out split is the same.")
flags.DEFINE_integer("split_seed", 0, "As in keras_cmt.training.train, so that the held-out split is the same.")
flags.DEFINE_integer("image_size", None, "Evaluation resolution (default: the model's input size).")
flags.DEFINE_float("crop_pct", None, "Centre-crop ratio (default 0.875; 1.0 for digits, as trained).")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_string("output", None, "Also write the results as JSON here.")
flags.DEFINE_bool("verbose", False, "Also show the libraries' log lines and warnings (hidden by default).")
FLAGS = flags.FLAGS


def _fail(message):
    sys.stderr.write(f"keras_cmt.training.evaluate: error: {message}\n")
    sys.exit(2)


def evaluate():
    from keras_cmt.training import data, storage

    for name in ("model_path", "weights", "data_dir", "output"):  # file:// URLs become local paths
        FLAGS[name].value = storage.normalize(FLAGS[name].value)
    if bool(FLAGS.model_path) == bool(FLAGS.weights):
        _fail("give either --model_path (a .keras file) or --weights (with --model)")
    for flag, path in (("--model_path", FLAGS.model_path), ("--weights", FLAGS.weights)):
        if path:
            try:
                storage.check_readable(path, flag)
            except storage.StorageError as e:
                _fail(str(e))
    try:
        source = data.resolve_source(
            FLAGS.dataset,
            FLAGS.data_dir,
            FLAGS.manual_dir,
            FLAGS.val_fraction,
            val_split=FLAGS.split,
            split_seed=FLAGS.split_seed,
        )
    except data.DatasetError as e:
        _fail(str(e))

    import keras

    import keras_cmt  # noqa: F401  (registers the layers for load_model)
    from keras_cmt.training import train

    if FLAGS.model_path:
        model = _load_model(FLAGS.model_path)
        size = model.input_shape[1]
        if FLAGS.image_size and FLAGS.image_size != size:
            _fail(
                f"--model_path takes {size}x{size} input; to evaluate at {FLAGS.image_size}, pass its weights "
                "with --weights and --model instead"
            )
    else:
        size = FLAGS.image_size or keras_cmt.VARIANTS[FLAGS.model].default_size
        model = train.build_model(FLAGS.model, size, source.num_classes, 0.0, FLAGS.model_overrides)
        try:
            with storage.local_copy(FLAGS.weights) as weights:
                keras_cmt.load_weights(model, weights)
        except Exception as e:  # noqa: BLE001 - a truncated or foreign file: h5py, zip and pickle errors alike
            _fail(f"--weights={FLAGS.weights}: cannot load it: {train._reason(e, FLAGS.weights)}")
    if model.output_shape[-1] != source.num_classes:
        _fail(f"the model has {model.output_shape[-1]} classes, {source.name} has {source.num_classes}")
    crop_pct = FLAGS.crop_pct or (1.0 if FLAGS.dataset == "digits" else 0.875)
    model.compile(
        loss=keras.losses.CategoricalCrossentropy(),
        weighted_metrics=[
            keras.metrics.CategoricalAccuracy(name="accuracy"),
            keras.metrics.TopKCategoricalAccuracy(k=min(5, source.num_classes), name="top5"),
        ],
    )
    ds = data.val_dataset(source, size, crop_pct, FLAGS.batch_size)
    steps = data.validation_steps(source, FLAGS.batch_size)
    metrics = model.evaluate(ds, steps=steps, return_dict=True, verbose=0)
    results = {
        "dataset": source.name,
        "images": source.num_val,
        "image_size": size,
        "crop_pct": crop_pct,
        "top1": float(metrics["accuracy"]),
        "top5": float(metrics["top5"]),
        "model": FLAGS.model_path or f"{FLAGS.model}:{FLAGS.weights}",
    }
    print(
        f"{results['model']} on {source.name} ({source.num_val} images, {size}x{size}, crop {crop_pct}): "
        f"top-1 {results['top1']:.4f}  top-5 {results['top5']:.4f}"
    )
    if FLAGS.output:
        storage.write_json(FLAGS.output, results)
    return results


def _load_model(path):
    """keras.saving.load_model, or one line naming the file and what is wrong with it (Keras says "File not found"
    for an existing file that is not a zip archive)."""
    import zipfile

    import keras

    from keras_cmt.training import storage, train

    with storage.local_copy(path) as local:
        if local.endswith(".keras") and not zipfile.is_zipfile(local):
            _fail(f"--model_path={path}: not a .keras model: not a zip archive (truncated, or another format)")
        try:
            return keras.saving.load_model(local, compile=False)
        except Exception as e:  # noqa: BLE001 - whatever Keras, zipfile or h5py raised: one line
            reason = train._reason(e, local)
            if "not found" in reason.lower():
                reason = "Keras cannot read it as a model (truncated, or another format)"
            _fail(f"--model_path={path}: cannot load it: {reason}")


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.INFO if FLAGS.verbose else logging.WARNING)
    evaluate()


def console_main():
    from keras_cmt.training.flags import run_with_help

    run_with_help(main, sys.modules[__name__], __doc__)


if __name__ == "__main__":
    console_main()
