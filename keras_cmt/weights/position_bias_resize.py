"""Resizes a relative-position bias learned at one input size to another.

The bias of a stage is (heads, query_h*query_w, key_h*key_w): a function of a query position and a key position.
Both grids scale with the input, so the bias is resized bilinearly over the query grid and over the key grid
(align_corners=False, as PyTorch's F.interpolate). At the same size it is returned unchanged.
"""

import math

import numpy as np


def infer_grid(num_positions, like):
    """Guesses the (h, w) grid that held `num_positions` positions in the checkpoint.

    A perfect square is taken as square (every official checkpoint is square); otherwise the grid is assumed to
    have the aspect ratio of `like`. Keras files record their grid (`RelativePositionBias.save_own_variables`).
    """
    side = int(round(math.sqrt(num_positions)))
    if side * side == num_positions:
        return side, side
    like_h, like_w = like
    h = int(round(math.sqrt(num_positions * like_h / like_w)))
    if h <= 0 or num_positions % h or h * like_w != (num_positions // h) * like_h:
        raise ValueError(
            f"cannot infer a {like_h}:{like_w} grid holding {num_positions} positions (weights saved at another "
            "aspect ratio without a recorded grid)."
        )
    return h, num_positions // h


def _resize_matrix(old, new):
    """(new, old) matrix of 1-D linear interpolation weights with half-pixel centres (align_corners=False)."""
    m = np.zeros((new, old), dtype=np.float64)
    if old == new:
        np.fill_diagonal(m, 1.0)
        return m
    scale = old / new
    for i in range(new):
        src = max((i + 0.5) * scale - 0.5, 0.0)
        lo = min(int(math.floor(src)), old - 1)
        hi = min(lo + 1, old - 1)
        frac = src - lo
        m[i, lo] += 1.0 - frac
        m[i, hi] += frac
    return m


def _resize_axis_grid(array, axis, old_grid, new_grid):
    """Bilinearly resizes the flattened grid stored along `axis` of `array`."""
    rows = _resize_matrix(old_grid[0], new_grid[0])
    cols = _resize_matrix(old_grid[1], new_grid[1])
    moved = np.moveaxis(array, axis, -1)
    lead = moved.shape[:-1]
    grid = moved.reshape(lead + tuple(old_grid))
    grid = np.einsum("...hw,Hh,Ww->...HW", grid, rows, cols)
    return np.moveaxis(grid.reshape(lead + (new_grid[0] * new_grid[1],)), -1, axis)


def resize_relative_position_bias(bias, old_query_grid, old_key_grid, new_query_grid, new_key_grid):
    """Resizes a (heads, Nq, Nk) bias from the old query/key grids to the new ones."""
    bias = np.asarray(bias)
    if tuple(old_query_grid) == tuple(new_query_grid) and tuple(old_key_grid) == tuple(new_key_grid):
        return bias
    out = _resize_axis_grid(bias.astype(np.float64), 1, old_query_grid, new_query_grid)
    out = _resize_axis_grid(out, 2, old_key_grid, new_key_grid)
    return out.astype(bias.dtype)


def resize_for_layer(bias, layer, source_query_size=None):
    """Resizes a checkpoint bias to fit a `RelativePositionBias` layer.

    The stored grids are `source_query_size` (and it divided by the layer's reduction ratio) when given,
    else inferred by `infer_grid` (square, or the layer's aspect ratio). Raises ValueError if the number of heads
    differs or the grids do not hold the bias."""
    heads, n_q, n_k = bias.shape
    if heads != layer.num_heads:
        raise ValueError(f"{layer.name}: checkpoint has {heads} heads, the model {layer.num_heads}.")
    if source_query_size is not None:
        old_q = tuple(int(s) for s in source_query_size)
        old_k = (old_q[0] // layer.sr_ratio, old_q[1] // layer.sr_ratio)
        if old_q[0] * old_q[1] != n_q or old_k[0] * old_k[1] != n_k:
            raise ValueError(
                f"{layer.name}: a {old_q[0]}x{old_q[1]} query grid does not hold the stored {n_q} x {n_k} bias."
            )
    else:
        old_q = infer_grid(n_q, layer.query_size)
        old_k = infer_grid(n_k, layer.key_size)
    return resize_relative_position_bias(bias, old_q, old_k, layer.query_size, layer.key_size)
