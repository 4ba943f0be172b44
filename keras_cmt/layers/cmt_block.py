"""One CMT block: x = LPU(x); x = x + LMHSA(LN(x)); x = x + IRFFN(LN(x)), both residuals with drop path."""

import keras

from keras_cmt.layers import checkpoint_layout, folding
from keras_cmt.layers.data_format import standardize_data_format
from keras_cmt.layers.drop_path import DropPath
from keras_cmt.layers.inverted_residual_ffn import InvertedResidualFFN
from keras_cmt.layers.layer_norm import channel_layer_norm
from keras_cmt.layers.lightweight_attention import LightweightAttention
from keras_cmt.layers.local_perception_unit import LocalPerceptionUnit


@keras.saving.register_keras_serializable(package="keras_cmt")
class CMTBlock(keras.layers.Layer):
    """Called as `block(x, relative_position_bias)` on a feature map.

    Args:
        dim, num_heads, sr_ratio, qkv_bias: as in `LightweightAttention`.
        mlp_ratio: IRFFN expansion; hidden width int(dim * mlp_ratio).
        drop_path_rate: stochastic depth of both residual branches.
        ln_epsilon: LayerNorm epsilon (1e-6 in the official blocks).
        data_format: "channels_last" or "channels_first" (default: Keras' image data format).
    """

    def __init__(
        self,
        dim,
        num_heads,
        mlp_ratio,
        sr_ratio=1,
        qkv_bias=True,
        drop_path_rate=0.0,
        ln_epsilon=1e-6,
        data_format=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.dim = int(dim)
        self.num_heads = int(num_heads)
        self.mlp_ratio = float(mlp_ratio)
        self.sr_ratio = int(sr_ratio)
        self.qkv_bias = bool(qkv_bias)
        self.drop_path_rate = float(drop_path_rate)
        self.ln_epsilon = float(ln_epsilon)
        self.data_format = standardize_data_format(data_format)
        policy, data_format = self.dtype_policy, self.data_format
        self.lpu = LocalPerceptionUnit(self.dim, data_format=data_format, name="lpu", dtype=policy)
        self.norm1 = channel_layer_norm(self.ln_epsilon, data_format, name="norm1", dtype=policy)
        self.attn = LightweightAttention(
            self.dim, self.num_heads, self.sr_ratio, self.qkv_bias, data_format=data_format, name="attn", dtype=policy
        )
        self.norm2 = channel_layer_norm(self.ln_epsilon, data_format, name="norm2", dtype=policy)
        self.mlp = InvertedResidualFFN(
            self.dim, int(self.dim * self.mlp_ratio), data_format=data_format, name="mlp", dtype=policy
        )
        self.drop_path = DropPath(self.drop_path_rate, name="drop_path", dtype=policy)

    def build(self, inputs_shape, relative_position_bias_shape=None):
        for layer in (self.lpu, self.norm1, self.norm2, self.mlp):
            layer.build(inputs_shape)
        self.attn.build(inputs_shape, relative_position_bias_shape)

    def call(self, inputs, relative_position_bias, training=None):
        x = self.lpu(inputs)
        x = x + self.drop_path(self.attn(self.norm1(x), relative_position_bias, training=training), training=training)
        return x + self.drop_path(self.mlp(self.norm2(x), training=training), training=training)

    def checkpoint_entries(self, prefix):
        """The official keys under `prefix` ("blocks_a.0"): the LPU as proj, norm1, attn, norm2, mlp."""
        return [
            *self.lpu.checkpoint_entries(f"{prefix}.proj"),
            *checkpoint_layout.layer_norm_entries(self.norm1, f"{prefix}.norm1"),
            *self.attn.checkpoint_entries(f"{prefix}.attn"),
            *checkpoint_layout.layer_norm_entries(self.norm2, f"{prefix}.norm2"),
            *self.mlp.checkpoint_entries(f"{prefix}.mlp"),
        ]

    def serving_form(self, key_side=False, head_projections="matmul"):
        """The block for inference, every normalisation folded (`keras_cmt.fused_layers.FusedCMTBlock`), and the
        weights to give it once built: each part's own fold (`folded`), the LayerNorms' affines going into the
        part after them."""
        from keras_cmt.fused_layers import FusedCMTBlock

        serving = FusedCMTBlock(
            self.dim,
            self.num_heads,
            self.mlp.hidden_dim,
            self.sr_ratio,
            self.ln_epsilon,
            key_side_projections=key_side,
            head_projections=head_projections,
            name=self.name,
        )
        lpu_kernel, lpu_bias = self.lpu.folded()
        weights = {"lpu_kernel": lpu_kernel, "lpu_bias": lpu_bias}
        weights.update(self.attn.folded(folding.array(self.norm1.gamma), folding.array(self.norm1.beta), key_side))
        weights.update(self.mlp.folded(folding.array(self.norm2.gamma), folding.array(self.norm2.beta)))
        return serving, weights

    def compute_output_shape(self, inputs_shape, relative_position_bias_shape=None):
        return inputs_shape

    def get_config(self):
        return {
            **super().get_config(),
            "dim": self.dim,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "sr_ratio": self.sr_ratio,
            "qkv_bias": self.qkv_bias,
            "drop_path_rate": self.drop_path_rate,
            "ln_epsilon": self.ln_epsilon,
            "data_format": self.data_format,
        }
