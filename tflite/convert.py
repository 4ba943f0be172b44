"""Convert a CMT to a `.tflite` file for Android (XNNPACK / GPU delegates), with metadata.

    python -m keras_cmt.tflite.convert --model cmt_ti [--weights imagenet|PATH] [--image_size N]
        [--quantize none|float16|dynamic|int8] [--representative_data DATASET] [--output PATH]
    python -m keras_cmt.tflite.convert --model path/to/trained.keras --quantize int8 --representative_data digits

What the file holds: a static batch-1 graph of builtin TFLite ops only (no Select TF ops) whose input is
RGB in [0, 255] (float32, or int8/uint8 with `--io_type`). The ImageNet per-channel normalisation of
`keras_cmt.preprocess_input` is folded into the graph, because MediaPipe's ImageClassifier refuses
per-channel normalisation in the metadata; the metadata then declares mean 0 / std 1, the label file
and the image size, so MediaPipe's ImageClassifier loads the file with no extra code and a LiteRT
`CompiledModel` app knows what to feed. `--quantize float16` files are also marked for fp16 inference
(flatbuffer metadata "reduced_precision_support" = "fp16accfp16"; see `quantization.mark_fp16_inference`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

import numpy as np

from keras_cmt import atomic_files, model_loading, quiet
from keras_cmt.tflite import metadata as metadata_lib
from keras_cmt.tflite import quantization


class ConversionError(RuntimeError):
    """The TFLite converter could not turn the model into builtin ops."""


def _first_line(e: BaseException) -> str:
    for line in str(e).splitlines():
        line = line.strip()
        if line:
            return line
    return type(e).__name__


def check_output_path(path: str) -> str:
    """Fails early (before a long conversion) when `path` cannot be written."""
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    if os.path.isdir(path):
        raise ValueError(f"output path is a directory: {path}")
    if not os.path.isdir(folder):
        raise ValueError(f"output folder does not exist: {folder}")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"output folder is not writable: {folder}")
    return path


def write_atomically(path: str, data: bytes) -> str:
    """Writes to a temporary file beside `path`, then renames: readers never see half a model."""
    return atomic_files.write_bytes(check_output_path(path), data)


def serving_function(model, input_range: str = "0-255"):
    """A batch-1 tf.function: RGB image in `input_range` -> the model's output, normalisation inside."""
    import tensorflow as tf

    import keras_cmt

    height, width, channels = model.input_shape[1:]
    if None in (height, width) or channels != 3:
        raise ValueError(f"the model needs a static (H, W, 3) input shape, got {model.input_shape[1:]}")
    metadata_lib.normalization_for_metadata(input_range, (0.0,), (1.0,))  # validates input_range
    output_name = "probability" if model_loading.ends_in_softmax(model) else "logits"

    @tf.function(input_signature=[tf.TensorSpec([1, height, width, 3], tf.float32, name="image")])
    def serve(image):
        if input_range == "0-255":
            x = keras_cmt.preprocess_input(image)
        elif input_range == "0-1":
            x = keras_cmt.preprocess_input(image * 255.0)
        else:
            x = image
        return {output_name: model(x, training=False)}

    return serve


def to_tflite(
    model,
    *,
    quantize: str = "none",
    representative_images=None,
    io_type: str = "float32",
    input_range: str = "0-255",
    int8_ops: str = "xnnpack",
) -> bytes:
    """The flatbuffer bytes of `model` (a keras.Model) converted with builtin ops only."""
    import tensorflow as tf

    quantization.check_mode(quantize, io_type, representative_images is not None and len(representative_images) > 0)
    if quantize == "int8":
        quantization.check_int8_ops(int8_ops, io_type)
    serve = serving_function(model, input_range)
    # A concrete function given without its trackable object is frozen (variables become constants).
    # With the object, or through from_keras_model / from_saved_model, TF 2.21 either keeps
    # VAR_HANDLE/READ_VARIABLE ops that no delegate runs or takes ~5x longer for the same graph.
    converter = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()])
    try:
        if quantize == "int8" and int8_ops == "xnnpack":
            with quiet.native_stderr_filtered():  # the MLIR quantizer's settings line, LiteRT's INFO lines
                return quantization.quantize_int8_for_xnnpack(converter, representative_images)
        quantization.configure(converter, quantize, representative_images, io_type)
        with quiet.native_stderr_filtered():
            data = converter.convert()
        if quantize == "dynamic":
            data = quantization.quantize_weights_for_xnnpack(data)
        elif quantize == "float16":
            data = quantization.mark_fp16_inference(data)
        return data
    except Exception as e:
        unsupported = sorted(set(re.findall(r"'(tf\.\w+)' op is neither a custom op nor a flex op", str(e))))
        reason = (
            f"{', '.join(unsupported)} ha{'ve' if len(unsupported) > 1 else 's'} no builtin TFLite op "
            "(Select TF ops are not allowed)"
            if unsupported
            else _first_line(e)
        )
        raise ConversionError(f"the model could not be converted to builtin TFLite ops: {reason}") from e


def default_labels(num_classes: int):
    """ImageNet class names for 1000 outputs (keras_cmt's bundled class index), else '0', '1', ..."""
    if num_classes == 1000:
        import importlib.resources

        index = json.loads(
            importlib.resources.files("keras_cmt").joinpath("data/imagenet_class_index.json").read_text()
        )
        return [index[str(i)][1] for i in range(1000)]
    return [str(i) for i in range(num_classes)]


def read_labels(path: str):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"label file not found: {path}")
    with open(path, encoding="utf-8") as f:
        labels = [line.rstrip("\r\n") for line in f]
    while labels and not labels[-1]:
        labels.pop()
    return labels


def precision_description(marker: str) -> str:
    """The sentence of the metadata description that says what a "reduced_precision_support" marker does."""
    if marker == quantization.FP16_INFERENCE_MARKER:
        return (
            "Float16 weights; marked for fp16 inference (reduced_precision_support=fp16accfp16): XNNPACK "
            "computes in fp16 on CPUs with ARMv8.2 FP16 arithmetic and in fp32 elsewhere."
        )
    return (
        f"Marked reduced_precision_support={marker}: XNNPACK computes in fp32 (it takes fp16 only with "
        f"{quantization.FP16_INFERENCE_MARKER})."
    )


def add_metadata(
    tflite_bytes: bytes,
    model,
    *,
    labels=None,
    input_range: str = "0-255",
    name=None,
    description=None,
    version="1",
    author="keras_cmt",
    license="Apache-2.0",
) -> bytes:
    """Embeds image-classifier metadata and the label file into a converted model."""
    import keras_cmt

    num_classes = int(model.output_shape[-1])
    labels = list(labels) if labels is not None else default_labels(num_classes)
    if len(labels) != num_classes:
        raise ValueError(f"{len(labels)} labels for a model with {num_classes} outputs")
    mean, std, lo, hi = metadata_lib.normalization_for_metadata(
        input_range, keras_cmt.IMAGENET_MEAN, keras_cmt.IMAGENET_STD
    )
    height, width = model.input_shape[1:3]
    probability = model_loading.ends_in_softmax(model)
    if not description:
        description = (
            f"CMT image classifier ({model.name}), {height}x{width} RGB input, {num_classes} classes; "
            f"outputs {'softmax probabilities' if probability else 'logits'}."
        )
        precision = quantization.reduced_precision_support(tflite_bytes)
        if precision is not None:
            description += " " + precision_description(precision)
    meta = metadata_lib.build_image_classifier_metadata(
        name=name or f"{model.name} image classifier",
        description=description,
        version=str(version),
        author=author,
        license=license,
        num_classes=num_classes,
        label_file="labels.txt",
        mean=mean,
        std=std,
        input_min=lo,
        input_max=hi,
        output_is_probability=probability,
    )
    return metadata_lib.populate(tflite_bytes, meta, {"labels.txt": metadata_lib.labels_text(labels)})


# The relative cost of a projection multiply-add in a `dynamic` file: XNNPACK's fp32 GEMM rate over its int8-weight
# GEMM rate, as measured in benchmarks/RESULTS.md ("XNNPACK fp32 GEMM" and "int8-weight GEMM" rows).
DYNAMIC_PROJECTION_COST = 216 / 768


def convert(
    model,
    output=None,
    *,
    weights=None,
    image_size=None,
    classes=None,
    quantize: str = "none",
    representative_data=None,
    num_calibration_images: int = 200,
    io_type: str = "float32",
    labels=None,
    with_metadata: bool = True,
    input_range: str = "0-255",
    logits: bool = False,
    data_dir=None,
    int8_ops: str = "xnnpack",
    fuse: bool = True,
) -> bytes:
    """Converts a CMT (variant name, `.keras` file or keras.Model) and returns the `.tflite` bytes.

    With `fuse` (the default), a model built by keras_cmt is first passed through
    `keras_cmt.fuse_for_inference` (normalisations folded into convolutions: about 20% fewer ops, same outputs;
    the key-side attention form for float files only).

    `representative_data` is a dataset name/folder/file (see `keras_cmt.tflite.representative_data`) or an
    array of RGB images in [0, 255] (mapped to `input_range` here). With `output`, the file is written
    atomically.
    """
    has_data = representative_data is not None and (
        not isinstance(representative_data, np.ndarray) or len(representative_data) > 0
    )
    quantization.check_mode(quantize, io_type, has_data)
    if quantize == "int8":
        quantization.check_int8_ops(int8_ops, io_type)
    if output is not None:
        check_output_path(output)
    if isinstance(labels, (str, os.PathLike)):
        labels = read_labels(os.fspath(labels))
    keras_model = model_loading.load_model(model, weights=weights, size=image_size, classes=classes, logits=logits)
    if fuse:
        from keras_cmt import inference

        if inference.is_training_form(keras_model):
            # The key-side attention form removes multiply-adds, which is what float files spend their time on. In
            # `dynamic` files the projections it removes are int8-weight GEMMs, faster than the float per-head
            # products it adds, so their multiply-adds are weighed by the rates' ratio and fewer stages take it.
            # The calibrated int8 mode keeps the query-side form. Measured: benchmarks/RESULTS.md ("Key-side
            # attention in the fused model" and the row after it).
            # Per-head products as grouped 1x1 convolutions: XNNPACK's fp16 path (a float16 file on a phone with
            # fp16 arithmetic) cannot run a batch matmul with a constant operand.
            keras_model = inference.fuse_for_inference(
                keras_model,
                key_side_projections=quantize != "int8",
                projection_cost=DYNAMIC_PROJECTION_COST if quantize == "dynamic" else 1.0,
                head_projections="conv",
            )
    images = None
    if quantize == "int8":
        if isinstance(representative_data, (str, os.PathLike)):
            from keras_cmt.tflite import representative_data as data_lib

            images, _ = data_lib.load_images(
                os.fspath(representative_data),
                int(keras_model.input_shape[1]),
                limit=num_calibration_images,
                data_dir=data_dir,
            )
        else:
            images = np.asarray(representative_data, dtype=np.float32)[:num_calibration_images]
        if input_range == "0-1":
            images = images / 255.0
        elif input_range == "normalized":
            import keras_cmt

            images = keras_cmt.preprocess_input(images)
    result = to_tflite(
        keras_model,
        quantize=quantize,
        representative_images=images,
        io_type=io_type,
        input_range=input_range,
        int8_ops=int8_ops,
    )
    if with_metadata:
        result = add_metadata(result, keras_model, labels=labels, input_range=input_range)
    if output is not None:
        write_atomically(output, result)
    return result


def default_output_path(model, quantize: str, image_size=None, fmt: str = "tflite") -> str:
    suffix = "" if quantize == "none" else f"_{quantize}"
    return f"{model_loading.output_stem(model, image_size)}{suffix}.{fmt}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m keras_cmt.tflite.convert", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help=model_loading.MODEL_HELP)
    p.add_argument("--weights", default=None, help="imagenet, a .weights.h5 / .pth path, or none")
    p.add_argument("--image_size", type=int, default=None, help="square input size (multiple of 32)")
    p.add_argument("--classes", type=int, default=None, help="number of classes (variant names only)")
    p.add_argument("--quantize", default="none", help="none | float16 | dynamic | int8")
    p.add_argument(
        "--representative_data",
        default=None,
        help="calibration images for int8: digits, a folder of class sub-folders, a tfds name or .npz",
    )
    p.add_argument("--data_dir", default=None, help="tfds data_dir for --representative_data")
    p.add_argument("--num_calibration_images", type=int, default=200)
    p.add_argument(
        "--int8_ops",
        default="xnnpack",
        help="xnnpack: int8 where XNNPACK has int8 kernels, float elsewhere (one partition); "
        "all: full-integer TFLITE_BUILTINS_INT8",
    )
    p.add_argument("--io_type", default="float32", help="float32 | int8 | uint8 (int8 quantization only)")
    p.add_argument("--input_range", default="0-255", help="0-255 | 0-1 | normalized (preprocess_input done by the app)")
    p.add_argument(
        "--labels", default=None, help="label file, one label per line (default: ImageNet names for 1000 classes)"
    )
    p.add_argument("--logits", action="store_true", help="output logits instead of softmax probabilities")
    p.add_argument("--no_metadata", action="store_true", help="do not embed TFLite metadata")
    p.add_argument(
        "--no_fuse",
        action="store_true",
        help="convert the training graph as is instead of keras_cmt.fuse_for_inference(model)",
    )
    p.add_argument("--format", default="tflite", choices=("tflite", "onnx"))
    p.add_argument("--output", default=None, help="output file (default: derived from --model)")
    # For a caller that starts the converter ahead of the model it converts (the demo, while it trains): the
    # process imports everything, then waits for a line "go" on stdin; stdin closing first means nothing to do.
    p.add_argument("--wait_for_go", action="store_true", help=argparse.SUPPRESS)
    quiet.add_verbose_argument(p)
    return p


# What convert() imports only when it needs it, imported ahead by --wait_for_go.
_LAZY_IMPORTS = (
    "tensorflow",
    "keras_cmt.cmt",
    "keras_cmt.inference",
    "keras_cmt.weights.loading",
    "keras_cmt.tflite.representative_data",
    "keras_cmt.training.data",
    "keras_cmt.tflite.runner",
    "ai_edge_litert.schema_py_generated",
)


def _wait_for_go() -> bool:
    """--wait_for_go: import ahead, then whether the caller said "go" (False when stdin closed first)."""
    import importlib

    for name in _LAZY_IMPORTS:
        try:
            importlib.import_module(name)
        except ImportError:  # convert() reports a missing package in its own words, if it needs it
            pass
    try:
        return sys.stdin.readline().strip() == "go"
    except KeyboardInterrupt:  # Ctrl-C reaches the caller's whole process group; the caller reports it
        return False


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.wait_for_go and not _wait_for_go():
        return 0
    weights = None if args.weights in (None, "none", "None") else args.weights
    output = args.output or default_output_path(args.model, args.quantize, args.image_size, args.format)
    try:
        if args.format == "onnx":
            from keras_cmt.tflite import export_onnx

            if args.quantize != "none":
                raise ValueError("--format onnx exports float32 only; drop --quantize")
            export_onnx.export(
                args.model,
                output,
                weights=weights,
                image_size=args.image_size,
                classes=args.classes,
                input_range=args.input_range,
                logits=args.logits,
            )
        else:
            convert(
                args.model,
                output,
                weights=weights,
                image_size=args.image_size,
                classes=args.classes,
                quantize=args.quantize,
                representative_data=args.representative_data,
                num_calibration_images=args.num_calibration_images,
                io_type=args.io_type,
                labels=args.labels,
                with_metadata=not args.no_metadata,
                fuse=not args.no_fuse,
                input_range=args.input_range,
                logits=args.logits,
                data_dir=args.data_dir,
                int8_ops=args.int8_ops,
            )
    # RuntimeError: ConversionError, and keras_cmt.tflite.export.ExportError (the ONNX file failed its check).
    except (ValueError, FileNotFoundError, OSError, ImportError, RuntimeError) as e:
        print(f"error: {_first_line(e)}", file=sys.stderr)
        return 2
    print(f"wrote {os.path.abspath(output)} ({os.path.getsize(output) / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
