"""ReLU6, Numba kernels with the contract of :mod:`numpymnv2.functional.activation`."""
from __future__ import annotations

import numpy as np
from numba import prange

from numpymnv2.functional.activation import ActivationCache
from numpymnv2.kernels._threads import kernel, serialized


@kernel
def _relu6(x, y):
    # y = min(max(x, 0), 6), over the raveled (contiguous) arrays in blocks
    n = x.shape[0]
    block = 16384
    for k in prange((n + block - 1) // block):
        for i in range(k * block, min(n, (k + 1) * block)):
            y[i] = min(max(x[i], 0), 6)


@kernel
def _relu6_grad(dy, x, dx):
    # dx = dy [0 < x < 6]
    n = x.shape[0]
    block = 16384
    for k in prange((n + block - 1) // block):
        for i in range(k * block, min(n, (k + 1) * block)):
            v = x[i]
            dx[i] = dy[i] if (v > 0 and v < 6) else 0 * dy[i]


@serialized
def relu6_forward(x: np.ndarray):
    """``y = min(max(x, 0), 6)``; same contract as :func:`numpymnv2.functional.activation.relu6_forward`."""
    x = np.ascontiguousarray(x)
    y = np.empty_like(x)
    _relu6.pick(x.size)(x.reshape(-1), y.reshape(-1))
    return y, ActivationCache(x)


@serialized
def relu6_backward(dy: np.ndarray, cache: ActivationCache) -> np.ndarray:
    """``dL/dx = dy * [0 < x < 6]``; see :func:`numpymnv2.functional.activation.relu6_backward`."""
    x = cache.x
    dy = np.ascontiguousarray(dy, dtype=x.dtype)
    dx = np.empty_like(x)
    _relu6_grad.pick(x.size)(dy.reshape(-1), x.reshape(-1), dx.reshape(-1))
    return dx


__all__ = ["relu6_backward", "relu6_forward"]
