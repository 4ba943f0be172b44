"""The serving form of CMT's parts, with every BatchNorm and LayerNorm affine folded into a convolution.

`keras_cmt.fuse_for_inference` puts these in place of the training layers and fills them from a trained model.
They compute the same function (to float rounding) with fewer, larger ops, in `keras.ops` like the model itself:
the LPU and IRFFN shortcuts become the centre tap of their depthwise kernels, the LayerNorm affines move into the
projections that read them, the attention scale into q, and a BatchNorm y = a * x + c between a GELU and a
zero-padded convolution becomes a per-channel shift of the convolution's input by c / a and a kernel scaled by a:
conv(pad0(a * x + c)) = conv_{a*W}(pad0(x + c / a)), exact at the borders too. What is left per block: depthwise
conv, LayerNorm without affine, the attention's projections, two matrix products and a softmax, LayerNorm, two 1x1
projections around a depthwise conv, and two GELUs. The 1x1 projections are matrix products on the flattened
positions, which TensorFlow's oneDNN fuses with their bias and GELU and TFLite runs as FULLY_CONNECTED.

Where it costs fewer multiply-adds (`absorbs_projections`), the query and output projections move onto the keys and
values: per head h, (x Wq_h + bq_h) k_h^T = x (k_h Wq_h^T)^T + k_h bq_h^T and A_h (v_h Wo_h) = (A_h v_h) Wo_h, and
the spatial reduction has made the keys 4-64x fewer than the queries. The heads then sit side by side along the key
axis, and both attention products become one matrix product each without transposing the queries or the output.
Channels last only: the form TensorFlow, TFLite and ONNX serve.
"""

import keras
from keras import ops

from keras_cmt.layers.gelu import exact_gelu


def pointwise(x, kernel, bias, gelu=False):
    """A 1x1 convolution as MatMul + bias (+ exact GELU) on the flattened positions; kernel (C_in, C_out).

    `ops.add` of a vector is a BiasAdd on TensorFlow, the pattern its oneDNN remapper fuses with the MatMul and
    the GELU into one kernel (`+` would be an AddV2, which keeps the GELU apart)."""
    y = ops.add(ops.matmul(ops.reshape(x, (-1, x.shape[-1])), kernel), bias)
    if gelu:
        y = exact_gelu(y)
    return ops.reshape(y, (-1,) + tuple(x.shape[1:-1]) + (kernel.shape[-1],))


def _layer_norm(x, epsilon):
    mean = ops.mean(x, axis=-1, keepdims=True)
    centred = x - mean
    return centred * ops.rsqrt(ops.mean(ops.square(centred), axis=-1, keepdims=True) + epsilon)


def multi_head_attention(q, k, v, relative_position_bias, num_heads):
    """softmax(q k^T + bias) v over heads; q (B, H, W, C) projected and scaled, k and v (B, h, w, C) projected, the
    bias (1, heads, H*W, h*w)."""
    height, width, dim = q.shape[1], q.shape[2], q.shape[3]
    head_dim = dim // num_heads
    n_k = k.shape[1] * k.shape[2]
    q = ops.transpose(ops.reshape(q, (-1, height * width, num_heads, head_dim)), (0, 2, 1, 3))  # B, h, Nq, d
    k = ops.transpose(ops.reshape(k, (-1, n_k, num_heads, head_dim)), (0, 2, 3, 1))  # B, h, d, Nk: k^T
    v = ops.transpose(ops.reshape(v, (-1, n_k, num_heads, head_dim)), (0, 2, 1, 3))  # B, h, Nk, d
    logits = ops.matmul(q, k) + relative_position_bias
    attn = ops.ones_like(logits) if n_k == 1 else ops.softmax(logits, axis=-1)
    out = ops.matmul(attn, v)
    return ops.reshape(ops.transpose(out, (0, 2, 1, 3)), (-1, height, width, dim))


def absorbs_projections(query_count, key_count, dim, num_heads, projection_cost=1.0):
    """Whether moving the query and output projections onto the keys and values saves multiply-adds.

    Per block and image, the query-side form spends 2 N C^2 on the two projections and 2 N M C on the attention
    products; the key-side form 2 M C^2 on folding them into keys and values, 2 N M C heads on the (now C-wide)
    products, and M C heads on the query bias term. N queries, M keys, C channels. `projection_cost` weighs a
    projection multiply-add against an attention one: below 1 where projections run faster (int8 weights), which
    keeps the query-side form in more stages.
    """
    query_side = 2 * query_count * dim * dim * projection_cost + 2 * query_count * key_count * dim
    key_side = 2 * key_count * dim * dim * projection_cost + (2 * query_count + 1) * key_count * dim * num_heads
    return key_side < query_side


# How the key-side form's per-head products k_h Wq_h^T and v_h Wo_h run, for a multi-head stage. The same weights
# and numbers either way; the engines differ:
# - "matmul": one batch matmul over the heads. TensorFlow (oneDNN) runs it faster than a grouped convolution
#   (benchmarks/RESULTS.md).
# - "conv": one grouped 1x1 convolution (group h: head h's channels times its matrix). For TFLite: XNNPACK's fp16
#   path cannot take a BATCH_MATMUL with a constant operand (a file marked for fp16 inference would fail to prepare
#   on a phone with fp16 arithmetic), and takes a CONV_2D; XNNPACK's fp32 speed is the same.
HEAD_PROJECTIONS = ("matmul", "conv")


def key_side_weights(q_kernel, q_bias, proj_kernel, num_heads):
    """The query and output projections in the layout `key_side_attention` reads: (Wq_h^T per head, a (C, heads)
    kernel whose column h holds bq_h on head h's channels, Wo_h per head), from q_kernel, proj_kernel (C, C) and
    q_bias (C,)."""
    dim = q_kernel.shape[-1]
    head_dim = dim // num_heads
    query_heads = ops.transpose(ops.reshape(q_kernel, (dim, num_heads, head_dim)), (1, 2, 0))
    per_head_bias = ops.reshape(q_bias, (num_heads, head_dim, 1))
    key_bias_kernel = ops.reshape(
        per_head_bias * ops.expand_dims(ops.eye(num_heads, dtype=q_bias.dtype), 1), (dim, num_heads)
    )
    return query_heads, key_bias_kernel, ops.reshape(proj_kernel, (num_heads, head_dim, dim))


def grouped_kernel(per_head_matrices):
    """(heads, d, C) matrices as the (1, 1, d, heads * C) kernel of a grouped 1x1 convolution: group h maps head h's
    d channels to output channels h*C .. (h+1)*C - 1 with matrix h."""
    heads, head_dim, dim = per_head_matrices.shape
    return ops.reshape(ops.transpose(per_head_matrices, (1, 0, 2)), (1, 1, head_dim, heads * dim))


def heads_last(relative_position_bias):
    """A stage's (heads, N, M) position bias as (N, heads * M), the key-side form's logits layout."""
    heads, n_q, n_k = relative_position_bias.shape
    return ops.reshape(ops.transpose(relative_position_bias, (1, 0, 2)), (n_q, heads * n_k))


def key_side_attention(
    queries,
    k,
    v,
    query_heads,
    key_bias_kernel,
    out_heads,
    out_bias,
    heads_last_bias,
    num_heads,
    head_projections="matmul",
):
    """softmax(q k^T + bias) v Wo + bo with the projections on the keys and values (module docstring). Each
    head's attention rows sum to 1, so bo / heads added to each head's projected values gives bo, on M rows
    instead of N.

    queries: (B, H, W, C), the normalised input; k, v: (B, h, w, C), projected; query_heads, out_heads:
    (heads, C / heads, C), Wq_h^T and Wo_h; key_bias_kernel: (C, heads); out_bias: (C,), bo; heads_last_bias:
    (1, H*W, heads * h*w). `head_projections`: how the per-head products k_h Wq_h^T and v_h Wo_h run (see
    `HEAD_PROJECTIONS`).
    """
    height, width, dim = queries.shape[1], queries.shape[2], queries.shape[3]
    head_dim = dim // num_heads
    n_q, n_k = height * width, k.shape[1] * k.shape[2]

    def per_head(t, weights):  # (B, h, w, C) -> (B, heads * h*w, C): head j's keys times its (d, C) matrix
        if num_heads == 1:
            return ops.reshape(ops.matmul(ops.reshape(t, (-1, dim)), weights[0]), (-1, n_k, dim))
        if head_projections == "conv":
            t = ops.conv(t, grouped_kernel(weights))
            t = ops.transpose(ops.reshape(t, (-1, n_k, num_heads, dim)), (0, 2, 1, 3))
            return ops.reshape(t, (-1, num_heads * n_k, dim))
        # Heads first and the batch folded into the rows, so both operands have the same batch rank: TensorFlow
        # 2.21's oneDNN BatchMatMul gives wrong results (and corrupts the heap) when it has to broadcast a
        # (heads, d, C) operand over a batch of 2 or more.
        t = ops.reshape(
            ops.transpose(ops.reshape(t, (-1, n_k, num_heads, head_dim)), (2, 0, 1, 3)), (num_heads, -1, head_dim)
        )
        t = ops.reshape(ops.matmul(t, weights), (num_heads, -1, n_k, dim))
        return ops.reshape(ops.transpose(t, (1, 0, 2, 3)), (-1, num_heads * n_k, dim))

    key_bias = ops.reshape(ops.matmul(ops.reshape(k, (-1, dim)), key_bias_kernel), (-1, n_k, num_heads))
    if num_heads > 1:  # B, M, heads -> B, heads, M: bq_h . k_h per head and key
        key_bias = ops.transpose(key_bias, (0, 2, 1))
    key_bias = ops.reshape(key_bias, (-1, 1, num_heads * n_k))
    keys = per_head(k, query_heads)
    logits = ops.matmul(ops.reshape(queries, (-1, n_q, dim)), ops.swapaxes(keys, 1, 2))
    logits = logits + (heads_last_bias + key_bias)
    if n_k == 1:
        attn = ops.ones_like(logits)
    elif num_heads > 1:
        attn = ops.reshape(
            ops.softmax(ops.reshape(logits, (-1, n_q, num_heads, n_k)), axis=-1), (-1, n_q, num_heads * n_k)
        )
    else:
        attn = ops.softmax(logits, axis=-1)
    values = per_head(v, out_heads) + out_bias / num_heads
    return ops.reshape(ops.matmul(attn, values), (-1, height, width, dim))


@keras.saving.register_keras_serializable(package="keras_cmt")
class HeadsLastBias(keras.layers.Layer):
    """A stage's relative-position bias stored as (1, N, heads * M), for its key-side blocks."""

    def __init__(self, num_heads, query_count, key_count, **kwargs):
        super().__init__(**kwargs)
        self.num_heads, self.query_count, self.key_count = int(num_heads), int(query_count), int(key_count)

    def build(self, input_shape=None):
        self.bias = self.add_weight(
            name="bias", shape=(self.query_count, self.num_heads * self.key_count), initializer="zeros", trainable=False
        )

    def call(self, inputs):
        return ops.expand_dims(self.bias, 0)

    def compute_output_shape(self, input_shape):
        return (1, self.query_count, self.num_heads * self.key_count)

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "query_count": self.query_count,
            "key_count": self.key_count,
        }


@keras.saving.register_keras_serializable(package="keras_cmt")
class ChannelShift(keras.layers.Layer):
    """Adds a fixed per-channel shift: a folded BatchNorm ahead of a zero-padded convolution."""

    def build(self, input_shape):
        self.shift = self.add_weight(name="shift", shape=(input_shape[-1],), initializer="zeros", trainable=False)

    def call(self, inputs):
        return inputs + self.shift


@keras.saving.register_keras_serializable(package="keras_cmt")
class FusedCMTBlock(keras.layers.Layer):
    """A CMT block with folded normalisations; called as `block(x, relative_position_bias)` like `CMTBlock`.

    With `key_side_projections` the attention runs in the key-side form and the bias it is called with is the
    stage's `HeadsLastBias`; `head_projections` picks how its per-head products run (`HEAD_PROJECTIONS`).
    """

    def __init__(
        self,
        dim,
        num_heads,
        hidden_dim,
        sr_ratio=1,
        ln_epsilon=1e-6,
        key_side_projections=False,
        head_projections="matmul",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if head_projections not in HEAD_PROJECTIONS:
            raise ValueError(f"head_projections={head_projections!r}: expected one of {', '.join(HEAD_PROJECTIONS)}")
        self.head_projections = head_projections
        self.dim = int(dim)
        self.num_heads = int(num_heads)
        self.hidden_dim = int(hidden_dim)
        self.sr_ratio = int(sr_ratio)
        self.ln_epsilon = float(ln_epsilon)
        self.key_side_projections = bool(key_side_projections)

    def build(self, inputs_shape, relative_position_bias_shape=None):
        c, h = self.dim, self.hidden_dim

        def weight(name, shape):
            return self.add_weight(name=name, shape=shape, initializer="zeros", trainable=False)

        self.lpu_kernel = weight("lpu_kernel", (3, 3, c, 1))
        self.lpu_bias = weight("lpu_bias", (c,))
        if self.sr_ratio > 1:
            self.sr_kernel = weight("sr_kernel", (self.sr_ratio, self.sr_ratio, c, 1))
            self.sr_bias = weight("sr_bias", (c,))
        if self.key_side_projections:
            d = c // self.num_heads
            self.query_heads = weight("query_heads", (self.num_heads, d, c))
            self.key_bias_kernel = weight("key_bias_kernel", (c, self.num_heads))
            self.out_heads = weight("out_heads", (self.num_heads, d, c))
        else:
            self.q_kernel = weight("q_kernel", (c, c))
            self.q_bias = weight("q_bias", (c,))
            self.proj_kernel = weight("proj_kernel", (c, c))
        self.k_kernel = weight("k_kernel", (c, c))
        self.k_bias = weight("k_bias", (c,))
        self.v_kernel = weight("v_kernel", (c, c))
        self.v_bias = weight("v_bias", (c,))
        self.proj_bias = weight("proj_bias", (c,))
        self.fc1_kernel = weight("fc1_kernel", (c, h))
        self.fc1_bias = weight("fc1_bias", (h,))
        self.dw_shift = weight("dw_shift", (h,))
        self.dw_kernel = weight("dw_kernel", (3, 3, h, 1))
        self.dw_bias = weight("dw_bias", (h,))
        self.fc2_kernel = weight("fc2_kernel", (h, c))
        self.fc2_bias = weight("fc2_bias", (c,))

    def call(self, inputs, relative_position_bias):
        x = ops.depthwise_conv(inputs, self.lpu_kernel, padding="same") + self.lpu_bias
        normed = _layer_norm(x, self.ln_epsilon)
        source = normed
        if self.sr_ratio > 1:
            source = ops.depthwise_conv(normed, self.sr_kernel, strides=self.sr_ratio, padding="valid") + self.sr_bias
        k = pointwise(source, self.k_kernel, self.k_bias)
        v = pointwise(source, self.v_kernel, self.v_bias)
        if self.key_side_projections:
            x = x + key_side_attention(
                normed,
                k,
                v,
                self.query_heads,
                self.key_bias_kernel,
                self.out_heads,
                self.proj_bias,
                relative_position_bias,
                self.num_heads,
                self.head_projections,
            )
        else:
            q = pointwise(normed, self.q_kernel, self.q_bias)
            out = multi_head_attention(q, k, v, relative_position_bias, self.num_heads)
            x = x + pointwise(out, self.proj_kernel, self.proj_bias)
        hidden = pointwise(_layer_norm(x, self.ln_epsilon), self.fc1_kernel, self.fc1_bias, gelu=True)
        hidden = ops.depthwise_conv(hidden + self.dw_shift, self.dw_kernel, padding="same") + self.dw_bias
        hidden = exact_gelu(hidden)
        return x + pointwise(hidden, self.fc2_kernel, self.fc2_bias)

    def compute_output_shape(self, inputs_shape, relative_position_bias_shape=None):
        return inputs_shape

    def get_config(self):
        return {
            **super().get_config(),
            "dim": self.dim,
            "num_heads": self.num_heads,
            "hidden_dim": self.hidden_dim,
            "sr_ratio": self.sr_ratio,
            "ln_epsilon": self.ln_epsilon,
            "key_side_projections": self.key_side_projections,
            "head_projections": self.head_projections,
        }
