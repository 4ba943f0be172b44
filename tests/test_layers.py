"""Each CMT layer on its own: shapes, config round trips, the details that break parity if missed. On every
backend."""

import keras
import numpy as np
import pytest

from conftest import numpy
from keras_cmt import layers

pytestmark = pytest.mark.all_backends


def _round_trip(layer):
    config = keras.saving.serialize_keras_object(layer)
    return keras.saving.deserialize_keras_object(config)


def _normal(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def test_drop_path_config_and_validation():
    restored = _round_trip(layers.DropPath(0.2, seed=3))
    assert restored.rate == 0.2 and restored.seed == 3
    with pytest.raises(ValueError, match="rate"):
        layers.DropPath(1.0)


def test_drop_path_keeps_or_drops_whole_samples():
    x = np.ones((64, 3, 3, 2), "float32")
    out = numpy(layers.DropPath(0.5, seed=1)(x, training=True))
    per_sample = out.reshape(64, -1)
    assert set(np.unique(per_sample)) <= {0.0, 2.0}
    assert np.all(per_sample.min(1) == per_sample.max(1))  # one decision per sample
    assert 0 < (per_sample[:, 0] == 0).sum() < 64


def test_relative_position_bias_shape_and_config():
    bias = layers.RelativePositionBias(2, (8, 12), 4)
    out = bias(np.zeros((3, 8, 12, 16), "float32"))
    assert tuple(out.shape) == (1, 2, 96, 6)
    restored = _round_trip(bias)
    assert restored.query_size == (8, 12) and restored.sr_ratio == 4


def test_relative_position_bias_rejects_indivisible_grid():
    with pytest.raises(ValueError, match="multiples of 32"):
        layers.RelativePositionBias(1, (6, 6), 4)


def test_patch_embedding_halves_and_normalises():
    layer = layers.PatchEmbedding(24, data_format="channels_last")
    out = numpy(layer(_normal((2, 8, 6, 5))))
    assert out.shape == (2, 4, 3, 24)
    np.testing.assert_allclose(out.mean(-1), 0.0, atol=1e-5)
    assert layer.norm.epsilon == 1e-5
    assert _round_trip(layer).embed_dim == 24


def test_local_perception_unit_is_a_residual():
    layer = layers.LocalPerceptionUnit(4, data_format="channels_last")
    x = _normal((1, 5, 5, 4))
    layer.build(x.shape)
    kernel = np.zeros(layer.proj.kernel.shape, "float32")
    layer.proj.kernel.assign(kernel)
    np.testing.assert_allclose(numpy(layer(x)), x)
    kernel[1, 1] = 2.0  # centre tap 2 and bias 1: x + (2x + 1)
    layer.proj.kernel.assign(kernel)
    layer.bias.assign(np.ones(4, "float32"))
    np.testing.assert_allclose(numpy(layer(x)), 3 * x + 1, rtol=1e-5)


def test_ffn_hidden_width_truncates_like_the_official_code():
    block = layers.CMTBlock(46, 1, 3.6, sr_ratio=8)
    assert block.mlp.hidden_dim == 165  # int(46 * 3.6) = int(165.6)
    block_xs = layers.CMTBlock(52, 1, 3.77)
    assert block_xs.mlp.hidden_dim == 196  # int(196.04)


def test_ffn_and_block_epsilons_and_momenta():
    block = layers.CMTBlock(16, 2, 2.0, sr_ratio=2)
    assert block.norm1.epsilon == 1e-6 and block.norm2.epsilon == 1e-6
    assert block.mlp.norm1.epsilon == 1e-5 and block.attn.sr_norm.epsilon == 1e-5
    assert block.mlp.norm1.momentum == 0.9 and block.attn.sr_norm.momentum == 0.9  # PyTorch's 0.1


def test_ffn_matches_a_reference_computation():
    dim, hidden = 6, 10
    layer = layers.InvertedResidualFFN(dim, hidden, data_format="channels_last")
    x = _normal((2, 5, 5, dim))
    layer.build(x.shape)
    rng = np.random.default_rng(1)
    for v in layer.weights:
        positive = "variance" in v.path or "gamma" in v.path
        value = rng.uniform(0.5, 1.5, v.shape) if positive else rng.normal(size=v.shape) * 0.3
        v.assign(value.astype("float32"))
    from math import erf

    gelu = np.vectorize(lambda t: 0.5 * t * (1 + erf(t / np.sqrt(2))))

    def bn(t, norm):
        g, b, m, var = (numpy(w) for w in (norm.gamma, norm.beta, norm.moving_mean, norm.moving_variance))
        return (t - m) / np.sqrt(var + 1e-5) * g + b

    def dw3x3(t, unit):
        padded = np.pad(t, ((0, 0), (1, 1), (1, 1), (0, 0)))
        k = numpy(unit.proj.kernel)[:, :, :, 0]
        out = sum(padded[:, i : i + 5, j : j + 5] * k[i, j] for i in range(3) for j in range(3))
        return out + numpy(unit.bias)

    h = bn(gelu(x @ numpy(layer.conv1.kernel)[0, 0] + numpy(layer.conv1.bias)), layer.norm1)
    h = bn(gelu(h + dw3x3(h, layer.dwconv)), layer.norm2)
    expected = bn(h @ numpy(layer.conv2.kernel)[0, 0] + numpy(layer.conv2.bias), layer.norm3)
    np.testing.assert_allclose(numpy(layer(x)), expected, atol=1e-4)


def test_attention_matches_a_reference_computation():
    dim, heads, sr = 8, 2, 2
    layer = layers.LightweightAttention(dim, heads, sr, data_format="channels_last")
    x = _normal((2, 4, 4, dim))
    bias = numpy(layers.RelativePositionBias(heads, (4, 4), sr)(x))
    out = numpy(layer(x, bias))

    def project(conv, t):
        return np.einsum("bhwc,co->bhwo", t, numpy(conv.kernel)[0, 0]) + numpy(conv.bias)

    reduced = numpy(layer.sr_norm(layer.sr(x)))
    q = project(layer.q, x).reshape(2, 16, heads, 4).transpose(0, 2, 1, 3)
    k = project(layer.k, reduced).reshape(2, 4, heads, 4).transpose(0, 2, 1, 3)
    v = project(layer.v, reduced).reshape(2, 4, heads, 4).transpose(0, 2, 1, 3)
    logits = q @ k.transpose(0, 1, 3, 2) * 4**-0.5 + bias
    attn = np.exp(logits - logits.max(-1, keepdims=True))
    attn /= attn.sum(-1, keepdims=True)
    ref = (attn @ v).transpose(0, 2, 1, 3).reshape(2, 4, 4, dim)
    np.testing.assert_allclose(out, project(layer.proj, ref), atol=1e-5)


def test_attention_rejects_bad_heads():
    with pytest.raises(ValueError, match="divisible"):
        layers.LightweightAttention(10, 3)


@pytest.mark.parametrize(
    "cls, args",
    [
        (layers.CMTBlock, (16, 2, 2.0, 2, True, 0.1)),
        (layers.LightweightAttention, (16, 2, 2)),
        (layers.InvertedResidualFFN, (16, 32)),
        (layers.LocalPerceptionUnit, (16,)),
    ],
)
def test_configs_round_trip(cls, args):
    layer = cls(*args)
    assert _round_trip(layer).get_config() == layer.get_config()


def test_attention_with_a_single_key_is_a_projection_of_the_value():
    layer = layers.LightweightAttention(8, 2, sr_ratio=2, data_format="channels_last")
    x = _normal((2, 2, 2, 8), seed=3)
    bias = layers.RelativePositionBias(2, (2, 2), 2)(x)
    out = numpy(layer(x, bias))
    v = numpy(layer.v(layer.sr_norm(layer.sr(x))))  # the one key's value, broadcast to every query
    np.testing.assert_allclose(out, numpy(layer.proj(np.broadcast_to(v, (2, 2, 2, 8)))), atol=1e-5)


def test_data_format_is_validated():
    with pytest.raises(ValueError, match="data_format must be"):
        layers.PatchEmbedding(8, data_format="nhwc")
