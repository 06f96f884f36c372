"""Global average pooling: each channel's mean over all pixels, ``(N, H, W, C) -> (N, C)``."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class GlobalAvgPoolCache(NamedTuple):
    x_shape: tuple            # (N, H, W, C)


def global_avg_pool_forward(x: np.ndarray):
    """``y[n, c] = (1 / (H W)) sum_{i, j} x[n, i, j, c]``.

    Parameters
    ----------
    x : ndarray, shape (N, H, W, C)

    Returns
    -------
    y : ndarray, shape (N, C)
    cache : GlobalAvgPoolCache

    Notes
    -----
    ``dL/dx[n, i, j, c] = dL/dy[n, c] / (H W)``: every pixel contributed equally.
    """
    return x.mean(axis=(1, 2)), GlobalAvgPoolCache(x.shape)


def global_avg_pool_backward(dy: np.ndarray, cache: GlobalAvgPoolCache) -> np.ndarray:
    """Spread ``dy`` evenly over the pixels it averaged."""
    N, H, W, C = cache.x_shape
    # forward was: y = x.mean(axis=(1, 2))
    dx = np.empty(cache.x_shape, dtype=dy.dtype)
    dx[...] = (dy / (H * W))[:, None, None, :]
    return dx
