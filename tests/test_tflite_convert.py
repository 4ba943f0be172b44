"""TFLite conversion of the micro CMT: parity with Keras and the official logits, delegates, op set."""

import numpy as np
import pytest

import keras_cmt
from keras_cmt import model_loading
from conftest import build_micro
from keras_cmt.tflite import compatibility, convert
from keras_cmt.tflite.runner import LiteRTModel


@pytest.fixture(scope="module")
def micro_logits_model(micro_checkpoint):
    return build_micro(weights=str(micro_checkpoint), classifier_activation=None)


@pytest.fixture(scope="module")
def fp32_normalized(micro_logits_model):
    """Input already normalised (as the fixture's), so the official logits apply directly."""
    return convert.convert(micro_logits_model, input_range="normalized")


@pytest.fixture(scope="module")
def pixels():
    return np.random.default_rng(1).uniform(0, 255, (3, 64, 64, 3)).astype(np.float32)


def test_fp32_parity_with_official_logits(fp32_normalized, micro_logits_model, micro_io):
    model = LiteRTModel(fp32_normalized, num_threads=2)
    assert model.input_shape == (1, 64, 64, 3)  # static batch-1 signature
    logits = model.predict(micro_io["input_nhwc"])
    assert np.abs(logits - micro_io["logits"]).max() <= 1e-4
    keras_logits = micro_logits_model.predict(micro_io["input_nhwc"], verbose=0)
    assert np.abs(logits - keras_logits).max() <= 1e-4
    # The reference kernels (no XNNPACK) agree too: the parity is the graph's, not the delegate's.
    reference = LiteRTModel(fp32_normalized, use_xnnpack=False).predict(micro_io["input_nhwc"])
    assert np.abs(reference - micro_io["logits"]).max() <= 1e-4


def test_normalisation_folded_into_the_graph(micro_logits_model, pixels):
    data = convert.convert(micro_logits_model, with_metadata=False)
    expected = micro_logits_model.predict(keras_cmt.preprocess_input(pixels), verbose=0)
    assert np.abs(LiteRTModel(data).predict(pixels) - expected).max() <= 1e-4
    ops = compatibility.op_types(data)
    assert not any(op.startswith("Flex") or op == "CUSTOM" for op in ops), ops  # builtin ops only


def test_float16_parity(micro_logits_model, micro_io, fp32_normalized):
    data = convert.convert(micro_logits_model, quantize="float16", input_range="normalized")
    logits = LiteRTModel(data).predict(micro_io["input_nhwc"])
    error = np.abs(logits - micro_io["logits"]).max()
    assert 0 < error <= 1e-2  # > 0: the weights really are float16
    assert len(data) < 0.6 * len(fp32_normalized)


def test_fp32_and_float16_run_wholly_on_the_delegates(fp32_normalized, micro_logits_model):
    for data in (fp32_normalized, convert.convert(micro_logits_model, quantize="float16", with_metadata=False)):
        result = compatibility.check(data)
        assert result["gpu_incompatible"] == []
        assert result["xnnpack_partitions"] == 1
        assert result["nodes_on_default_kernels"] == 0, result["default_kernel_ops"]


def _weight_tensors(data):
    """(op type, weight tensor type, weight values as stored, quantization scales) per CONV/FC/DEPTHWISE node."""
    from ai_edge_litert import schema_py_generated as schema

    from keras_cmt.tflite.quantization import builtin_op_names

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
    codes = builtin_op_names(schema)
    graph = model.subgraphs[0]
    rows = []
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        name = codes[max(code.builtinCode, code.deprecatedBuiltinCode)]
        if name in ("CONV_2D", "FULLY_CONNECTED", "DEPTHWISE_CONV_2D"):
            tensor = graph.tensors[op.inputs[1]]
            dtype = np.int8 if tensor.type == schema.TensorType.INT8 else np.float32
            values = np.frombuffer(np.asarray(model.buffers[tensor.buffer].data, np.uint8).tobytes(), dtype)
            scales = tensor.quantization.scale if tensor.quantization is not None else None
            rows.append((name, tensor.type, values.reshape(tensor.shape), scales))
    return rows


def test_dynamic_range_quantization_shrinks_and_stays_close(micro_logits_model, micro_io, fp32_normalized):
    data = convert.convert(micro_logits_model, quantize="dynamic", input_range="normalized")
    logits = LiteRTModel(data).predict(micro_io["input_nhwc"])
    assert np.array_equal(logits.argmax(-1), micro_io["logits"].argmax(-1))
    assert np.abs(logits - micro_io["logits"]).max() <= 0.05 * np.abs(micro_io["logits"]).max()
    assert len(data) < 0.5 * len(fp32_normalized)
    # XNNPACK takes the whole graph: its int8-weight kernels run the convolutions, depthwise stays float.
    result = compatibility.check(data)
    assert result["xnnpack_partitions"] == 1
    assert result["nodes_on_default_kernels"] == 0, result["default_kernel_ops"]
    int8_ops = {name for name, tensor_type, _, _ in _weight_tensors(data) if tensor_type == 9}
    assert int8_ops == {"CONV_2D", "FULLY_CONNECTED"}


def _key_side_stages(depths, dims, heads, image_size, projection_cost):
    from keras_cmt.fused_layers import absorbs_projections

    stages = []
    for stage, sr in enumerate((8, 4, 2, 1)):
        queries = (image_size // 4 // 2**stage) ** 2
        stages.append(absorbs_projections(queries, queries // sr**2, dims[stage], heads[stage], projection_cost))
    return stages


def test_dynamic_files_weigh_projections_as_int8():
    # CMT-S at 224: float files take the key-side form in stages 1-3, dynamic ones (projections 3.6x cheaper)
    # only in the single-head stage 1, which is what measured fastest for each (benchmarks/RESULTS.md).
    s = keras_cmt.get_variant("cmt_s")
    assert _key_side_stages(s.depths, s.embed_dims, s.num_heads, 224, 1.0) == [True, True, True, False]
    assert _key_side_stages(s.depths, s.embed_dims, s.num_heads, 224, convert.DYNAMIC_PROJECTION_COST) == [
        True,
        False,
        False,
        False,
    ]


def test_attention_forms_of_float_and_dynamic_files(fp32_normalized, micro_logits_model):
    from conftest import MICRO_CONFIG

    depths, dims, heads = MICRO_CONFIG["depths"], MICRO_CONFIG["embed_dims"], MICRO_CONFIG["num_heads"]

    def key_side_blocks(projection_cost):
        # Every block has two batch matmuls of two dynamic operands (logits, weights x values); a multi-head
        # key-side block also projects its keys and its values per head, each as one grouped 1x1 CONV_2D (a
        # single-head one as FULLY_CONNECTED).
        key_side = _key_side_stages(depths, dims, heads, 64, projection_cost)
        return sum(d * (k and h > 1) for d, k, h in zip(depths, key_side, heads))

    float_ops = compatibility.op_types(fp32_normalized)
    dynamic_ops = compatibility.op_types(convert.convert(micro_logits_model, quantize="dynamic", with_metadata=False))
    int8_ops = compatibility.op_types(
        convert.convert(
            micro_logits_model,
            quantize="int8",
            with_metadata=False,
            representative_data=np.random.default_rng(0).uniform(0, 255, (4, 64, 64, 3)).astype(np.float32),
        )
    )
    # No batch matmul with a constant operand (XNNPACK cannot run those in fp16): two per block in every mode.
    for ops in (float_ops, dynamic_ops, int8_ops):
        assert ops["BATCH_MATMUL"] == 2 * sum(depths)
    # The calibrated int8 mode is query-side everywhere; the float and dynamic files add two convolutions per
    # multi-head key-side block.
    assert float_ops["CONV_2D"] - int8_ops["CONV_2D"] == 2 * key_side_blocks(1.0) > 0
    assert dynamic_ops["CONV_2D"] - int8_ops["CONV_2D"] == 2 * key_side_blocks(convert.DYNAMIC_PROJECTION_COST)


def test_quantize_weights_for_xnnpack_rounds_each_output_channel(fp32_normalized):
    from keras_cmt.tflite import quantization

    original = _weight_tensors(fp32_normalized)
    quantized = _weight_tensors(quantization.quantize_weights_for_xnnpack(fp32_normalized))
    assert [row[0] for row in original] == [row[0] for row in quantized]
    changed = 0
    for (name, _, weights, _), (_, tensor_type, values, scales) in zip(original, quantized):
        if tensor_type != 9:  # float: depthwise, or below the size threshold
            assert name == "DEPTHWISE_CONV_2D" or weights.size < quantization.MIN_QUANTIZED_ELEMENTS
            np.testing.assert_array_equal(values, weights)
            continue
        changed += 1
        scales = np.asarray(scales, np.float32)
        assert scales.shape == (weights.shape[0],)
        np.testing.assert_allclose(scales, np.abs(weights.reshape(len(scales), -1)).max(axis=1) / 127, rtol=1e-6)
        restored = values.reshape(len(scales), -1) * scales[:, None]
        assert (np.abs(restored - weights.reshape(len(scales), -1)) <= scales[:, None] / 2 + 1e-7).all()
    assert changed >= 10


def test_keras_file_converts_like_the_model(micro_logits_model, tmp_path, pixels):
    path = tmp_path / "micro.keras"
    micro_logits_model.save(path)
    out = tmp_path / "micro.tflite"
    assert convert.main(["--model", str(path), "--output", str(out)]) == 0
    expected = micro_logits_model.predict(keras_cmt.preprocess_input(pixels), verbose=0)
    assert np.abs(LiteRTModel(str(out)).predict(pixels) - expected).max() <= 1e-4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_wait_for_go_converts_only_when_told(micro_logits_model, tmp_path, monkeypatch):
    """The demo starts the converter ahead of its model with --wait_for_go: "go" on stdin converts, stdin closing
    first (the caller had nothing to convert, or died) ends it with nothing written."""
    import io
    import sys

    path = tmp_path / "micro.keras"
    out = tmp_path / "micro.tflite"
    argv = ["--model", str(path), "--output", str(out), "--wait_for_go"]
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert convert.main(argv) == 0  # the model does not even exist yet
    assert list(tmp_path.iterdir()) == []
    micro_logits_model.save(path)
    monkeypatch.setattr(sys, "stdin", io.StringIO("go\n"))
    assert convert.main(argv) == 0
    assert LiteRTModel(str(out)).predict(np.zeros((1, 64, 64, 3), np.float32)).shape == (1, 10)


def test_output_kind_follows_the_classifier_activation():
    assert model_loading.ends_in_softmax(build_micro())
    assert not model_loading.ends_in_softmax(build_micro(classifier_activation=None))


def test_fused_and_unfused_conversions_agree(micro_logits_model, micro_io):
    fused = convert.convert(micro_logits_model, input_range="normalized", with_metadata=False)
    plain = convert.convert(micro_logits_model, input_range="normalized", with_metadata=False, fuse=False)
    assert len(fused) != len(plain)  # the fused graph really is another graph
    a = LiteRTModel(fused).predict(micro_io["input_nhwc"])
    b = LiteRTModel(plain).predict(micro_io["input_nhwc"])
    assert np.abs(a - b).max() <= 1e-4
