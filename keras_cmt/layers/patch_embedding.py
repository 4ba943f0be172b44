"""Patch aggregation between CMT stages: a 2x2 stride-2 convolution, then LayerNorm over channels (eps 1e-5)."""

import keras

from keras_cmt.layers import checkpoint_layout, initializers
from keras_cmt.layers.data_format import standardize_data_format
from keras_cmt.layers.layer_norm import channel_layer_norm


@keras.saving.register_keras_serializable(package="keras_cmt")
class PatchEmbedding(keras.layers.Layer):
    """Halves the spatial size and projects to `embed_dim` channels (the official `PatchEmbed`)."""

    def __init__(self, embed_dim, patch_size=2, epsilon=1e-5, data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.embed_dim = int(embed_dim)
        self.patch_size = int(patch_size)
        self.epsilon = float(epsilon)
        self.data_format = standardize_data_format(data_format)
        self.proj = keras.layers.Conv2D(
            self.embed_dim,
            self.patch_size,
            strides=self.patch_size,
            padding="valid",
            data_format=self.data_format,
            kernel_initializer=initializers.conv_kernel(),
            name="proj",
            dtype=self.dtype_policy,
        )
        self.norm = channel_layer_norm(self.epsilon, self.data_format, name="norm", dtype=self.dtype_policy)

    def build(self, input_shape):
        self.proj.build(input_shape)
        self.norm.build(self.proj.compute_output_shape(input_shape))

    def call(self, inputs):
        return self.norm(self.proj(inputs))

    def compute_output_shape(self, input_shape):
        return self.proj.compute_output_shape(input_shape)

    def checkpoint_entries(self, prefix):
        """The official keys under `prefix` ("patch_embed_a"): the convolution proj and the LayerNorm norm."""
        return [
            *checkpoint_layout.conv_entries(self.proj, f"{prefix}.proj"),
            *checkpoint_layout.layer_norm_entries(self.norm, f"{prefix}.norm"),
        ]

    def get_config(self):
        return {
            **super().get_config(),
            "embed_dim": self.embed_dim,
            "patch_size": self.patch_size,
            "epsilon": self.epsilon,
            "data_format": self.data_format,
        }
