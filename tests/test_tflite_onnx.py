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


def _optimized_ops(path, tmp_path):
    """The op counts of the graph onnxruntime runs after its own fusions."""
    import collections

    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return collections.Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)


def test_onnxruntime_fuses_every_gelu_of_our_onnx(micro_checkpoint, micro_io, tmp_path):
    """tf2onnx's constant folding turns the GELU's x / sqrt(2) into x * (1 / sqrt(2)), which onnxruntime's Gelu
    fusion does not match; our export restores the division, so no GELU is left as Erf and element-wise ops."""
    model = build_micro(weights=str(micro_checkpoint), classifier_activation=None)
    ours = tmp_path / "ours.onnx"
    export_onnx.export(model, ours, input_range="normalized")
    keras_own = tmp_path / "keras.onnx"
    numpy(model(micro_io["input_nhwc"]))
    model.export(str(keras_own), format="onnx", verbose=False)

    erfs = _optimized_ops(keras_own, tmp_path)["Erf"]
    assert erfs > 0  # Keras' own file: the GELUs are left unfused
    fused = _optimized_ops(ours, tmp_path)
    assert fused["Erf"] == 0 and fused["Gelu"] + fused["BiasGelu"] >= erfs
    logits = export_onnx.onnx_predict(ours.read_bytes(), micro_io["input_nhwc"])
    assert np.abs(logits - micro_io["logits"]).max() <= 1e-4


def test_gelu_chains_are_rewritten_only_where_the_function_stays_the_same():
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from keras_cmt.tflite import onnx_gelu

    def const(name, value, shape=()):
        return numpy_helper.from_array(np.full(shape, value, np.float32), name)

    def gelu(x, out, one="one"):  # 0.5 x (1 + erf(x * (1 / sqrt 2))), as tf2onnx writes it
        return [
            helper.make_node("Mul", [x, "inv"], [out + "_s"]),
            helper.make_node("Erf", [out + "_s"], [out + "_e"]),
            helper.make_node("Add", [one, out + "_e"], [out + "_a"]),
            helper.make_node("Mul", ["half", x], [out + "_h"]),
            helper.make_node("Mul", [out + "_h", out + "_a"], [out]),
        ]

    nodes = [
        *gelu("x", "g1", one="one_4d"),  # rank-4 input, the 1 shaped (1, 1, 1, 1): rewritten
        *gelu("x", "g2"),
        helper.make_node("Add", ["g2_s", "g2"], ["g2b"]),  # its scaled x is read twice: kept
        helper.make_node("Sum", ["g1", "g2b"], ["y"]),
    ]
    vi = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 2, 2, 3])  # noqa: E731
    constants = [
        const("inv", 1 / np.sqrt(2)),
        const("half", 0.5),
        const("one", 1.0),
        const("one_4d", 1.0, (1, 1, 1, 1)),
    ]
    model = helper.make_model(helper.make_graph(nodes, "g", [vi("x")], [vi("y")], constants))
    before = model.SerializeToString()
    assert onnx_gelu.fuse_ready_gelus(model) == 1
    assert [n.op_type for n in model.graph.node][:2] == ["Div", "Erf"] and model.graph.node[5].op_type == "Mul"
    assert "one_4d" not in {t.name for t in model.graph.initializer}  # no longer read, so not left behind
    onnx.checker.check_model(model)
    x = np.random.default_rng(0).normal(size=(1, 2, 2, 3)).astype(np.float32) * 3
    run = lambda m: ort.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]  # noqa: E731
    np.testing.assert_allclose(run(model.SerializeToString()), run(before), atol=1e-6)
    assert onnx_gelu.fuse_ready_gelus(model) == 0  # already in the fused form


def _moments_layer_norm(x, out, axis, affine, division=False):
    """Keras' moments-form LayerNorm as the converters write it: (x - mean) * inv, or x * g + (beta - mean * g)."""
    from onnx import helper

    nodes = [
        helper.make_node("ReduceMean", [x], [out + "_m"], axes=[axis], keepdims=1),
        helper.make_node("Sub", [x, out + "_m"], [out + "_d"]),
        helper.make_node("Mul", [out + "_d", out + "_d"], [out + "_d2"]),
        helper.make_node("ReduceMean", [out + "_d2"], [out + "_v"], axes=[axis], keepdims=1),
        helper.make_node("Add", [out + "_v", out + "_eps"], [out + "_ve"]),
        helper.make_node("Sqrt", [out + "_ve"], [out + "_s"]),
        helper.make_node("Div", ["one", out + "_s"], [out + "_i"])
        if division  # jax2onnx's 1 / sqrt
        else helper.make_node("Reciprocal", [out + "_s"], [out + "_i"]),
    ]
    if not affine:
        return nodes + [helper.make_node("Mul", [out + "_d", out + "_i"], [out])]
    return nodes + [
        helper.make_node("Mul", [out + "_i", out + "_gamma"], [out + "_g"]),
        helper.make_node("Neg", [out + "_m"], [out + "_n"]),
        helper.make_node("Mul", [out + "_n", out + "_g"], [out + "_ng"]),
        helper.make_node("Add", [out + "_ng", out + "_beta"], [out + "_shift"]),
        helper.make_node("Mul", [x, out + "_g"], [out + "_xg"]),
        helper.make_node("Add", [out + "_xg", out + "_shift"], [out]),
    ]


def test_layer_norm_chains_become_one_node_only_where_that_is_the_same_function_and_no_transpose_more():
    import collections

    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from keras_cmt.tflite import onnx_layer_norm

    rng = np.random.default_rng(0)

    def const(name, shape, value=None):
        data = rng.normal(size=shape) if value is None else np.full(shape, value)
        return numpy_helper.from_array(data.astype(np.float32), name)

    nodes = [
        # NCHW, read through a Transpose to NHWC (as tf2onnx leaves the block LayerNorms): fused
        *_moments_layer_norm("a", "ya", 1, affine=True),
        helper.make_node("Transpose", ["ya"], ["ya_t"], perm=[0, 2, 3, 1]),
        helper.make_node("Relu", ["ya_t"], ["out_a"]),
        # the last axis, in jax2onnx's form: fused in place
        *_moments_layer_norm("b", "yb", 2, affine=False, division=True),
        helper.make_node("Relu", ["yb"], ["out_b"]),
        # NCHW read in NCHW: it would take two Transposes more, so kept
        *_moments_layer_norm("a", "yc", 1, affine=False),
        helper.make_node("Relu", ["yc"], ["out_c"]),
        # an intermediate read outside the chain: kept
        *_moments_layer_norm("b", "yd", 2, affine=False),
        helper.make_node("Add", ["yd", "yd_d"], ["out_d"]),
    ]
    constants = [const("one", (), 1.0), const("ya_gamma", (1, 4, 1, 1)), const("ya_beta", (1, 4, 1, 1))]
    constants += [const(f"{y}_eps", (1, 1, 1) if y in ("yb", "yd") else (), 1e-5) for y in ("ya", "yb", "yc", "yd")]
    vi = lambda name, shape: helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)  # noqa: E731
    inputs = [vi("a", [None, 4, 3, 5]), vi("b", [None, 6, 8])]
    outputs = [vi("out_a", [None, 3, 5, 4]), vi("out_b", [None, 6, 8]), vi("out_c", [None, 4, 3, 5])]
    outputs.append(vi("out_d", [None, 6, 8]))
    graph = helper.make_graph(nodes, "g", inputs, outputs, constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    before = model.SerializeToString()
    older = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    assert onnx_layer_norm.fuse_layer_norms(older) == 0  # no LayerNormalization before opset 17

    assert onnx_layer_norm.fuse_layer_norms(model) == 2
    onnx.checker.check_model(model, full_check=True)
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert ops["LayerNormalization"] == 2 and ops["ReduceMean"] == 4 and ops["Transpose"] == 1
    assert {"ya_gamma", "ya_beta", "ya_eps", "yb_eps"}.isdisjoint(t.name for t in model.graph.initializer)
    feeds = {"a": rng.normal(size=(2, 4, 3, 5)).astype(np.float32) * 3 + 1, "b": rng.normal(size=(2, 6, 8))}
    feeds["b"] = feeds["b"].astype(np.float32)
    run = lambda m: ort.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, feeds)  # noqa: E731
    for got, expected in zip(run(model.SerializeToString()), run(before)):
        np.testing.assert_allclose(got, expected, atol=1e-5)
    assert onnx_layer_norm.fuse_layer_norms(model) == 0
