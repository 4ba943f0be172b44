"""MAC counting from the traced graph: exact on a hand-checkable model, and equal to CMT's operation-by-operation
formula (written out here independently of the model code) on the micro configuration, square and not.
The full variants are counted by `keras-cmt info` (tests/test_cli.py checks CMT-Ti's 0.639 GMACs)."""

import os
import sys

import keras
import pytest
from keras import ops

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fixtures", "pretrained"))

import pretrained_helpers as helpers  # noqa: E402

from keras_cmt import variants  # noqa: E402
from keras_cmt.flops import count_macs  # noqa: E402


class _Gram(keras.layers.Layer):
    """x (B, H, W, C) -> (B, H*W, H*W) = x x^T: one batched matmul inside a custom layer."""

    def call(self, x):
        flat = ops.reshape(x, (-1, x.shape[1] * x.shape[2], x.shape[3]))
        return ops.matmul(flat, ops.transpose(flat, (0, 2, 1)))


def test_counts_convolutions_and_matmuls_only():
    inputs = keras.Input((8, 10, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)  # 8*10*4 outputs x 3*3*3
    x = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2)(x)  # 8*10*8 outputs x 3*3
    x = keras.layers.BatchNormalization()(x)  # not counted
    x = _Gram()(x)  # 80*80 outputs x 8
    x = keras.layers.GlobalAveragePooling1D()(x)  # not counted
    outputs = keras.layers.Dense(5, activation="softmax")(x)  # 5 outputs x 80
    model = keras.Model(inputs, outputs)
    total, by_type = count_macs(model, by_type=True)
    assert by_type == {
        "Conv2D": 8 * 10 * 4 * 27,
        "DepthwiseConv2dNative": 8 * 10 * 8 * 9,
        "BatchMatMulV2": 80 * 80 * 8,
        "MatMul": 80 * 5,
    }
    assert total == sum(by_type.values())
    with pytest.raises(ValueError, match=r"input_shape \(4, 10, 3\) does not fit the model's input \(8, 10, 3\)"):
        count_macs(model, input_shape=(4, 10, 3))


def cmt_formula(
    height,
    width,
    depths,
    embed_dims,
    num_heads,
    mlp_ratios,
    stem_channels,
    head_channels,
    classes,
    sr_ratios=(8, 4, 2, 1),
):
    """MACs of CMT written from the paper's/official code's operations (stem, patch embeddings, LPU, LMHSA with
    reduced keys/values, IRFFN, head)."""
    h, w = height // 2, width // 2
    macs = h * w * stem_channels * 9 * 3 + 2 * h * w * stem_channels * 9 * stem_channels
    channels = stem_channels
    for stage in range(4):
        dim, sr = embed_dims[stage], sr_ratios[stage]
        h, w = h // 2, w // 2
        n, n_kv = h * w, (h // sr) * (w // sr)
        hidden = int(dim * mlp_ratios[stage])
        macs += n * dim * 4 * channels  # 2x2 stride-2 patch embedding
        block = n * dim * 9  # LPU: 3x3 depthwise
        block += 2 * n * dim * dim  # q and output projection
        block += n * dim if sr > 1 else 0  # sr x sr stride-sr depthwise on keys/values
        block += 2 * n_kv * dim * dim  # k and v
        block += 2 * n * n_kv * dim  # q k^T and attn v, over all heads
        block += 2 * n * dim * hidden + n * hidden * 9  # IRFFN: expand, 3x3 depthwise, project
        macs += depths[stage] * block
        channels = dim
    macs += h * w * channels * head_channels + head_channels * classes
    return macs


@pytest.mark.parametrize("input_shape", [(64, 64, 3), (96, 128, 3)])
def test_micro_cmt_matches_the_formula(input_shape):
    model = helpers.micro_model(input_shape=input_shape)
    expected = cmt_formula(input_shape[0], input_shape[1], classes=10, **helpers.MICRO_CONFIG)
    assert count_macs(model) == expected


def test_needs_a_static_single_input():
    a, b = keras.Input((4,)), keras.Input((4,))
    with pytest.raises(ValueError, match="single-input model"):
        count_macs(keras.Model([a, b], keras.layers.Add()([a, b])))
    dynamic = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(2, 1)])
    with pytest.raises(ValueError, match=r"needs a static input shape; the model's is \(None, None, 3\)"):
        count_macs(dynamic)
    assert count_macs(dynamic, input_shape=(4, 10, 3)) == 4 * 10 * 2 * 3


@pytest.mark.parametrize("name", list(variants.VARIANTS))
def test_variant_table_macs_are_counted_from_the_built_models(name):
    """The table `keras-cmt info` prints on any backend is what the TensorFlow graph of each variant executes."""
    from keras_cmt import build_model, variants

    assert count_macs(build_model(name)) == variants.VARIANTS[name].macs
    keras.backend.clear_session()
