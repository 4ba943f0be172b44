"""`fuse_for_inference`: the same CMT with its normalisations folded into convolutions, for serving.

Training needs the official structure (BatchNorm statistics, LayerNorm affines, residual adds); inference does not.
Folding them is exact up to float rounding (the official fixtures still match to 1e-4) and leaves fewer ops, which
is what TensorFlow's CPU executor and TFLite/XNNPACK spend their time on. See `keras_cmt.layers.fused_inference`
for what each block becomes.
"""

import keras
import numpy as np

from keras_cmt.cmt import STAGE_LETTERS
from keras_cmt.layers import PatchEmbedding, RelativePositionBias
from keras_cmt.layers.fused_inference import ChannelShift, FusedCMTBlock, HeadsLastBias
from keras_cmt.layers.lightweight_attention import absorbs_projections, key_side_weights


def _np(variable):
    return np.asarray(variable.numpy() if hasattr(variable, "numpy") else variable, dtype=np.float64)


def _bn_affine(layer):
    """BatchNorm in inference as y = a * x + c."""
    a = _np(layer.gamma) / np.sqrt(_np(layer.moving_variance) + layer.epsilon)
    return a, _np(layer.beta) - _np(layer.moving_mean) * a


def _pointwise(conv):
    kernel = _np(conv.kernel)[0, 0]
    return kernel, _np(conv.bias) if conv.use_bias else np.zeros(kernel.shape[1])


def _with_identity_tap(kernel):
    """Adds the residual `x + dwconv(x)` to a 3x3 depthwise kernel as +1 on its centre tap."""
    kernel = kernel.copy()
    kernel[1, 1, :, 0] += 1.0
    return kernel


def _shift_and_scale(a, c):
    """For a BatchNorm y = a * x + c feeding a zero-padded convolution W: conv(pad0(y)) = conv_{W*a}(pad0(x + c/a)).

    A channel with a == 0 (gamma exactly 0) gets a tiny scale instead: its output c is then reproduced to float
    precision, the input term being negligible."""
    tiny = 1e-8
    a = np.where(np.abs(a) < tiny, np.where(a < 0, -tiny, tiny), a)
    return c / a, a


def _fused_block_weights(block, key_side_projections=False):
    attn, mlp = block.attn, block.mlp
    w = {}
    w["lpu_kernel"] = _with_identity_tap(_np(block.lpu.proj.kernel))
    w["lpu_bias"] = _np(block.lpu.proj.bias)

    g1, b1 = _np(block.norm1.gamma), _np(block.norm1.beta)
    wq, bq = _pointwise(attn.q)
    wq, bq = g1[:, None] * wq * attn.scale, (b1 @ wq + bq) * attn.scale
    wp, bp = _pointwise(attn.proj)
    if key_side_projections:  # stored in the per-head layout, so serving does not re-derive it per call
        w["query_heads"], w["key_bias_kernel"], w["out_heads"] = (
            np.asarray(t) for t in key_side_weights(wq, bq, wp, attn.num_heads))
    else:
        w["q_kernel"], w["q_bias"] = wq[None, None], bq
        w["proj_kernel"] = wp[None, None]
    w["proj_bias"] = bp
    wk, bk = _pointwise(attn.k)
    wv, bv = _pointwise(attn.v)
    if attn.sr_ratio > 1:
        k_sr, b_sr = _np(attn.sr.kernel), _np(attn.sr.bias)
        a_s, c_s = _bn_affine(attn.sr_norm)
        w["sr_kernel"] = k_sr * (g1 * a_s)[None, None, :, None]
        w["sr_bias"] = a_s * (b_sr + b1 * k_sr.sum(axis=(0, 1))[:, 0]) + c_s
        w["k_kernel"], w["k_bias"] = wk[None, None], bk
        w["v_kernel"], w["v_bias"] = wv[None, None], bv
    else:
        w["k_kernel"], w["k_bias"] = (g1[:, None] * wk)[None, None], b1 @ wk + bk
        w["v_kernel"], w["v_bias"] = (g1[:, None] * wv)[None, None], b1 @ wv + bv

    g2, b2 = _np(block.norm2.gamma), _np(block.norm2.beta)
    w1, c1 = _pointwise(mlp.conv1)
    w["fc1_kernel"], w["fc1_bias"] = (g2[:, None] * w1)[None, None], b2 @ w1 + c1
    w["dw_shift"], a1 = _shift_and_scale(*_bn_affine(mlp.norm1))
    w["dw_kernel"] = _with_identity_tap(_np(mlp.dwconv.kernel)) * a1[None, None, :, None]
    w["dw_bias"] = _np(mlp.dwconv.bias)
    a2, s2 = _bn_affine(mlp.norm2)
    a3, s3 = _bn_affine(mlp.norm3)
    w2, c2 = _pointwise(mlp.conv2)
    w["fc2_kernel"] = ((a2[:, None] * w2) * a3[None, :])[None, None]
    w["fc2_bias"] = (s2 @ w2 + c2) * a3 + s3
    return w


def _assign(layer, values):
    for name, value in values.items():
        variable = getattr(layer, name)
        variable.assign(np.asarray(value, dtype=np.float32).reshape(variable.shape))


def is_training_form(model):
    """Whether `model` is a CMT built by `keras_cmt.CMT` with its normalisations still separate: what
    `fuse_for_inference` takes (an already fused model, or any other model, is not)."""
    names = {layer.name for layer in model.layers}
    return {"stem_conv1", "stem_norm1", "blocks_a_0"} <= names


def fuse_for_inference(model, name=None, key_side_projections=True, projection_cost=1.0):
    """Returns a new model computing `model`'s inference function with folded normalisations.

    With `key_side_projections` (the default), the stages where it saves multiply-adds (`absorbs_projections`,
    with `projection_cost`, the cost of a projection multiply-add relative to an attention one) move their
    attention's query and output projections onto the keys and values.

    `model` is any model built by `keras_cmt.CMT` or a variant builder (any input size, with or without top). The
    result has the same inputs, outputs and output layer names ("head", "predictions", "stage_1".."stage_4"), is
    for inference only (no dropout, drop path or BatchNorm updates; its weights are not trainable) and saves as a
    `.keras` file like any model.
    """
    if not is_training_form(model):
        raise ValueError(
            f"fuse_for_inference needs a model built by keras_cmt.CMT (not yet fused); {model.name!r} is not one."
        )
    layer_names = {layer.name for layer in model.layers}
    get = model.get_layer
    inputs = keras.Input(model.input_shape[1:], name=model.inputs[0].name.split(":")[0])
    assignments = []

    def conv(layer_name, kernel, bias, padding="same", strides=1):
        layer = keras.layers.Conv2D(kernel.shape[-1], kernel.shape[:2], strides=strides, padding=padding,
                                    name=layer_name)
        assignments.append((layer, {"kernel": kernel, "bias": bias}))
        return layer

    # Stem: conv -> GELU -> BN, three times; each BN moves into the next convolution (as a shift of its input
    # and a scaled kernel for the zero-padded ones, exactly for the unpadded patch embedding).
    x = keras.layers.ZeroPadding2D(1, name="stem_pad1")(inputs)
    first = get("stem_conv1")
    x = conv("stem_conv1", _np(first.kernel), _np(first.bias), padding="valid", strides=2)(x)
    x = keras.layers.Activation("gelu", name="stem_gelu1")(x)
    for i in (2, 3):
        shift_value, a = _shift_and_scale(*_bn_affine(get(f"stem_norm{i - 1}")))
        shift = ChannelShift(name=f"stem_shift{i}")
        x = shift(x)
        assignments.append((shift, {"shift": shift_value}))
        layer = get(f"stem_conv{i}")
        x = conv(f"stem_conv{i}", _np(layer.kernel) * a[None, None, :, None], _np(layer.bias))(x)
        x = keras.layers.Activation("gelu", name=f"stem_gelu{i}")(x)
    a3, c3 = _bn_affine(get("stem_norm3"))

    for stage, letter in enumerate(STAGE_LETTERS):
        source = get(f"patch_embed_{letter}")
        embed = PatchEmbedding(source.embed_dim, source.patch_size, source.epsilon, name=f"patch_embed_{letter}")
        x = embed(x)
        kernel, bias = _np(source.proj.kernel), _np(source.proj.bias)
        if stage == 0:  # the stem's last BatchNorm feeds this unpadded convolution: fold it exactly
            bias = bias + np.einsum("hwio,i->o", kernel, c3)
            kernel = kernel * a3[None, None, :, None]
        assignments.append((embed.proj, {"kernel": kernel, "bias": bias}))
        assignments.append((embed.norm, {"gamma": _np(source.norm.gamma), "beta": _np(source.norm.beta)}))
        bias_source = get(f"relative_pos_{letter}")
        bias_layer = RelativePositionBias(bias_source.num_heads, bias_source.query_size, bias_source.sr_ratio,
                                          name=f"relative_pos_{letter}")
        position_bias = bias_layer(x)
        assignments.append((bias_layer, {"bias": _np(bias_source.bias)}))
        n_q, n_k = bias_source.bias.shape[1:]
        key_side = key_side_projections and absorbs_projections(n_q, n_k, source.embed_dim, bias_source.num_heads,
                                                                projection_cost)
        if key_side:
            position_bias = HeadsLastBias(name=f"relative_pos_{letter}_heads_last")(position_bias)
        index = 0
        while f"blocks_{letter}_{index}" in layer_names:
            block = get(f"blocks_{letter}_{index}")
            fused = FusedCMTBlock(block.dim, block.num_heads, block.mlp.hidden_dim, block.sr_ratio,
                                  block.ln_epsilon, key_side_projections=key_side, name=f"blocks_{letter}_{index}")
            x = fused(x, position_bias)
            assignments.append((fused, _fused_block_weights(block, key_side)))
            index += 1
        x = keras.layers.Identity(name=f"stage_{stage + 1}")(x)

    head_conv = get("head_conv")
    a, c = _bn_affine(get("head_norm"))
    x = conv("head_conv", _np(head_conv.kernel) * a, _np(head_conv.bias) * a + c, padding="valid")(x)
    x = keras.layers.Activation("swish", name="head_swish")(x)
    if "head" in layer_names:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        head = get("head")
        dense = keras.layers.Dense(head.units, name="head")
        x = dense(x)
        assignments.append((dense, {"kernel": _np(head.kernel), "bias": _np(head.bias)}))
        x = keras.layers.Activation(get("predictions").activation, dtype="float32", name="predictions")(x)
    elif "avg_pool" in layer_names:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif "max_pool" in layer_names:
        x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)

    fused_model = keras.Model(inputs, x, name=name or f"{model.name}_fused")
    for layer, values in assignments:
        _assign(layer, values)
    fused_model.trainable = False
    return fused_model
