"""Command-line flags of `keras_cmt.training.train`, the `--config` file, and how they combine with the presets.

Precedence, lowest first: the preset (the variant's official ImageNet recipe, or the small-data preset for
`digits`), then the `--config` file (JSON or YAML, keys are flag names), then flags given on the command line.
"""

import json
import sys

from absl import app, flags

from keras_cmt.training import presets
from keras_cmt.training.keras_distribution import DISTRIBUTIONS
from keras_cmt.training.strategy import STRATEGIES
from keras_cmt.variants import VARIANTS

FLAGS = flags.FLAGS


class ConfigError(ValueError):
    """A bad `--config` file; the message is one line naming the file and key."""


def run_with_help(main, flags_module, doc):
    """`absl.app.run(main)`, with `--help` printing `doc` and the flags `flags_module` defines, then exiting 0.

    absl's own `--help` lists the flags of `sys.argv[0]`'s module (for a console script, its wrapper: none) and
    exits with status 1."""

    def parse(argv):
        if any(arg in ("-h", "-?", "--help", "--helpshort") for arg in argv[1:]):
            print(f"{(doc or '').strip()}\n\nflags:\n{FLAGS.module_help(flags_module)}")
            sys.exit(0)
        return app.parse_flags_with_usage(argv)

    app.run(main, flags_parser=parse)


def define_flags():
    if "model" in FLAGS:
        return
    flags.DEFINE_enum("model", "cmt_ti", list(VARIANTS), "CMT variant.")
    flags.DEFINE_string(
        "dataset",
        "digits",
        "'digits' (bundled, offline), a folder of class sub-folders, or a tfds "
        "name such as imagenet2012 or imagenette.",
    )
    flags.DEFINE_string("model_dir", None, "Where checkpoints, logs, metrics.csv, results.json and exports go.")
    flags.DEFINE_string(
        "weights",
        None,
        "Start from 'imagenet' or a .weights.h5/.pth file (fine-tuning); a "
        "checkpoint with another number of classes gets a new head.",
    )
    flags.DEFINE_string(
        "model_overrides",
        None,
        "JSON of keras_cmt.CMT arguments that change the variant's "
        "architecture, e.g. '{\"depths\": [1, 1, 1, 1]}' (small models for tests and experiments).",
    )
    flags.DEFINE_string("config", None, "A JSON or YAML file of flag values (a whole recipe).")
    flags.DEFINE_enum(
        "preset",
        "auto",
        ("auto",) + presets.PRESET_NAMES,
        "Recipe: auto = small_data for digits, else the variant's official ImageNet recipe.",
    )
    flags.DEFINE_integer("image_size", None, "Input height and width, a multiple of 32 (default: the preset's).")
    flags.DEFINE_integer("epochs", None, "Epochs (default: the preset's).")
    flags.DEFINE_integer("batch_size", None, "Global batch size over all replicas (default: the preset's).")
    flags.DEFINE_string("data_dir", None, "tfds data_dir.")
    flags.DEFINE_string("manual_dir", None, "tfds manual_dir (e.g. where the ImageNet tar files are).")
    flags.DEFINE_string("train_split", "train", "tfds training split.")
    flags.DEFINE_string("val_split", None, "tfds validation split (default: validation, else test).")
    flags.DEFINE_float("val_fraction", 0.2, "Held-out fraction per class for digits and for folders without val/.")
    flags.DEFINE_enum("strategy", "default", STRATEGIES, "tf.distribute strategy.")
    flags.DEFINE_string("tpu", None, "TPU name or grpc:// address, for --strategy=tpu ('local' on a TPU VM).")
    flags.DEFINE_integer(
        "num_cpu_devices",
        0,
        "With --strategy=mirrored and no GPU: split the CPU into this many "
        "logical devices (to try distribution on a laptop or in tests).",
    )
    flags.DEFINE_enum(
        "distribution",
        "none",
        DISTRIBUTIONS,
        "Keras' distribution API, on KERAS_BACKEND=jax: "
        "data_parallel over every device of every process, or model_parallel (data parallel, with the "
        "head's widest weights split over --model_parallel_size devices). Instead of --strategy.",
    )
    flags.DEFINE_integer(
        "model_parallel_size",
        2,
        "With --distribution=model_parallel: devices each split weight "
        "spans (the mesh's model axis; within one process).",
    )
    flags.DEFINE_string(
        "coordinator_address",
        None,
        "With --distribution and several processes: host:port of "
        "process 0, the same on every process (else KERAS_DISTRIBUTION_JOB_ADDRESSES).",
    )
    flags.DEFINE_integer(
        "num_processes",
        None,
        "With --distribution: the number of processes (hosts) of the run "
        "(else KERAS_DISTRIBUTION_NUM_PROCESSES; default 1).",
    )
    flags.DEFINE_integer(
        "process_id",
        None,
        "With --distribution and several processes: this process, 0 to "
        "num_processes - 1; 0 is the chief (else KERAS_DISTRIBUTION_PROCESS_ID).",
    )
    flags.DEFINE_bool(
        "deterministic",
        False,
        "The same batches on every run of a --seed: the input pipeline keeps "
        "its order and draws its random augmentations in sequence (slower input).",
    )
    flags.DEFINE_bool(
        "mixed_precision",
        False,
        "bfloat16 on TPU/CPU and under --distribution, float16 with loss scaling on GPU (tf.distribute).",
    )
    flags.DEFINE_bool("jit_compile", False, "Compile the train step with XLA.")
    flags.DEFINE_integer("steps_per_execution", 1, "Train steps per tf.function call.")
    flags.DEFINE_integer("steps_per_epoch", 0, "0: training examples // batch size.")
    flags.DEFINE_integer("freeze_epochs", 0, "Fine-tuning: train only the head for this many epochs, then all.")
    flags.DEFINE_integer("seed", 0, "Random seed (initialisation, shuffling, augmentation, drop path).")
    flags.DEFINE_integer(
        "split_seed",
        0,
        "Seed of the held-out split of digits and of folders without val/ "
        "(kept apart from --seed: every training seed is validated on the same images).",
    )
    flags.DEFINE_integer("shuffle_buffer", 0, "0: min(training examples, 10000).")
    flags.DEFINE_enum(
        "progress",
        "auto",
        ("auto", "bar", "epoch", "none"),
        "Keras' progress display: a bar, one "
        "line per epoch, or none; auto: a bar on a terminal, one line per epoch otherwise.",
    )
    flags.DEFINE_bool(
        "verbose",
        False,
        "Also show the libraries' log lines and warnings (TensorFlow's C++ logs, "
        "deprecations, keras_cmt's INFO lines), hidden by default.",
    )
    flags.DEFINE_bool(
        "overwrite",
        False,
        "Replace the run in model_dir (finished, interrupted or of another model) "
        "instead of refusing or resuming; unrelated files are never replaced.",
    )
    # Recipe fields; unset means the preset's value.
    flags.DEFINE_float("base_lr", None, "Base learning rate at lr_reference_batch (peak = base * batch / ref).")
    flags.DEFINE_integer("lr_reference_batch", None, "Batch size the base lr is given for (512 officially).")
    flags.DEFINE_float("min_lr", None, "Final learning rate of the cosine decay.")
    flags.DEFINE_float("warmup_lr", None, "Learning rate at the start of the warm-up.")
    flags.DEFINE_float("warmup_epochs", None, "Linear warm-up length in epochs.")
    flags.DEFINE_float("weight_decay", None, "AdamW weight decay (not on norms, biases, position biases).")
    flags.DEFINE_float("drop_path", None, "Stochastic depth rate.")
    flags.DEFINE_float("ema", None, "EMA momentum of the weights (0: off).")
    flags.DEFINE_float("label_smoothing", None, "Label smoothing.")
    flags.DEFINE_float("randaugment_magnitude", None, "RandAugment magnitude m, 0..10 (0: off).")
    flags.DEFINE_float("randaugment_magnitude_std", None, "Spread of each operation's magnitude (timm's mstd).")
    flags.DEFINE_integer("randaugment_ops", None, "RandAugment operations per image.")
    flags.DEFINE_float("mixup", None, "Mixup alpha (0: off).")
    flags.DEFINE_float("cutmix", None, "CutMix alpha (0: off).")
    flags.DEFINE_float("mix_switch_prob", None, "Chance that a batch gets CutMix instead of Mixup.")
    flags.DEFINE_float("random_erasing", None, "Random erasing probability per image.")
    flags.DEFINE_float("color_jitter", None, "Colour jitter strength (only without RandAugment, as in timm).")
    flags.DEFINE_float("crop_scale_min", None, "Smallest area fraction of the random resized crop.")
    flags.DEFINE_bool("hflip", None, "Random horizontal flips.")
    flags.DEFINE_float("crop_pct", None, "Eval centre crop: resize the short side to size / crop_pct.")

    flags.register_validator("batch_size", lambda v: v is None or v > 0, "--batch_size must be positive")
    flags.register_validator("epochs", lambda v: v is None or v > 0, "--epochs must be positive")
    flags.register_validator(
        "image_size", lambda v: v is None or (v > 0 and v % 32 == 0), "--image_size must be a positive multiple of 32"
    )
    flags.mark_flag_as_required("model_dir")


RECIPE_FIELDS = tuple(presets.Recipe.__dataclass_fields__)


def load_config_file(path):
    """Flag values from a JSON or YAML file (dict of flag name -> value)."""
    from keras_cmt.training import storage

    try:
        if not storage.exists(path):
            raise ConfigError(f"--config={path}: no such file")
        text = storage.read_text(path)
    except storage.tf.errors.OpError as e:
        raise ConfigError(f"--config={path}: cannot read: {e.message.splitlines()[0]}") from None
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            values = yaml.safe_load(text)
        else:
            values = json.loads(text)
    except Exception as e:  # noqa: BLE001 - any parse error becomes one line
        raise ConfigError(f"--config={path}: cannot parse: {str(e).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"--config={path}: expected a mapping of flag names to values")
    return values


def apply_config_file(flag_values=FLAGS):
    """Sets every flag named in `--config` that the command line did not set."""
    if not flag_values.config:
        return
    values = load_config_file(flag_values.config)
    for key, value in values.items():
        if key not in flag_values or key == "config":
            raise ConfigError(f"--config={flag_values.config}: unknown key {key!r}")
        if flag_values[key].present:
            continue  # the command line wins
        try:
            flag_values[key].parse(value)
        except (flags.IllegalFlagValueError, ValueError) as e:
            raise ConfigError(f"--config={flag_values.config}: bad {key}: {e}") from None
    try:
        flag_values.validate_all_flags()
    except flags.IllegalFlagValueError as e:
        raise ConfigError(f"--config={flag_values.config}: {e}") from None


def recipe_from_flags(flag_values=FLAGS):
    """The preset for (model, dataset, preset) with every recipe flag that has a value put over it."""
    recipe = presets.get_recipe(flag_values.model, flag_values.preset, flag_values.dataset)
    changes = {f: flag_values[f].value for f in RECIPE_FIELDS if f in flag_values and flag_values[f].value is not None}
    return recipe.replace(**changes)
