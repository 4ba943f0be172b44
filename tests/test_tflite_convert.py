"""TFLite conversion of the micro CMT: parity with Keras and the official logits, delegates, op set."""

import numpy as np
import pytest

import keras_cmt
from conftest import build_micro
from tflite import compatibility, convert
from tflite.runner import LiteRTModel


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


def test_dynamic_range_quantization_shrinks_and_stays_close(micro_logits_model, micro_io, fp32_normalized):
    data = convert.convert(micro_logits_model, quantize="dynamic", input_range="normalized")
    logits = LiteRTModel(data).predict(micro_io["input_nhwc"])
    assert np.array_equal(logits.argmax(-1), micro_io["logits"].argmax(-1))
    assert len(data) < 0.4 * len(fp32_normalized)


def test_keras_file_converts_like_the_model(micro_logits_model, tmp_path, pixels):
    path = tmp_path / "micro.keras"
    micro_logits_model.save(path)
    out = tmp_path / "micro.tflite"
    assert convert.main(["--model", str(path), "--output", str(out)]) == 0
    expected = micro_logits_model.predict(keras_cmt.preprocess_input(pixels), verbose=0)
    assert np.abs(LiteRTModel(str(out)).predict(pixels) - expected).max() <= 1e-4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_output_kind_follows_the_classifier_activation():
    assert convert._output_is_probability(build_micro())
    assert not convert._output_is_probability(build_micro(classifier_activation=None))


def test_fused_and_unfused_conversions_agree(micro_logits_model, micro_io):
    fused = convert.convert(micro_logits_model, input_range="normalized", with_metadata=False)
    plain = convert.convert(micro_logits_model, input_range="normalized", with_metadata=False, fuse=False)
    assert len(fused) != len(plain)  # the fused graph really is another graph
    a = LiteRTModel(fused).predict(micro_io["input_nhwc"])
    b = LiteRTModel(plain).predict(micro_io["input_nhwc"])
    assert np.abs(a - b).max() <= 1e-4
