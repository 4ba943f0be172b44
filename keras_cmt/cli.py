"""The `keras-cmt` command line (also `python -m keras_cmt`).

    keras-cmt predict IMAGE... [--model cmt_small] [--weights imagenet|PATH|none] [--top 5] [--size N]
    keras-cmt info [--model NAME ...]
    keras-cmt export-preset --model cmt_s|MODEL.keras [--weights imagenet|PATH|none] [--size N] [--overwrite] DIR
    keras-cmt export --model cmt_s|MODEL.keras --format litert|onnx|openvino|saved_model|torch [--output PATH] ...

`predict` decodes each image (JPEG/PNG/GIF/BMP), applies the official evaluation transform
(`keras_cmt.eval_transform`) at the model's input size and prints the top-k classes with their probabilities.
`--model` takes a variant name or a saved `.keras` model (a fine-tuned one, with `--labels` for its class names).
`info` prints the variant table: params counted from the built models (a few seconds per variant), GMACs from
`keras_cmt.VARIANTS` (counted from each variant's TensorFlow graph by the tests). `export-preset` writes a keras-hub
preset directory (`keras_cmt.hub.export_preset`; needs keras-hub). `export` writes the model in one of Keras'
export formats, checked in the runtime that reads it (`keras_cmt.tflite.export`). Any Keras backend.
Errors are one line on stderr and exit status 1.
"""

import argparse
import os
import sys

import numpy as np

from keras_cmt import quiet
from keras_cmt.model_loading import MODEL_HELP

PROG = "keras-cmt"


def _parser():
    parser = argparse.ArgumentParser(prog=PROG, description="CMT image classifiers for Keras.")
    common = argparse.ArgumentParser(add_help=False)
    quiet.add_verbose_argument(common)
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser(
        "predict",
        help="classify images with a CMT model",
        parents=[common],
        description="Classify images with the official evaluation transform.",
    )
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG/PNG/GIF/BMP files")
    predict.add_argument(
        "--model",
        default="cmt_small",
        help=f"{MODEL_HELP} (default: cmt_small)",
    )
    predict.add_argument(
        "--weights",
        default=None,
        help="'imagenet' (default for variants), a .weights.h5 or official .pth file, or 'none' "
        "(random weights; with a .keras model the default keeps its own weights)",
    )
    predict.add_argument("--top", type=_positive_int, default=5, help="how many classes to print (default 5)")
    predict.add_argument(
        "--size",
        type=_positive_int,
        default=None,
        help="input size for a variant, a multiple of 32 (default: the variant's, e.g. 224)",
    )
    predict.add_argument(
        "--labels",
        default=None,
        help="text file with one class name per line (default: ImageNet-1k names for 1000 classes, else class_<i>)",
    )
    predict.add_argument("--batch-size", type=_positive_int, default=16, help="images per forward pass")

    info = commands.add_parser(
        "info", parents=[common], help="print the variant table (params, GMACs, input size, top-1)"
    )
    info.add_argument(
        "--model",
        action="append",
        default=None,
        metavar="NAME",
        help="only these variants (repeatable; default: all four)",
    )

    export = commands.add_parser(
        "export-preset",
        parents=[common],
        help="write a keras-hub preset directory",
        description="Write a keras-hub preset (backbone, classifier, preprocessor) that "
        "keras_hub.models.ImageClassifier.from_preset loads after "
        "`import keras_cmt`.",
    )
    export.add_argument("out_dir", metavar="DIR", help="the preset directory to create")
    export.add_argument("--model", required=True, help=MODEL_HELP)
    export.add_argument(
        "--weights",
        default=None,
        help="'imagenet' (default for variants), a .weights.h5 or official .pth file, or 'none'; "
        "with a .keras model, optional weights to load onto it",
    )
    export.add_argument(
        "--size",
        type=_positive_int,
        default=None,
        help="input size for a variant, a multiple of 32 (default: the variant's)",
    )
    export.add_argument("--overwrite", action="store_true", help="replace DIR if it holds a keras-hub preset")

    files = commands.add_parser(
        "export",
        parents=[common],
        help="write the model as a LiteRT, ONNX, OpenVINO, SavedModel or torch file",
        description="Keras' model.export on the serving form (normalisations folded, ImageNet normalisation "
        "inside), the file checked in its runtime within 1e-4 of Keras before it is written.",
    )
    files.add_argument("--model", required=True, help=MODEL_HELP)
    files.add_argument(
        "--format",
        required=True,
        choices=("litert", "onnx", "openvino", "saved_model", "torch"),
        help="litert: .tflite (TensorFlow: with metadata and --quantize); onnx; openvino: .xml + "
        ".bin; saved_model: a folder; torch: a torch.export .pt2 (PyTorch backend)",
    )
    files.add_argument(
        "--weights",
        default=None,
        help="'imagenet' (default for variants), a .weights.h5 or official .pth file, or 'none'",
    )
    files.add_argument(
        "--size",
        type=_positive_int,
        default=None,
        help="input size for a variant, a multiple of 32 (default: the variant's)",
    )
    files.add_argument(
        "--input_range",
        default="0-255",
        choices=("0-255", "0-1", "normalized"),
        help="what the file takes: RGB in [0, 255] (default), [0, 1], or preprocess_input's output",
    )
    files.add_argument("--logits", action="store_true", help="output logits instead of softmax probabilities")
    files.add_argument("--no_fuse", action="store_true", help="export the training graph as it is")
    files.add_argument(
        "--quantize",
        default="none",
        choices=("none", "float16", "dynamic"),
        help="litert on TensorFlow only (int8 with calibration: python -m keras_cmt.tflite.convert)",
    )
    files.add_argument(
        "--output",
        default=None,
        help="the file (or SavedModel folder) to write; default: derived from --model and --format",
    )
    return parser


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _load_model(args, logits=False):
    from keras_cmt import model_loading

    saved = model_loading.is_saved_model(args.model)
    weights = args.weights if args.weights is not None or saved else "imagenet"
    return model_loading.load_model(args.model, weights=weights, size=args.size, logits=logits)


def _labels(args, classes):
    if args.labels:
        if not os.path.isfile(args.labels):
            raise ValueError(f"--labels {args.labels}: no such file.")
        with open(args.labels) as f:
            names = [line.strip() for line in f if line.strip()]
        if len(names) != classes:
            raise ValueError(f"--labels {args.labels}: {len(names)} names for a model with {classes} classes.")
        return names
    if classes == 1000:
        from keras_cmt.preprocessing import imagenet_class_index

        index = imagenet_class_index()
        return [f"{index[i][1]} ({index[i][0]})" for i in range(1000)]
    return [f"class_{i}" for i in range(classes)]


def _probabilities(outputs):
    """Softmax unless the model already returns probabilities (a .keras model may return logits)."""
    outputs = np.asarray(outputs, dtype="float64")
    if outputs.min() >= 0 and np.allclose(outputs.sum(axis=-1), 1.0, atol=1e-3):
        return outputs
    shifted = np.exp(outputs - outputs.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def predict(args, out=None):
    out = out or sys.stdout
    import keras

    from keras_cmt.image_transforms import eval_transform, load_image

    images = [load_image(path) for path in args.images]  # every file checked before the model is built
    model = _load_model(args)
    shape = tuple(model.inputs[0].shape[1:])
    if len(model.outputs) != 1 or len(model.outputs[0].shape) != 2:
        raise ValueError(f"--model {args.model}: predict needs a classifier (one (batch, classes) output).")
    channels_first = len(shape) == 3 and shape[0] == 3 and shape[-1] != 3
    height, width = shape[1:] if channels_first else shape[:2]
    if height != width or height is None:
        raise ValueError(f"--model {args.model}: predict needs a square input size; the model takes {shape}.")
    size = int(height)
    classes = int(model.outputs[0].shape[-1])
    labels = _labels(args, classes)
    top = min(args.top, classes)
    for start in range(0, len(images), args.batch_size):
        paths = args.images[start : start + args.batch_size]
        batch = np.stack([eval_transform(image, size) for image in images[start : start + args.batch_size]])
        if channels_first:
            batch = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
        probabilities = _probabilities(keras.ops.convert_to_numpy(model(batch, training=False)))
        for path, row in zip(paths, probabilities):
            print(path, file=out)
            for rank, index in enumerate(np.argsort(-row, kind="stable")[:top], start=1):
                print(f"  {rank:>2}. {row[index]:.4f}  {labels[index]}", file=out)
    return 0


def info(args, out=None):
    out = out or sys.stdout
    import keras_cmt

    names = [keras_cmt.get_variant(name).name for name in (args.model or keras_cmt.VARIANTS)]
    header = f"{'variant':<8} {'builder':<9} {'params':>12} {'GMACs':>7} {'input':>7} {'top-1':>6}  weights"
    print(header, file=out)
    print("-" * len(header), file=out, flush=True)
    for name in dict.fromkeys(names):
        variant = keras_cmt.VARIANTS[name]
        model = keras_cmt.build_model(name)
        gmacs = variant.macs / 1e9
        size = f"{variant.default_size}^2"
        print(
            f"{name:<8} {variant.builder_name:<9} {model.count_params():>12,} {gmacs:>7.3f} {size:>7} "
            + (f"{variant.top1:>6.1f}  {variant.weights_file}" if variant.released else f"{'-':>6}  (none released)"),
            file=out,
            flush=True,
        )
        del model
    print(
        "GMACs: convolutions and matrix products at the default input, batch 1; params include BatchNorm "
        "statistics; top-1: ImageNet-1k, official release weights.",
        file=out,
    )
    return 0


def export_preset(args, out=None):
    out = out or sys.stdout
    try:
        from keras_cmt import hub
    except ImportError as e:
        raise ValueError(f"export-preset: {e}") from None
    weights = args.weights
    if weights is None and not args.model.endswith(".keras"):
        weights = "imagenet"
    path = hub.export_preset(
        args.model,
        args.out_dir,
        weights=None if weights == "none" else weights,
        size=args.size,
        overwrite=args.overwrite,
    )
    print(f"wrote the keras-hub preset {path}: {', '.join(sorted(os.listdir(path)))}", file=out)
    print(
        f"load it with `import keras_cmt, keras_hub; keras_hub.models.ImageClassifier.from_preset({path!r})`",
        file=out,
        flush=True,
    )
    return 0


def export_file(args, out=None):
    out = out or sys.stdout
    from keras_cmt.tflite import export

    export.check_format(args.format)  # a format this backend cannot write is refused before the model is built
    if args.quantize != "none" and args.format != "litert":
        raise ValueError(f"--quantize {args.quantize} applies to --format litert only")
    from keras_cmt.model_loading import output_stem

    output = args.output or output_stem(args.model, args.size) + (export.FORMATS[args.format][1] or "_saved_model")
    export.check_output(args.format, output)
    model = _load_model(args, logits=args.logits)
    options = {"quantize": args.quantize} if args.quantize != "none" else {}
    error = export.export(model, output, args.format, input_range=args.input_range, fuse=not args.no_fuse, **options)
    held = f"{args.quantize}-quantized, not held to 1e-4" if args.quantize != "none" else "within 1e-4"
    print(
        f"wrote {os.path.abspath(output)} ({args.format}, checked in {export.RUNTIMES[args.format]}: max abs "
        f"{error:.2g} from Keras, {held})",
        file=out,
        flush=True,
    )
    return 0


def main(argv=None):
    """Runs the command line; returns the exit status (0, 1 for errors, 2 for usage errors)."""
    args = _parser().parse_args(argv)
    try:
        commands = {"predict": predict, "info": info, "export-preset": export_preset, "export": export_file}
        return commands[args.command](args)
    except (ValueError, OSError, RuntimeError) as e:
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
