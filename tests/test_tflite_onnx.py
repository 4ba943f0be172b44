"""ONNX export through tf2onnx, checked with onnxruntime against the official logits and Keras."""

import numpy as np

import keras_cmt
from conftest import build_micro, numpy
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
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim][1:] == [64, 64, 3]  # any batch
    ops = {node.op_type for node in graph.node}
    # keras_cmt's exact GELU, 0.5 x (1 + erf(x / sqrt(2))): Erf, never tf.nn.gelu's Erfc, which ONNX lacks.
    assert "Erf" in ops and "Erfc" not in ops


def _onnx_ops(path):
    import onnx

    return {node.op_type for node in onnx.load(str(path)).graph.node}


def test_keras_own_onnx_export_matches_official_logits(micro_checkpoint, micro_io, tmp_path):
    """Keras' `model.export(format="onnx")` (tf2onnx on TensorFlow, no handlers of ours) gives a file onnxruntime
    loads: the exact GELU is Erf there, not tf.nn.gelu's Erfc."""
    import onnxruntime as ort

    model = build_micro(weights=str(micro_checkpoint), classifier_activation=None)
    expected = numpy(model(micro_io["input_nhwc"]))  # Keras' ONNX export refuses a model never called
    path = tmp_path / "micro.onnx"
    model.export(str(path), format="onnx", verbose=False)
    ops = _onnx_ops(path)
    assert "Erf" in ops and "Erfc" not in ops
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: micro_io["input_nhwc"]})[0]
    assert np.abs(logits - micro_io["logits"]).max() <= 1e-4
    assert np.abs(logits - expected).max() <= 1e-4


def test_a_keras_file_saved_with_activation_gelu_exports_onnx(micro_checkpoint, micro_io, tmp_path):
    """A CMT saved before the stem used exact_gelu (Activation("gelu"): Erfc on TensorFlow) loads with exact_gelu
    in its stem, and exports to ONNX."""
    import keras

    from keras_cmt.weights.loading import load_model_file

    model = build_micro(weights=str(micro_checkpoint), classifier_activation=None)
    for i in (1, 2, 3):
        model.get_layer(f"stem_gelu{i}").activation = keras.activations.gelu  # as the layer was built before
    keras_path = tmp_path / "old.keras"
    model.save(keras_path)
    restored = load_model_file(keras_path)
    assert all(restored.get_layer(f"stem_gelu{i}").activation is keras_cmt.layers.exact_gelu for i in (1, 2, 3))
    np.testing.assert_allclose(restored.predict(micro_io["input_nhwc"], verbose=0), micro_io["logits"], atol=1e-4)
    out = tmp_path / "old.onnx"
    assert convert.main(["--model", str(keras_path), "--format", "onnx", "--logits", "--output", str(out)]) == 0
    assert "Erfc" not in _onnx_ops(out)


def test_an_op_onnx_lacks_is_refused_in_one_line(tmp_path):
    """tf2onnx leaves what it cannot map (here tf.nn.gelu's Erfc) in the graph; onnxruntime then refuses the file,
    which is not written."""
    import keras
    import pytest

    from keras_cmt.tflite import export

    inputs = keras.Input((16, 16, 3))
    model = keras.Model(inputs, keras.layers.Activation("gelu")(keras.layers.Conv2D(4, 3)(inputs)))
    with pytest.raises(export.ExportError, match="Erfc") as refused:
        export_onnx.export(model, tmp_path / "gelu.onnx")
    assert "\n" not in str(refused.value) and "does not run in onnxruntime" in str(refused.value)
    assert list(tmp_path.iterdir()) == []
