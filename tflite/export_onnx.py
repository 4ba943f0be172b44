"""Export a CMT to ONNX through tf2onnx, checked with onnxruntime.

    python -m keras_cmt.tflite.export_onnx --model cmt_ti [--weights PATH] [--image_size N] [--output cmt_ti.onnx]
    python -m keras_cmt.tflite.convert --model cmt_ti --format onnx ...      (the same)

The ONNX graph takes the same input as the `.tflite` file (batch 1 by default, RGB in [0, 255] with
the ImageNet normalisation inside; `--input_range normalized` for already-normalised input) and is
verified against the Keras model on random images before it is written (atomically).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from keras_cmt.tflite import convert as convert_lib

DEFAULT_OPSET = 17


def to_onnx_bytes(model, *, input_range: str = "0-255", opset: int = DEFAULT_OPSET) -> bytes:
    """The serialized ONNX model of a keras.Model, via tf2onnx.convert.from_function."""
    try:
        import onnx
        import tf2onnx
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("tf2onnx is not installed: pip install 'keras_cmt[tflite]'") from e
    serve = convert_lib.serving_function(model, input_range)
    try:
        proto, _ = tf2onnx.convert.from_function(serve, input_signature=serve.input_signature, opset=opset)
        # An op tf2onnx cannot map stays in the graph under its TensorFlow name (say the Erfc of tf.nn.gelu, the
        # exact GELU of Activation("gelu") layers, which ONNX lacks; keras_cmt's own is exact_gelu, Erf): refused
        # here rather than written as a file onnxruntime cannot load.
        onnx.checker.check_model(proto)
    except Exception as e:
        raise convert_lib.ConversionError(f"tf2onnx could not convert the model: {convert_lib._first_line(e)}") from e
    return proto.SerializeToString()


def onnx_predict(onnx_bytes: bytes, images: np.ndarray) -> np.ndarray:
    """Runs the ONNX model image by image with onnxruntime (CPU); returns float32 outputs."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate(
        [session.run(None, {name: image[None].astype(np.float32)})[0] for image in images]
    )


def keras_predict(model, images: np.ndarray, input_range: str = "0-255") -> np.ndarray:
    import keras_cmt

    if input_range == "0-255":
        images = keras_cmt.preprocess_input(images)
    elif input_range == "0-1":
        images = keras_cmt.preprocess_input(images * 255.0)
    return np.asarray(model.predict(images, batch_size=len(images), verbose=0))


def export(model, output=None, *, weights=None, image_size=None, classes=None, input_range: str = "0-255",
           logits: bool = False, opset: int = DEFAULT_OPSET, check_images: int = 2, atol: float = 1e-4) -> bytes:
    """Converts, checks against Keras with onnxruntime (max abs <= atol), writes atomically."""
    if output is not None:
        convert_lib.check_output_path(output)
    keras_model = convert_lib.load_model(model, weights=weights, image_size=image_size, classes=classes,
                                         logits=logits)
    data = to_onnx_bytes(keras_model, input_range=input_range, opset=opset)
    if check_images:
        height, width = keras_model.input_shape[1:3]
        high = 255.0 if input_range == "0-255" else 1.0
        x = np.random.default_rng(0).uniform(0.0, high, (check_images, height, width, 3)).astype(np.float32)
        if input_range == "normalized":
            x = x * 4.0 - 2.0
        error = float(np.max(np.abs(onnx_predict(data, x) - keras_predict(keras_model, x, input_range))))
        if not error <= atol:
            raise convert_lib.ConversionError(
                f"the ONNX model differs from Keras by {error:.3g} (max abs) > {atol:g}"
            )
    if output is not None:
        convert_lib.write_atomically(output, data)
    return data


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m keras_cmt.tflite.export_onnx", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="cmt_ti | cmt_xs | cmt_s | cmt_b, or a .keras file")
    p.add_argument("--weights", default=None)
    p.add_argument("--image_size", type=int, default=None)
    p.add_argument("--classes", type=int, default=None)
    p.add_argument("--input_range", default="0-255", help="0-255 | 0-1 | normalized")
    p.add_argument("--logits", action="store_true")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    p.add_argument("--output", default=None)
    args = p.parse_args(argv)
    weights = None if args.weights in (None, "none", "None") else args.weights
    output = args.output or convert_lib.default_output_path(args.model, "none", args.image_size, "onnx")
    try:
        export(args.model, output, weights=weights, image_size=args.image_size, classes=args.classes,
               input_range=args.input_range, logits=args.logits, opset=args.opset)
    except (ValueError, FileNotFoundError, convert_lib.ConversionError, OSError, ImportError) as e:
        print(f"error: {convert_lib._first_line(e)}", file=sys.stderr)
        return 2
    print(f"wrote {os.path.abspath(output)} ({os.path.getsize(output) / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
