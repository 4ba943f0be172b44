"""The learned relative-position bias of one CMT stage.

CMT adds a (heads, queries, keys) bias to the attention logits of every block of a stage; all blocks of the stage
share one tensor. Owning it in its own layer lets the functional model share it by graph wiring, and gives the
checkpoint converter one variable to address (`relative_pos_a` ... `relative_pos_d`).

Its size follows the input size, so weights saved at one resolution load at another: the layer saves its query
grid beside the bias, and on loading (`model.load_weights`, `.keras` files) resizes a bias of another grid
bilinearly over the query and key grids (`keras_cmt.weights.position_bias_resize`). A model built for any input size
(height and width None, as keras-hub's detection and segmentation models build their encoders) keeps the bias at its
trained grid and resizes it the same way at call time, to the grid of the feature map it is called on.
"""

import keras
import numpy as np
from keras import ops

from keras_cmt.layers import folding
from keras_cmt.layers.data_format import spatial_axes, spatial_size, standardize_data_format
from keras_cmt.weights import position_bias_resize


def _interpolation_matrix(old, new):
    """(new, old) weights of 1-D linear interpolation with half-pixel centres (align_corners=False), for a static
    `old` and a possibly dynamic `new`: `position_bias_resize._resize_matrix` in `keras.ops`."""
    index = ops.cast(ops.arange(new), "float32")
    scale = ops.cast(old, "float32") / ops.cast(new, "float32")
    source = ops.maximum((index + 0.5) * scale - 0.5, 0.0)
    low = ops.minimum(ops.floor(source), old - 1)
    high = ops.minimum(low + 1, old - 1)
    fraction = ops.expand_dims(source - low, -1)
    low = ops.one_hot(ops.cast(low, "int32"), old, dtype="float32")
    high = ops.one_hot(ops.cast(high, "int32"), old, dtype="float32")
    return low * (1.0 - fraction) + high * fraction


def resize_bias(bias, old_query, old_key, new_query, new_key):
    """Resizes a (heads, Nq, Nk) bias from static grids to (possibly dynamic) new ones, in float32."""
    heads = bias.shape[0]
    grid = ops.reshape(ops.cast(bias, "float32"), (heads, old_query[0], old_query[1], old_key[0], old_key[1]))
    matrices = [_interpolation_matrix(old, new) for old, new in zip(old_query + old_key, new_query + new_key)]
    grid = ops.einsum("nabcd,Aa,Bb,Cc,Dd->nABCD", grid, *matrices)
    return ops.reshape(grid, (heads, new_query[0] * new_query[1], new_key[0] * new_key[1]))


@keras.saving.register_keras_serializable(package="keras_cmt")
class RelativePositionBias(keras.layers.Layer):
    """Holds a (num_heads, query_h*query_w, key_h*key_w) bias; called on the stage's feature map, returns it with a
    batch axis of 1, resized to that map's grid when it differs from `query_size`.

    Args:
        num_heads: attention heads of the stage.
        query_size: (height, width) of the stage's feature map at the size the bias is learned (and stored) at.
        sr_ratio: the key/value reduction ratio; keys form a (height // sr, width // sr) grid.
        data_format: "channels_last" or "channels_first" of the feature map (default: Keras' image data format).
    """

    def __init__(self, num_heads, query_size, sr_ratio, data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.query_size = tuple(int(s) for s in query_size)
        self.sr_ratio = int(sr_ratio)
        self.data_format = standardize_data_format(data_format)
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
        # The official code draws it from N(0, 1) (torch.randn).
        self.bias = self.add_weight(
            name="bias", shape=(self.num_heads, n_q, n_k), initializer=keras.initializers.RandomNormal(stddev=1.0)
        )

    def _grid(self, shape):
        return tuple(shape[axis] for axis in spatial_axes(self.data_format))

    def call(self, inputs):
        bias = self.bias
        if self._grid(inputs.shape) != self.query_size:  # another input size, or one known only at run time
            grid = spatial_size(inputs, self.data_format)
            keys = (grid[0] // self.sr_ratio, grid[1] // self.sr_ratio)
            bias = resize_bias(bias, self.query_size, self.key_size, grid, keys)
        return ops.expand_dims(ops.cast(bias, self.compute_dtype), 0)

    def compute_output_shape(self, input_shape):
        grid = self._grid(input_shape)
        if grid == self.query_size:
            return (1,) + tuple(self.bias.shape)
        if None in grid:
            return (1, self.num_heads, None, None)
        return (1, self.num_heads, grid[0] * grid[1], (grid[0] // self.sr_ratio) * (grid[1] // self.sr_ratio))

    def serving_form(self, key_side=False):
        """For the key-side attention form, the bias with the heads side by side along the key axis
        (`keras_cmt.fused_layers.HeadsLastBias`) and its weights; None where the stage keeps this layer."""
        if not key_side:
            return None
        from keras_cmt.fused_layers import HeadsLastBias

        heads, n_q, n_k = self.bias.shape
        bias = folding.array(self.bias).transpose(1, 0, 2).reshape(n_q, heads * n_k)
        return HeadsLastBias(heads, n_q, n_k, name=self.name), {"bias": bias}

    def save_own_variables(self, store):
        store["0"] = self.bias
        store["query_size"] = np.asarray(self.query_size, dtype="int64")

    def load_own_variables(self, store):
        """Loads the bias, resized when it was saved at another query grid (or, without a recorded grid, at a
        square one or one of this layer's aspect ratio)."""
        keys = set(store.keys())
        if not {"0"} <= keys <= {"0", "query_size"}:
            raise ValueError(f"{self.name}: expected a bias and its query grid; the file holds {sorted(keys)}.")
        value = np.asarray(store["0"])
        if value.ndim != 3:
            raise ValueError(f"{self.name}: the stored bias has shape {value.shape}, not (heads, queries, keys).")
        source_grid = None
        if "query_size" in keys:
            source_grid = tuple(int(s) for s in np.asarray(store["query_size"]).reshape(-1))
            if len(source_grid) != 2 or min(source_grid) <= 0:
                raise ValueError(f"{self.name}: the stored query grid {source_grid} is not a (height, width).")
        self.bias.assign(position_bias_resize.resize_for_layer(value, self, source_grid).astype(self.bias.dtype))

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "query_size": list(self.query_size),
            "sr_ratio": self.sr_ratio,
            "data_format": self.data_format,
        }
