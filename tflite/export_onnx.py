"""Export a CMT to ONNX: `keras-cmt export --format onnx` under the converter's flags.

    python -m keras_cmt.tflite.export_onnx --model cmt_ti [--weights PATH] [--image_size N] [--output cmt_ti.onnx]
    python -m keras_cmt.tflite.convert --model cmt_ti --format onnx ...      (the same)

Keras' `model.export(format="onnx")` on the serving form (`keras_cmt.tflite.export`): the same input as the
`.tflite` file (RGB in [0, 255] with the ImageNet normalisation inside; `--input_range normalized` for
already-normalised input), any batch size, checked with onnxruntime against the Keras model before it is written
(atomically).
"""

from __future__ import annotations

import os
import sys
import tempfile

import numpy as np

from keras_cmt import model_loading
from keras_cmt.tflite import convert as convert_lib
from keras_cmt.tflite import export as export_lib


def to_onnx_bytes(model, *, input_range: str = "0-255", fuse: bool = True) -> bytes:
    """The serialized, checked ONNX model of a keras.Model."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.onnx")
        export_lib.export(model, path, "onnx", input_range=input_range, fuse=fuse)
        if os.path.exists(path + ".data"):
            raise convert_lib.ConversionError(
                "the ONNX model keeps its weights in a second file; export it to a "
                "path (keras-cmt export --format onnx --output PATH)"
            )
        with open(path, "rb") as f:
            return f.read()


def onnx_predict(onnx_bytes: bytes, images: np.ndarray) -> np.ndarray:
    """Runs the ONNX model image by image with onnxruntime (CPU); returns float32 outputs."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: image[None].astype(np.float32)})[0] for image in images])


def export(
    model,
    output=None,
    *,
    weights=None,
    image_size=None,
    classes=None,
    input_range: str = "0-255",
    logits: bool = False,
    fuse: bool = True,
) -> bytes:
    """A variant name, `.keras` file or keras.Model to a checked ONNX file at `output` (written atomically);
    returns its bytes."""
    keras_model = model_loading.load_model(model, weights=weights, size=image_size, classes=classes, logits=logits)
    if output is None:
        return to_onnx_bytes(keras_model, input_range=input_range, fuse=fuse)
    export_lib.export(keras_model, output, "onnx", input_range=input_range, fuse=fuse)
    with open(output, "rb") as f:
        return f.read()


def main(argv=None) -> int:
    """`python -m keras_cmt.tflite.convert --format onnx` with the same flags."""
    return convert_lib.main([*(sys.argv[1:] if argv is None else argv), "--format", "onnx"])


if __name__ == "__main__":
    sys.exit(main())
