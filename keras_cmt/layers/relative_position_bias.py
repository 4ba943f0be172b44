"""The learned relative-position bias of one CMT stage.

CMT adds a (heads, queries, keys) bias to the attention logits of every block of a stage; all blocks of the stage
share one tensor. Owning it in its own layer lets the functional model share it by graph wiring, and gives the
checkpoint converter and the resolution resizer one variable to address (`relative_pos_a` ... `relative_pos_d`).
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_cmt")
class RelativePositionBias(keras.layers.Layer):
    """Holds a (num_heads, query_hw, key_hw) bias; called on the stage's feature map, returns it with a batch axis.

    Args:
        num_heads: attention heads of the stage.
        query_size: (height, width) of the stage's feature map.
        sr_ratio: the key/value reduction ratio; keys form a (height // sr, width // sr) grid.
    """

    def __init__(self, num_heads, query_size, sr_ratio, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.query_size = tuple(int(s) for s in query_size)
        self.sr_ratio = int(sr_ratio)
        h, w = self.query_size
        if h % self.sr_ratio or w % self.sr_ratio:
            raise ValueError(
                f"Stage feature map {h}x{w} is not divisible by the reduction ratio {self.sr_ratio}; "
                "the input height and width must be multiples of 32."
            )
        self.key_size = (h // self.sr_ratio, w // self.sr_ratio)

    def build(self, input_shape=None):
        n_q = self.query_size[0] * self.query_size[1]
        n_k = self.key_size[0] * self.key_size[1]
        self.bias = self.add_weight(
            name="bias",
            shape=(self.num_heads, n_q, n_k),
            # The official code draws it from N(0, 1) (torch.randn).
            initializer=keras.initializers.RandomNormal(stddev=1.0),
            trainable=True,
        )

    def call(self, inputs):
        return ops.expand_dims(ops.cast(self.bias, self.compute_dtype), 0)

    def compute_output_shape(self, input_shape):
        return (1,) + tuple(self.bias.shape)

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "query_size": list(self.query_size),
            "sr_ratio": self.sr_ratio,
        }
