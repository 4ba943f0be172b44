"""Patch aggregation between CMT stages: a 2x2 stride-2 convolution followed by LayerNorm (eps 1e-5)."""

import keras

from keras_cmt.layers.layer_norm import CMTLayerNormalization


@keras.saving.register_keras_serializable(package="keras_cmt")
class PatchEmbedding(keras.layers.Layer):
    """Halves the spatial size and projects to `embed_dim` channels, NHWC in and out."""

    def __init__(self, embed_dim, patch_size=2, epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.embed_dim = int(embed_dim)
        self.patch_size = int(patch_size)
        self.epsilon = float(epsilon)
        self.proj = keras.layers.Conv2D(
            self.embed_dim, self.patch_size, strides=self.patch_size, padding="valid", name="proj",
            dtype=self.dtype_policy,
        )
        self.norm = CMTLayerNormalization(epsilon=self.epsilon, name="norm", dtype=self.dtype_policy)

    def build(self, input_shape):
        self.proj.build(input_shape)
        self.norm.build(self.proj.compute_output_shape(input_shape))

    def call(self, inputs, training=None):
        return self.norm(self.proj(inputs), training=training)

    def compute_output_shape(self, input_shape):
        return self.proj.compute_output_shape(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "embed_dim": self.embed_dim,
            "patch_size": self.patch_size,
            "epsilon": self.epsilon,
        }
