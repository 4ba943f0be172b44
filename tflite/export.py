"""Export a CMT in any of Keras' formats, checked in the runtime that reads the file.

    keras-cmt export --model cmt_ti|MODEL.keras --format litert|onnx|openvino|saved_model|torch
        [--weights imagenet|PATH|none] [--size N] [--input_range 0-255|0-1|normalized] [--logits] [--no_fuse]
        [--output PATH]

Each format is Keras' own `model.export(path, format=...)`, run on a serving form of the model. What this adds is
what Keras lacks: `keras_cmt.fuse_for_inference` (normalisations folded into the convolutions), the ImageNet
normalisation inside the graph (the file takes RGB in [0, 255] by default, like the `.tflite` file), in ONNX files
the GELUs in the form onnxruntime fuses (`onnx_gelu`: tf2onnx writes them otherwise) and the LayerNorms as
single `LayerNormalization` nodes (`onnx_layer_norm`), the check (the
file is loaded by its runtime and must give the Keras model's outputs within 1e-4), output that appears whole or
not at all, and a one-line refusal naming what to use instead where a format cannot work on the current backend.
`--format litert` on TensorFlow is `keras_cmt.tflite.convert` (metadata, labels and quantization for Android).
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np

# The formats by their names here and in `model.export`, with the file name ending each is written under.
FORMATS = {
    "litert": ("litert", ".tflite"),
    "onnx": ("onnx", ".onnx"),
    "openvino": ("openvino", ".xml"),
    "saved_model": ("tf_saved_model", ""),
    "torch": ("torch", ".pt2"),
}
# tf2onnx writes opset 15 unless told; 17 is the first with LayerNormalization (`onnx_layer_norm`) and the
# official model's export. jax2onnx's and torch.onnx's defaults are kept (jax2onnx at 17 writes opset-18 nodes).
ONNX_OPSETS = {"tensorflow": 17}
# (backend, format) pairs that cannot work, each with the reason and what to use instead.
REFUSED = {
    ("jax", "litert"): "Keras exports LiteRT from the TensorFlow or PyTorch backend only: run with "
    "KERAS_BACKEND=tensorflow (the same weights load there)",
    ("jax", "saved_model"): "a SavedModel from JAX holds JAX's StableHLO, which this TensorFlow cannot run (JAX 0.10 "
    "writes a newer StableHLO than TensorFlow 2.21 reads): run with KERAS_BACKEND=tensorflow",
    ("jax", "openvino"): "Keras converts JAX to OpenVINO through jax2tf's XlaCallModule, which OpenVINO cannot read: "
    "use --format onnx (OpenVINO reads .onnx files) or KERAS_BACKEND=tensorflow",
    ("tensorflow", "torch"): "the torch format (torch.export) needs KERAS_BACKEND=torch",
    ("jax", "torch"): "the torch format (torch.export) needs KERAS_BACKEND=torch",
}
# What Keras' exports from the torch backend import: (module, what to install).
TORCH_EXPORTERS = {
    "litert": ("litert_torch", "litert-torch (pip install 'keras-cmt[export-torch]')"),
    "saved_model": ("torch_xla", "torch_xla (a build for this torch)"),
}
# The runtime package each format is checked with, and what to install when it is missing.
RUNTIMES = {
    "onnx": "onnxruntime",
    "openvino": "openvino",
    "litert": "ai_edge_litert",
    "saved_model": "tensorflow",
    "torch": "torch",
}
INPUT_RANGES = ("0-255", "0-1", "normalized")


class ExportError(RuntimeError):
    """The format cannot be written on this backend, or the written file does not give the model's outputs."""


def _first_line(e: BaseException) -> str:
    for line in str(e).splitlines():
        if line.strip():
            return line.strip()
    return type(e).__name__


def check_format(fmt: str) -> None:
    """Refuses, before any work, a format that is unknown or cannot work on the current backend."""
    import keras

    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    reason = REFUSED.get((keras.backend.backend(), fmt))
    if reason:
        raise ExportError(f"--format {fmt} on the {keras.backend.backend()} backend: {reason}")
    needs = TORCH_EXPORTERS.get(fmt) if keras.backend.backend() == "torch" else None
    if needs:
        try:
            __import__(needs[0])
        except ImportError:
            raise ExportError(
                f"--format {fmt} on the torch backend needs {needs[1]}, which is not installed: "
                "run with KERAS_BACKEND=tensorflow (the same weights load there)"
            ) from None


def serving_model(model, input_range: str = "0-255", fuse: bool = True):
    """`model` with the ImageNet normalisation for `input_range` in front and, for a channels_last keras_cmt model
    with `fuse`, its normalisations folded (`keras_cmt.fuse_for_inference`); called once, as Keras' export needs."""
    import keras

    import keras_cmt
    from keras_cmt import cmt, inference

    if input_range not in INPUT_RANGES:
        raise ValueError(f"--input_range {input_range}: expected one of {', '.join(INPUT_RANGES)}")
    if fuse and inference.is_training_form(model) and cmt.architecture(model)["data_format"] == "channels_last":
        model = inference.fuse_for_inference(model)
    shape = tuple(model.input_shape[1:])
    channels_first = shape[0] == 3 and shape[-1] != 3
    inputs = keras.Input(shape=shape, name="image")
    x = inputs
    if input_range != "normalized":
        # (x - mean) / std as one multiply-add, with Python numbers: constants of every exported graph (Keras'
        # Normalization keeps its statistics as tensors, which tf2onnx turns into extra graph inputs).
        scale = 255.0 if input_range == "0-255" else 1.0
        factors = [1.0 / (s * scale) for s in keras_cmt.IMAGENET_STD]
        offsets = [-m / s for m, s in zip(keras_cmt.IMAGENET_MEAN, keras_cmt.IMAGENET_STD)]
        if channels_first:
            factors, offsets = [[[f]] for f in factors], [[[o]] for o in offsets]
        x = keras.layers.Rescaling(factors, offsets, name="imagenet_normalization")(x)
    served = keras.Model(inputs, model(x), name=model.name)
    served(np.zeros((1,) + shape, "float32"))
    return served


def run_exported(fmt: str, path: str, images: np.ndarray) -> np.ndarray:
    """The file's outputs for `images`, run one image at a time by the runtime its users run it in (OpenVINO in
    fp32: on CPUs with bf16 units it defaults to bf16, whose error is far above 1e-4)."""
    outputs = []
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        run = lambda image: session.run(None, {name: image})[0]  # noqa: E731
    elif fmt == "openvino":
        import openvino as ov

        compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        run = lambda image: np.asarray(compiled(image)[0])  # noqa: E731
    elif fmt == "litert":
        from keras_cmt.tflite import runner

        run = runner.LiteRTModel(path, num_threads=1).predict
    elif fmt == "saved_model":
        import tensorflow as tf

        loaded = tf.saved_model.load(path)
        run = lambda image: np.asarray(loaded.serve(image))  # noqa: E731
    elif fmt == "torch":
        import torch

        module = torch.export.load(path).module()
        run = lambda image: module(torch.from_numpy(image)).detach().numpy()  # noqa: E731
    else:
        raise ValueError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    for image in images:
        out = run(np.ascontiguousarray(image[None], dtype=np.float32))
        outputs.append(np.asarray(next(iter(out.values())) if isinstance(out, dict) else out))
    return np.concatenate(outputs)


def check_images(model, input_range: str, count: int = 2, seed: int = 0) -> np.ndarray:
    high = {"0-255": 255.0, "0-1": 1.0, "normalized": 1.0}[input_range]
    low = -1.0 if input_range == "normalized" else 0.0
    shape = (count,) + tuple(model.input_shape[1:])
    return np.random.default_rng(seed).uniform(low, high, shape).astype(np.float32)


def _publish(written: str, output: str) -> None:
    """Moves the checked export over `output`: first the files written beside it (OpenVINO's .bin, the external
    weights of a large ONNX model, `<name>.onnx.data`, named in the graph relative to it), then the entry point
    that names them, so a reader never finds the entry without its weights. A SavedModel folder replaces an older
    one only once it is complete."""
    work, folder = os.path.dirname(written), os.path.dirname(output)
    for name in sorted(os.listdir(work)):  # the export ran under the output's own name, so theirs are final
        if name != os.path.basename(written):
            os.replace(os.path.join(work, name), os.path.join(folder, name))
    if os.path.isdir(written):
        old = None
        if os.path.lexists(output):
            old = tempfile.mkdtemp(prefix=".replaced-", dir=folder)
            os.rename(output, os.path.join(old, "previous"))
        os.rename(written, output)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(written, output)


def check_output(fmt: str, output: str) -> str:
    output = os.path.abspath(os.fspath(output))
    folder = os.path.dirname(output)
    if not os.path.isdir(folder):
        raise ValueError(f"--output {output}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"--output {output}: folder {folder} is not writable")
    suffix = FORMATS[fmt][1]
    if suffix and not output.endswith(suffix):
        raise ValueError(f"--output {output}: --format {fmt} writes a file ending in {suffix}")
    if fmt == "saved_model":
        if os.path.isfile(output):
            raise ValueError(f"--output {output}: is a file; a SavedModel is a folder")
        if os.path.isdir(output) and os.listdir(output) and not os.path.exists(os.path.join(output, "saved_model.pb")):
            raise ValueError(f"--output {output}: is a folder that does not hold a SavedModel; not replacing it")
    elif os.path.isdir(output):
        raise ValueError(f"--output {output}: is a folder")
    return output


def export(
    model,
    output: str,
    fmt: str,
    *,
    input_range: str = "0-255",
    fuse: bool = True,
    atol: float = 1e-4,
    check: int = 2,
    **litert_options,
) -> float:
    """Writes `model` (a keras.Model) in `fmt` to `output` after checking the file in its runtime; returns the
    largest error seen. Nothing is left at `output` (or beside it) unless the check passed."""
    check_format(fmt)
    output = check_output(fmt, output)
    served = serving_model(model, input_range, fuse)
    images = check_images(served, input_range, check)
    expected = np.asarray(served.predict(images, batch_size=1, verbose=0)) if check else None
    work = tempfile.mkdtemp(prefix=".export-", dir=os.path.dirname(output))
    try:
        written = os.path.join(work, os.path.basename(output))
        if fmt == "litert" and _backend() == "tensorflow":
            from keras_cmt.tflite import convert

            # keras_cmt's TFLite path: metadata, labels and quantization, from the model itself (it fuses and
            # normalises the same way).
            convert.convert(model, written, input_range=input_range, fuse=fuse, **litert_options)
        else:
            if litert_options:
                raise ValueError(f"{', '.join(litert_options)}: only for --format litert on TensorFlow")
            try:
                opset = ONNX_OPSETS.get(_backend()) if fmt == "onnx" else None
                options = {"opset_version": opset} if opset else {}
                served.export(written, format=FORMATS[fmt][0], verbose=False, **options)
            except Exception as e:
                raise ExportError(
                    f"Keras' {FORMATS[fmt][0]} export failed on the {_backend()} backend: {_first_line(e)}"
                ) from e
            if fmt == "onnx":
                _fuse_onnx_file(written)
        error = 0.0
        if check:
            quantized = litert_options.get("quantize", "none") != "none"
            try:
                got = run_exported(fmt, written, images)
            except ImportError as e:
                raise ExportError(f"cannot check the {fmt} file: {_first_line(e)} (pip install {RUNTIMES[fmt]})") from e
            except Exception as e:
                raise ExportError(f"the {fmt} file does not run in {RUNTIMES[fmt]}: {_first_line(e)}") from e
            error = float(np.max(np.abs(got - expected)))
            if not quantized and not error <= atol:
                raise ExportError(f"the {fmt} file differs from the Keras model by {error:.3g} (max abs) > {atol:g}")
        _publish(written, output)
        return error
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _fuse_onnx_file(path: str) -> None:
    """The ONNX passes on Keras' file, loaded and saved once (weights in a `.data` file beside it stay there)."""
    import onnx

    from keras_cmt.tflite import onnx_gelu, onnx_layer_norm

    model = onnx.load(path, load_external_data=False)
    changed = onnx_gelu.fuse_ready_gelus(model) + onnx_layer_norm.fuse_layer_norms(model)
    if changed:
        onnx.save(model, path)


def _backend() -> str:
    import keras

    return keras.backend.backend()
