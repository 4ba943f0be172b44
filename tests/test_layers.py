"""Each CMT layer on its own: shapes, config round trips, the details that break parity if missed."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_cmt import layers


def _round_trip(layer):
    config = keras.saving.serialize_keras_object(layer)
    return keras.saving.deserialize_keras_object(config)


def test_drop_path_config_and_validation():
    restored = _round_trip(layers.DropPath(0.2, seed=3))
    assert restored.rate == 0.2 and restored.seed == 3
    with pytest.raises(ValueError, match="rate"):
        layers.DropPath(1.0)


def test_drop_path_keeps_or_drops_whole_samples():
    x = tf.ones((64, 3, 3, 2))
    out = layers.DropPath(0.5, seed=1)(x, training=True).numpy()
    per_sample = out.reshape(64, -1)
    assert set(np.unique(per_sample)) <= {0.0, 2.0}
    assert np.all(per_sample.min(1) == per_sample.max(1))  # one decision per sample
    assert 0 < (per_sample[:, 0] == 0).sum() < 64


def test_relative_position_bias_shape_and_config():
    bias = layers.RelativePositionBias(2, (8, 12), 4)
    out = bias(tf.zeros((3, 8, 12, 16)))
    assert out.shape == (1, 2, 96, 6)
    restored = _round_trip(bias)
    assert restored.query_size == (8, 12) and restored.sr_ratio == 4


def test_relative_position_bias_rejects_indivisible_grid():
    with pytest.raises(ValueError, match="multiples of 32"):
        layers.RelativePositionBias(1, (6, 6), 4)


def test_patch_embedding_halves_and_normalises():
    layer = layers.PatchEmbedding(24)
    out = layer(tf.random.normal((2, 8, 6, 5))).numpy()
    assert out.shape == (2, 4, 3, 24)
    np.testing.assert_allclose(out.mean(-1), 0.0, atol=1e-5)
    assert layer.norm.epsilon == 1e-5
    assert _round_trip(layer).embed_dim == 24


def test_local_perception_unit_is_a_residual():
    layer = layers.LocalPerceptionUnit()
    x = tf.random.normal((1, 5, 5, 4))
    layer.build(x.shape)
    layer.proj.kernel.assign(tf.zeros_like(layer.proj.kernel))
    np.testing.assert_allclose(layer(x).numpy(), x.numpy())


def test_ffn_hidden_width_truncates_like_the_official_code():
    block = layers.CMTBlock(46, 1, 3.6, sr_ratio=8)
    assert block.mlp.hidden_dim == 165  # int(46 * 3.6) = int(165.6)
    block_xs = layers.CMTBlock(52, 1, 3.77)
    assert block_xs.mlp.hidden_dim == 196  # int(196.04)


def test_ffn_and_block_epsilons():
    block = layers.CMTBlock(16, 2, 2.0, sr_ratio=2)
    assert block.norm1.epsilon == 1e-6 and block.norm2.epsilon == 1e-6
    assert block.mlp.norm1.epsilon == 1e-5 and block.attn.sr_norm.epsilon == 1e-5


def test_attention_matches_a_reference_computation():
    dim, heads, sr = 8, 2, 2
    layer = layers.LightweightAttention(dim, heads, sr)
    x = tf.random.normal((2, 4, 4, dim), seed=0)
    bias_layer = layers.RelativePositionBias(heads, (4, 4), sr)
    bias = bias_layer(x)
    out = layer(x, bias).numpy()

    def project(conv, t):
        return np.einsum("bhwc,co->bhwo", t, conv.kernel.numpy()[0, 0]) + conv.bias.numpy()

    reduced = layer.sr_norm(layer.sr(x)).numpy()
    q = project(layer.q, x.numpy()).reshape(2, 16, heads, 4).transpose(0, 2, 1, 3)
    k = project(layer.k, reduced).reshape(2, 4, heads, 4).transpose(0, 2, 1, 3)
    v = project(layer.v, reduced).reshape(2, 4, heads, 4).transpose(0, 2, 1, 3)
    logits = q @ k.transpose(0, 1, 3, 2) * 4 ** -0.5 + bias.numpy()
    attn = np.exp(logits - logits.max(-1, keepdims=True))
    attn /= attn.sum(-1, keepdims=True)
    ref = (attn @ v).transpose(0, 2, 1, 3).reshape(2, 4, 4, dim)
    np.testing.assert_allclose(out, project(layer.proj, ref), atol=1e-5)


def test_attention_rejects_bad_heads():
    with pytest.raises(ValueError, match="divisible"):
        layers.LightweightAttention(10, 3)


@pytest.mark.parametrize("cls, args", [
    (layers.CMTBlock, (16, 2, 2.0, 2, True, 0.1)),
    (layers.LightweightAttention, (16, 2, 2)),
    (layers.InvertedResidualFFN, (16, 32)),
])
def test_configs_round_trip(cls, args):
    layer = cls(*args)
    assert _round_trip(layer).get_config() == layer.get_config()


def test_attention_with_a_single_key_is_a_projection_of_the_value():
    layer = layers.LightweightAttention(8, 2, sr_ratio=2)
    x = tf.random.normal((2, 2, 2, 8), seed=3)
    bias = layers.RelativePositionBias(2, (2, 2), 2)(x)
    out = layer(x, bias).numpy()
    v = layer.v(layer.sr_norm(layer.sr(x))).numpy()  # the one key's value, broadcast to every query
    np.testing.assert_allclose(out, layer.proj(np.broadcast_to(v, (2, 2, 2, 8))).numpy(), atol=1e-5)


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_attention_trains_in_the_key_side_form_with_the_same_gradients(heads):
    import tensorflow as tf

    from keras_cmt.layers import LightweightAttention
    from keras_cmt.layers.lightweight_attention import absorbs_projections

    dim, size, sr = 32, 8, 4
    assert absorbs_projections(size * size, 4, dim, heads)  # 64 queries, 4 keys: the key-side form is cheaper
    key_side = LightweightAttention(dim, heads, sr)
    query_side = LightweightAttention(dim, heads, sr, key_side_projections=False)
    rng = np.random.default_rng(heads)
    x = tf.constant(rng.normal(size=(3, size, size, dim)).astype("float32"))
    bias = tf.constant(rng.normal(size=(1, heads, size * size, 4)).astype("float32"))
    key_side(x, bias)
    query_side(x, bias)
    for a, b in zip(key_side.weights, query_side.weights):
        value = rng.normal(size=a.shape).astype("float32") * 0.2
        a.assign(value)
        b.assign(value)
    results = []
    for layer in (key_side, query_side):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, bias, training=True)
            loss = tf.reduce_sum(y * tf.cos(y))
        results.append((y, tape.gradient(loss, [x] + layer.trainable_weights)))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5, atol=1e-5)
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    graph = tf.function(lambda t: key_side(t, bias, training=True)).get_concrete_function(
        tf.TensorSpec(x.shape)).graph
    reference = tf.function(lambda t: query_side(t, bias, training=True)).get_concrete_function(
        tf.TensorSpec(x.shape)).graph
    matmul_shapes = lambda g: sorted(  # noqa: E731
        tuple(op.outputs[0].shape.as_list()) for op in g.get_operations() if op.type.startswith("BatchMatMul"))
    assert matmul_shapes(graph) != matmul_shapes(reference)  # a different computation, the same numbers
    assert LightweightAttention.from_config(key_side.get_config()).key_side_projections
