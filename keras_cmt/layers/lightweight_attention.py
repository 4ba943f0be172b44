"""CMT's lightweight multi-head self-attention (LMHSA).

Keys and values come from the feature map shrunk by a k x k stride-k depthwise convolution + BatchNorm, which cuts
the attention cost by k^2; a learned relative-position bias is added to the logits. Everything stays NHWC with
4-D tensors and 1x1 convolutions for the projections (the official nn.Linear layers), the forms that TensorFlow,
TFLite/XNNPACK and the GPU delegate handle without reshaping to 5-D or falling back.

Where it costs fewer multiply-adds (`absorbs_projections`: every stage but the last in all four variants), the
query and output projections move onto the keys and values: per head h, (x Wq_h + bq_h) k_h^T =
x (k_h Wq_h^T)^T + k_h bq_h^T and A_h (v_h Wo_h) = (A_h v_h) Wo_h, and the spatial reduction has made the keys 4-64x
fewer than the queries. The heads then sit side by side along the key axis, and both attention products become one
matrix product each without transposing the queries or the output. This layer trains in that form (same
parameters and function; the gradients reach Wq and Wo through the keys and values); `fuse_for_inference` serves
in it.
"""

import keras
from keras import ops

from keras_cmt.layers.batch_norm import CMTBatchNormalization
from keras_cmt.layers.pointwise_conv import PointwiseConv2D


def multi_head_attention(q, k, v, relative_position_bias, num_heads):
    """softmax(q k^T + bias) v over heads, NHWC in and out.

    q: (B, H, W, C), projected and already scaled; k, v: (B, h, w, C), projected; the bias (1, heads, H*W, h*w).
    Shared by `LightweightAttention` and the fused inference block. The softmax runs in float32 (keeps
    mixed-precision training stable; a no-op cast in float32). With a single key (stage 4 of an input below 64
    pixels) the weights are exactly 1 and are returned as such, which also spares Keras' warning about a softmax
    over an axis of size 1.
    """
    height, width, dim = q.shape[1], q.shape[2], q.shape[3]
    if height is None or width is None:
        raise ValueError("CMT attention needs a static height and width (the bias size depends on them).")
    head_dim = dim // num_heads
    n_k = k.shape[1] * k.shape[2]
    q = ops.transpose(ops.reshape(q, (-1, height * width, num_heads, head_dim)), (0, 2, 1, 3))  # B, h, Nq, d
    k = ops.transpose(ops.reshape(k, (-1, n_k, num_heads, head_dim)), (0, 2, 3, 1))  # B, h, d, Nk: k^T already
    v = ops.transpose(ops.reshape(v, (-1, n_k, num_heads, head_dim)), (0, 2, 1, 3))  # B, h, Nk, d
    logits = ops.matmul(q, k) + ops.cast(relative_position_bias, q.dtype)
    if n_k == 1:
        attn = ops.ones_like(logits, dtype=v.dtype)
    else:
        attn = ops.cast(ops.softmax(ops.cast(logits, "float32"), axis=-1), v.dtype)
    out = ops.matmul(attn, v)  # B, heads, Nq, d
    return ops.reshape(ops.transpose(out, (0, 2, 1, 3)), (-1, height, width, dim))


def absorbs_projections(query_count, key_count, dim, num_heads, projection_cost=1.0):
    """Whether moving the query and output projections onto the keys and values saves multiply-adds.

    Per block and image, the query-side form spends 2 N C^2 on the two projections and 2 N M C on the attention
    products; the key-side form 2 M C^2 on folding them into keys and values, 2 N M C heads on the (now
    C-wide) products, and M C heads on the query bias term. N queries, M keys, C channels. `projection_cost`
    weighs a projection multiply-add against an attention one: below 1 where projections run faster (int8
    weights), which keeps the query-side form in more stages.
    """
    query_side = 2 * query_count * dim * dim * projection_cost + 2 * query_count * key_count * dim
    key_side = 2 * key_count * dim * dim * projection_cost + (2 * query_count + 1) * key_count * dim * num_heads
    return key_side < query_side


def key_side_weights(q_kernel, q_bias, proj_kernel, num_heads):
    """The query and output projections in the layout `key_side_attention` reads: (Wq_h^T per head, a (C, heads)
    kernel whose column h holds bq_h on head h's channels, Wo_h per head), from q_kernel, proj_kernel (C, C) and
    q_bias (C,). Keras ops, so the training layer runs it in its graph and `fuse_for_inference` on NumPy arrays."""
    dim = q_kernel.shape[-1]
    head_dim = dim // num_heads
    query_heads = ops.transpose(ops.reshape(q_kernel, (dim, num_heads, head_dim)), (1, 2, 0))
    per_head_bias = ops.reshape(q_bias, (num_heads, head_dim, 1))
    key_bias_kernel = ops.reshape(per_head_bias * ops.expand_dims(ops.eye(num_heads, dtype=q_bias.dtype), 1),
                                  (dim, num_heads))
    return query_heads, key_bias_kernel, ops.reshape(proj_kernel, (num_heads, head_dim, dim))


def heads_last(relative_position_bias):
    """A stage's (1, heads, N, M) position bias as (1, N, heads * M), the key-side form's logits layout."""
    _, heads, n_q, n_k = relative_position_bias.shape
    return ops.reshape(ops.transpose(relative_position_bias, (0, 2, 1, 3)), (1, n_q, heads * n_k))


def _matmul_transposed(a, b):
    """a @ b^T over the last two axes; on TensorFlow one BatchMatMul with adj_y instead of a transpose and a
    matmul (what `ops.einsum` would be lowered to is an Einsum op the MAC counter does not read)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.matmul(a, b, transpose_b=True)
    return ops.einsum("...qc,...kc->...qk", a, b)


def key_side_attention(queries, k, v, query_heads, key_bias_kernel, out_heads, out_bias, heads_last_bias,
                       num_heads):
    """The attention with its output projection, softmax(q k^T + bias) v Wo + bo, in the key-side form (module
    docstring). Each head's attention rows sum to 1, so bo / heads added to each head's projected values
    gives bo, on M rows instead of N.

    queries: (B, H, W, C), the normalised input; k, v: (B, h, w, C), projected; query_heads, out_heads:
    (heads, C / heads, C), Wq_h^T and Wo_h; key_bias_kernel: (C, heads), column h holding bq_h on head h's
    channels; out_bias: (C,), bo; heads_last_bias: (1, H*W, heads * h*w), the stage's position bias with the
    heads along the key axis.
    """
    height, width, dim = queries.shape[1], queries.shape[2], queries.shape[3]
    if height is None or width is None:
        raise ValueError("CMT attention needs a static height and width (the bias size depends on them).")
    head_dim = dim // num_heads
    n_q, n_k = height * width, k.shape[1] * k.shape[2]

    def per_head(t, weights):  # (B, h, w, C) -> (B, heads * h*w, C): head j's keys times its (d, C) matrix
        if num_heads == 1:
            return ops.reshape(ops.matmul(ops.reshape(t, (-1, dim)), weights[0]), (-1, n_k, dim))
        # Heads first and the batch folded into the rows, so both operands have the same batch rank: TensorFlow
        # 2.21's oneDNN BatchMatMul gives wrong results (and corrupts the heap) when it has to broadcast a
        # (heads, d, C) operand over a batch of 2 or more.
        t = ops.reshape(ops.transpose(ops.reshape(t, (-1, n_k, num_heads, head_dim)), (2, 0, 1, 3)),
                        (num_heads, -1, head_dim))
        t = ops.reshape(ops.matmul(t, weights), (num_heads, -1, n_k, dim))
        return ops.reshape(ops.transpose(t, (1, 0, 2, 3)), (-1, num_heads * n_k, dim))

    key_bias = ops.reshape(ops.matmul(ops.reshape(k, (-1, dim)), key_bias_kernel), (-1, n_k, num_heads))
    if num_heads > 1:  # B, M, heads -> B, heads, M: bq_h . k_h per head and key
        key_bias = ops.transpose(key_bias, (0, 2, 1))
    key_bias = ops.reshape(key_bias, (-1, 1, num_heads * n_k))
    keys = per_head(k, query_heads)
    logits = _matmul_transposed(ops.reshape(queries, (-1, n_q, dim)), keys)
    logits = logits + (ops.cast(heads_last_bias, logits.dtype) + key_bias)
    if n_k == 1:
        attn = ops.ones_like(logits)
    else:
        logits = ops.cast(logits, "float32")
        if num_heads > 1:
            attn = ops.reshape(ops.softmax(ops.reshape(logits, (-1, n_q, num_heads, n_k)), axis=-1),
                               (-1, n_q, num_heads * n_k))
        else:
            attn = ops.softmax(logits, axis=-1)
        attn = ops.cast(attn, v.dtype)
    values = per_head(v, out_heads) + ops.cast(out_bias / num_heads, v.dtype)
    out = ops.matmul(attn, values)  # B, N, C
    return ops.reshape(out, (-1, height, width, dim))


@keras.saving.register_keras_serializable(package="keras_cmt")
class LightweightAttention(keras.layers.Layer):
    """Called as `layer(x, relative_position_bias)` with x (B, H, W, C) and the bias (1, heads, H*W, Hk*Wk).

    Args:
        dim: channels C.
        num_heads: heads; C must divide by it.
        sr_ratio: spatial reduction of keys/values (1 = none).
        qkv_bias: whether q/k/v projections have a bias (True in every released CMT).
        bn_epsilon: epsilon of the reduction's BatchNorm (1e-5 as in PyTorch).
        key_side_projections: train in the key-side form where it saves multiply-adds (same function).
    """

    def __init__(self, dim, num_heads, sr_ratio=1, qkv_bias=True, bn_epsilon=1e-5, key_side_projections=True,
                 **kwargs):
        super().__init__(**kwargs)
        self.key_side_projections = bool(key_side_projections)
        self.dim = int(dim)
        self.num_heads = int(num_heads)
        self.sr_ratio = int(sr_ratio)
        self.qkv_bias = bool(qkv_bias)
        self.bn_epsilon = float(bn_epsilon)
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}.")
        self.head_dim = self.dim // self.num_heads
        self.scale = self.head_dim ** -0.5
        policy = self.dtype_policy

        def pointwise(name, use_bias):
            return PointwiseConv2D(self.dim, 1, use_bias=use_bias, name=name, dtype=policy)

        self.q = pointwise("q", self.qkv_bias)
        self.k = pointwise("k", self.qkv_bias)
        self.v = pointwise("v", self.qkv_bias)
        self.proj = pointwise("proj", True)
        if self.sr_ratio > 1:
            self.sr = keras.layers.DepthwiseConv2D(
                self.sr_ratio, strides=self.sr_ratio, padding="valid", name="sr", dtype=policy
            )
            self.sr_norm = CMTBatchNormalization(
                epsilon=self.bn_epsilon, momentum=0.9, name="sr_norm", dtype=policy
            )

    def build(self, inputs_shape, relative_position_bias_shape=None):
        input_shape = inputs_shape
        for layer in (self.q, self.k, self.v, self.proj):
            layer.build(input_shape)
        if self.sr_ratio > 1:
            self.sr.build(input_shape)
            self.sr_norm.build(self.sr.compute_output_shape(input_shape))

    def call(self, inputs, relative_position_bias, training=None):
        source = inputs
        if self.sr_ratio > 1:
            source = self.sr_norm(self.sr(inputs), training=training)
        _, _, n_q, n_k = relative_position_bias.shape
        # Training only: inference graphs (MAC counts, ONNX and --no_fuse TFLite exports) keep the official
        # form, and serving has `fuse_for_inference`, which takes the key-side form itself.
        if training and self.key_side_projections and absorbs_projections(n_q, n_k, self.dim, self.num_heads):
            return self._key_side(inputs, self.k(source), self.v(source), relative_position_bias)
        q = self.q(inputs) * ops.cast(self.scale, inputs.dtype)
        out = multi_head_attention(q, self.k(source), self.v(source), relative_position_bias, self.num_heads)
        return self.proj(out)

    def _key_side(self, inputs, k, v, relative_position_bias):
        """The key-side form from the layer's own q and proj weights (CMT-Ti@160 batch 32 training, interleaved:
        0.96x the step)."""
        dtype = inputs.dtype
        scale = ops.cast(self.scale, dtype)
        q_kernel = ops.reshape(ops.cast(self.q.kernel, dtype), (self.dim, self.dim)) * scale
        q_bias = ops.cast(self.q.bias, dtype) * scale if self.qkv_bias else ops.zeros((self.dim,), dtype=dtype)
        proj_kernel = ops.reshape(ops.cast(self.proj.kernel, dtype), (self.dim, self.dim))
        query_heads, key_bias_kernel, out_heads = key_side_weights(q_kernel, q_bias, proj_kernel, self.num_heads)
        return key_side_attention(inputs, k, v, query_heads, key_bias_kernel, out_heads,
                                  ops.cast(self.proj.bias, dtype), heads_last(relative_position_bias),
                                  self.num_heads)

    def compute_output_shape(self, inputs_shape, relative_position_bias_shape=None):
        return inputs_shape

    def get_config(self):
        return {
            **super().get_config(),
            "dim": self.dim,
            "num_heads": self.num_heads,
            "sr_ratio": self.sr_ratio,
            "qkv_bias": self.qkv_bias,
            "bn_epsilon": self.bn_epsilon,
            "key_side_projections": self.key_side_projections,
        }
