"""ONNX export through tf2onnx, checked with onnxruntime against the official logits and Keras."""

import numpy as np

import keras_cmt
from conftest import build_micro
from keras_cmt.tflite import convert, export_onnx


def test_onnx_parity_with_official_logits_and_keras(micro_checkpoint, micro_io, tmp_path):
    model = build_micro(weights=str(micro_checkpoint), classifier_activation=None)
    path = tmp_path / "micro.onnx"
    data = export_onnx.export(model, path, input_range="normalized")
    assert path.read_bytes() == data
    logits = export_onnx.onnx_predict(data, micro_io["input_nhwc"])
    assert np.abs(logits - micro_io["logits"]).max() <= 1e-4
    # The default graph takes [0, 255] pixels with the normalisation inside, like the .tflite file.
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    with_preprocessing = export_onnx.to_onnx_bytes(model)
    expected = model.predict(keras_cmt.preprocess_input(pixels), verbose=0)
    assert np.abs(export_onnx.onnx_predict(with_preprocessing, pixels) - expected).max() <= 1e-4


def test_onnx_through_the_converter_cli(micro_checkpoint, tmp_path):
    model = build_micro(weights=str(micro_checkpoint))
    keras_path = tmp_path / "micro.keras"
    model.save(keras_path)
    out = tmp_path / "micro.onnx"
    assert convert.main(["--model", str(keras_path), "--format", "onnx", "--output", str(out)]) == 0
    import onnx

    graph = onnx.load(str(out)).graph
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [1, 64, 64, 3]
    assert "Erfc" not in {node.op_type for node in graph.node}  # exact GELU as 1 - erf
