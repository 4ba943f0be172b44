"""fuse_for_inference: the folded serving model computes the same function as the training model (on every
backend), and TensorFlow's oneDNN fuses what it was written for (TensorFlow only)."""

import keras
import numpy as np
import pytest

import keras_cmt
from conftest import MICRO_CONFIG, build_micro, numpy
from keras_cmt.fused_layers import FusedCMTBlock, absorbs_projections, heads_last
from keras_cmt.inference import fuse_for_inference

on_every_backend = pytest.mark.all_backends


@on_every_backend
def test_fused_micro_matches_the_official_logits(micro_checkpoint, micro_io):
    model = build_micro(weights=str(micro_checkpoint), classifier_activation=None)
    fused = fuse_for_inference(model)
    assert np.abs(fused.predict(micro_io["input_nhwc"], verbose=0) - micro_io["logits"]).max() <= 1e-4
    assert [layer.name for layer in fused.layers[1:]] == [layer.name for layer in model.layers[1:]]
    assert not fused.trainable_weights
    # Fewer weights: every BatchNorm is gone (its statistics included).
    assert fused.count_params() < model.count_params()
    assert not [layer for layer in fused._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]


@on_every_backend
def test_fused_cmt_tiny_matches_the_official_logits(ti_fixture):
    checkpoint, io = ti_fixture
    fused = fuse_for_inference(keras_cmt.CMTTiny(weights=checkpoint, classifier_activation=None))
    assert np.abs(numpy(fused(io["input_nhwc"])) - io["logits"]).max() <= 1e-4
    keras.backend.clear_session()


@on_every_backend
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(include_top=False, pooling=None),
        dict(include_top=False, pooling="max"),
        dict(input_shape=(96, 64, 3)),
        dict(classifier_activation="softmax"),
    ],
)
def test_fused_matches_for_other_heads_and_sizes(kwargs, micro_checkpoint):
    model = build_micro(weights=str(micro_checkpoint), **kwargs)
    fused = fuse_for_inference(model)
    x = np.random.default_rng(0).normal(size=(2,) + model.input_shape[1:]).astype("float32")
    np.testing.assert_allclose(numpy(fused(x)), numpy(model(x)), atol=1e-4)
    assert fused.output_shape == model.output_shape


@on_every_backend
def test_zero_batchnorm_scale_is_still_exact(micro_checkpoint, micro_io):
    model = build_micro(weights=str(micro_checkpoint), classifier_activation=None)
    for name in ("stem_norm1", "blocks_b_0"):
        layer = model.get_layer(name)
        bn = layer if name.startswith("stem") else layer.mlp.norm1
        gamma = bn.gamma.numpy()
        gamma[:2] = 0.0  # channels whose BatchNorm output is a constant
        bn.gamma.assign(gamma)
    fused = fuse_for_inference(model)
    np.testing.assert_allclose(numpy(fused(micro_io["input_nhwc"])), numpy(model(micro_io["input_nhwc"])), atol=1e-4)


@on_every_backend
@pytest.mark.parametrize("key_side", [True, False])
def test_fused_model_saves_as_keras_file(tmp_path, micro_checkpoint, micro_io, key_side):
    fused = fuse_for_inference(build_micro(weights=str(micro_checkpoint)), key_side_projections=key_side)
    path = tmp_path / "fused.keras"
    fused.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_array_equal(numpy(restored(micro_io["input_nhwc"])), numpy(fused(micro_io["input_nhwc"])))


@on_every_backend
def test_refuses_other_models():
    inputs = keras.Input((32, 32, 3))
    with pytest.raises(ValueError, match="built by keras_cmt.CMT"):
        fuse_for_inference(keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs)))


@on_every_backend
def test_refuses_an_already_fused_model(micro_checkpoint):
    fused = fuse_for_inference(build_micro(weights=str(micro_checkpoint)))
    with pytest.raises(ValueError, match="not yet fused"):
        fuse_for_inference(fused)


def test_onednn_fuses_each_ffn_expansion_with_its_gelu(micro_checkpoint):
    import tensorflow as tf
    from tensorflow.python.util import _pywrap_util_port

    from benchmarks.op_profile import trace_kernels

    if not _pywrap_util_port.IsMklEnabled():
        pytest.skip("this TensorFlow runs without oneDNN (TF_ENABLE_ONEDNN_OPTS=0): nothing to fuse")
    # The official checkpoint's biases are non-zero: with zero biases Grappler deletes the BiasAdd and with it the
    # MatMul+BiasAdd+GELU pattern, which is why the benchmarks randomise them too.
    fused = fuse_for_inference(build_micro(weights=str(micro_checkpoint)))
    _, counts, _ = trace_kernels(lambda x: fused(x, training=False), tf.TensorSpec((1, 64, 64, 3)))
    blocks = sum(MICRO_CONFIG["depths"])
    assert counts["_MklNativeFusedMatMul"] >= blocks  # at least fc1 of every block
    # GELUs left as separate kernels (one Erf each): the stem's three and the one after each block's depthwise
    # convolution; each fc1's GELU is inside its fused MatMul (unfused, there would be 3 + 2 * blocks).
    assert counts["Erf"] == 3 + blocks
    assert "Erfc" not in counts  # exact_gelu's erf form, not tf.nn.gelu's erfc one (no Erfc in ONNX)


def _block_forms(model):
    return {layer.name: layer.key_side_projections for layer in model.layers if isinstance(layer, FusedCMTBlock)}


def test_key_side_attention_where_it_saves_multiply_adds(micro_checkpoint, micro_io):
    from keras_cmt.flops import count_macs

    model = build_micro(weights=str(micro_checkpoint), classifier_activation=None)
    key_side, query_side = fuse_for_inference(model), fuse_for_inference(model, key_side_projections=False)
    # Micro at 64x64: stages a-c have 64, 16 and 4 times more queries than keys; stage d (no reduction) has as
    # many keys as queries, where the key-side form would cost more.
    forms = _block_forms(key_side)
    assert forms == {name: not name.startswith("blocks_d") for name in forms}
    assert not any(_block_forms(query_side).values())
    assert count_macs(key_side) < count_macs(query_side)
    for stage, letter in enumerate("abcd"):
        heads, dim = MICRO_CONFIG["num_heads"][stage], MICRO_CONFIG["embed_dims"][stage]
        queries = (64 // 4 // 2**stage) ** 2
        assert absorbs_projections(queries, queries // (64, 16, 4, 1)[stage], dim, heads) == (letter != "d")
    # Batch 3 through predict (a tf.function): the graph TensorFlow's oneDNN kernels run, with the single-head
    # stage where a broadcasting BatchMatMul once went wrong.
    x = np.concatenate([micro_io["input_nhwc"], micro_io["input_nhwc"][:1] * 0.5])
    np.testing.assert_allclose(key_side.predict(x, verbose=0)[:2], micro_io["logits"], atol=1e-4)
    np.testing.assert_allclose(key_side.predict(x, verbose=0), query_side.predict(x, verbose=0), atol=1e-4)


@on_every_backend
def test_key_side_attention_matches_the_query_side_form_per_head_count():
    rng = np.random.default_rng(0)
    for heads in (1, 2, 4):
        dim, hidden, size = 8, 16, 4
        query_side = FusedCMTBlock(dim, heads, hidden, sr_ratio=2)
        key_side = FusedCMTBlock(dim, heads, hidden, sr_ratio=2, key_side_projections=True)
        # the per-head products as grouped convolutions (the TFLite form), same weights
        key_side_conv = FusedCMTBlock(
            dim, heads, hidden, sr_ratio=2, key_side_projections=True, head_projections="conv"
        )
        x = rng.normal(size=(2, size, size, dim)).astype("float32")
        bias = rng.normal(size=(1, heads, size * size, 4)).astype("float32")
        key_side_bias = numpy(heads_last(bias[0]))[None]
        query_side(x, bias)
        key_side(x, key_side_bias)
        key_side_conv(x, key_side_bias)
        values = {v.name: rng.normal(size=v.shape).astype("float32") * 0.3 for v in query_side.weights}
        for v in query_side.weights:
            v.assign(values[v.name])
        d = dim // heads
        q, bq, wo = values["q_kernel"], values["q_bias"], values["proj_kernel"]
        key_bias = np.zeros((dim, heads), "float32")
        for h in range(heads):
            key_bias[h * d : (h + 1) * d, h] = bq[h * d : (h + 1) * d]
        derived = {
            "query_heads": q.reshape(dim, heads, d).transpose(1, 2, 0),
            "key_bias_kernel": key_bias,
            "out_heads": wo.reshape(heads, d, dim),
        }
        for block in (key_side, key_side_conv):
            for v in block.weights:
                v.assign(values[v.name] if v.name in values else derived[v.name])
            np.testing.assert_allclose(numpy(block(x, key_side_bias)), numpy(query_side(x, bias)), atol=1e-5)
    with pytest.raises(ValueError, match="head_projections='einsum'"):
        FusedCMTBlock(8, 2, 16, head_projections="einsum")
