"""ReLU6 (and the activation step of the fused BatchNorm kernels), with the contract of
:mod:`numpymnv2.functional.activation`.

The kernels name an activation by an integer code, one of the constants below; :data:`ACTIVATION_CODES` maps
the names the layers use to them.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from numpymnv2.functional.activation import ActivationCache
from numpymnv2.kernels._launch import parallel_rows

ACT_NONE = 0     # identity (the linear bottleneck)
ACT_RELU6 = 1    # min(max(z, 0), 6)
ACT_RELU = 2     # max(z, 0)
ACTIVATION_CODES = {None: ACT_NONE, "relu6": ACT_RELU6, "relu": ACT_RELU}

BLOCK = 16384    # elements of the raveled array per row of the ReLU6 kernels


# The constants are made in the argument's type (``type(z)(0)``): with the integer literals 0 and 6 Numba computes
# in float64 and converts back, which kept LLVM from vectorising float32 loops. Measured on the 2-core machine (one
# thread): ReLU6 over 2^20 float32 values 0.20 -> 0.09 ms; the BatchNorm + ReLU6 gradient sums at batch 32,
# 16x16x96 0.35 -> 0.21 ms. Each function returns once, at the end: with a return per case the BatchNorm
# normalisation with a residual and no activation took 1.28x the time.
@njit(cache=True, inline="always")
def activation(z, act):
    """``act(z)`` for the code ``act``: ``min(max(z, 0), 6)``, ``max(z, 0)`` or ``z``, in the type of ``z``."""
    if act == ACT_RELU6:
        z = min(max(z, type(z)(0)), type(z)(6))
    elif act == ACT_RELU:
        z = max(z, type(z)(0))
    return z


@njit(cache=True, inline="always")
def activation_grad(g, z, act):
    """``g act'(z)``: ReLU6 passes ``g`` on the open interval ``0 < z < 6``, ReLU on ``z > 0``, identity always.

    A blocked gradient is ``0 * g`` rather than 0, so a NaN in ``g`` stays NaN, as in the reference.
    """
    if act == ACT_RELU6:
        if not (z > 0 and z < 6):
            g = type(g)(0) * g
    elif act == ACT_RELU:
        if not z > 0:
            g = type(g)(0) * g
    return g


@njit(cache=True, inline="always")
def _relu6_row(inputs, r):
    """``y[k] = min(max(x[k], 0), 6)`` for the elements ``k`` of block ``r`` of the raveled arrays."""
    x, y = inputs
    for k in range(r * BLOCK, min(x.shape[0], (r + 1) * BLOCK)):
        y[k] = activation(x[k], ACT_RELU6)


@njit(cache=True, inline="always")
def _relu6_grad_row(inputs, r):
    """``dx[k] = dy[k] [0 < x[k] < 6]`` for the elements ``k`` of block ``r`` of the raveled arrays."""
    dy, x, dx = inputs
    for k in range(r * BLOCK, min(x.shape[0], (r + 1) * BLOCK)):
        dx[k] = activation_grad(dy[k], x[k], ACT_RELU6)


_relu6 = parallel_rows(_relu6_row)
_relu6_grad = parallel_rows(_relu6_grad_row)


def _blocks(size: int) -> int:
    return (size + BLOCK - 1) // BLOCK


def relu6_forward(x: np.ndarray):
    """``y = min(max(x, 0), 6)``; same contract as :func:`numpymnv2.functional.activation.relu6_forward`.

    Parameters
    ----------
    x : ndarray, any shape

    Returns
    -------
    y : ndarray, shape and dtype of ``x``
    cache : ActivationCache
    """
    x = np.ascontiguousarray(x)
    y = np.empty_like(x)
    _relu6(x.size, _blocks(x.size), (x.reshape(-1), y.reshape(-1)))
    return y, ActivationCache(x)


def relu6_backward(dy: np.ndarray, cache: ActivationCache) -> np.ndarray:
    """``dL/dx = dy [0 < x < 6]``; see :func:`numpymnv2.functional.activation.relu6_backward`.

    Parameters
    ----------
    dy : ndarray, shape of the forward input
    cache : ActivationCache

    Returns
    -------
    dx : ndarray, shape and dtype of the forward input
    """
    x = cache.x
    dy = np.ascontiguousarray(dy, dtype=x.dtype)
    dx = np.empty_like(x)
    _relu6_grad(x.size, _blocks(x.size), (dy.reshape(-1), x.reshape(-1), dx.reshape(-1)))
    return dx


__all__ = ["relu6_backward", "relu6_forward"]
