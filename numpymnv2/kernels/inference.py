"""Kernels of the inference path (:class:`numpymnv2.models.fuse.FoldedMobileNetV2` on the fast backend).

With BatchNorm folded into the convolutions, what follows each convolution is a per-channel bias, an activation
and, at the end of a residual block, the shortcut add. NumPy spends one pass over the tensor on each
(``y += bias``, ``np.clip``, ``y += shortcut``); here they are one pass, in place on the convolution's output
(:func:`bias_act`), and after the last convolution the same pass also averages each image's pixels
(:func:`bias_act_pool`), so the last feature map is never written back.

Both kernels work on activations flattened to ``(N, P, C)`` (``P = H W`` pixels of ``C`` channels).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from numpymnv2.kernels._launch import parallel_rows
from numpymnv2.kernels.activation import ACTIVATION_CODES, activation

PIXELS = 64      # pixels per row of the bias_act kernel


@njit(cache=True)
def _bias_act_pixels(y, bias, act, residual, has_residual):
    """``y[k, c] = act(y[k, c] + bias[c]) (+ residual[k, c])`` for the rows ``k`` of ``y (pixels, C)``."""
    # loops from 0 over arrays sliced by the caller: Numba then knows the indices are not negative
    for k in range(y.shape[0]):
        for c in range(y.shape[1]):
            z = activation(y[k, c] + bias[c], act)
            if has_residual:
                z += residual[k, c]
            y[k, c] = z


@njit(cache=True, inline="always")
def _bias_act_row(inputs, r):
    """Pixels ``r PIXELS`` to ``(r + 1) PIXELS`` of the raveled ``(N P, C)`` arrays."""
    y, bias, act, residual, has_residual = inputs
    lo = r * PIXELS
    hi = min(y.shape[0], lo + PIXELS)
    _bias_act_pixels(y[lo:hi], bias, act, residual[lo:hi], has_residual)


@njit(cache=True, inline="always")
def _bias_act_pool_row(inputs, n):
    """Image ``n``: ``pooled[n, c] = mean_k act(y[n, k, c] + bias[c])``."""
    y, bias, act, pooled = inputs
    P, C = y.shape[1], y.shape[2]
    for c in range(C):
        pooled[n, c] = 0
    for k in range(P):
        for c in range(C):
            pooled[n, c] += activation(y[n, k, c] + bias[c], act)
    for c in range(C):
        pooled[n, c] /= P


_bias_act = parallel_rows(_bias_act_row)
_bias_act_pool = parallel_rows(_bias_act_pool_row)


def bias_act(y: np.ndarray, bias: np.ndarray, activation: str | None, residual: np.ndarray | None = None) -> None:
    """``y = act(y + bias) [+ residual]`` in place, in one pass.

    Parameters
    ----------
    y : ndarray, shape (..., C), C-contiguous
        A convolution's output; overwritten.
    bias : ndarray, shape (C,)
    activation : {"relu6", "relu", None}
    residual : ndarray, shape of ``y``, optional
        Added after the activation (the shortcut of a residual block).
    """
    C = y.shape[-1]
    y2 = y.reshape(-1, C)
    res = y2 if residual is None else np.ascontiguousarray(residual, dtype=y.dtype).reshape(-1, C)
    _bias_act(y.size, (y2.shape[0] + PIXELS - 1) // PIXELS,
              (y2, np.ascontiguousarray(bias, dtype=y.dtype), ACTIVATION_CODES[activation], res,
               residual is not None))


def bias_act_pool(y: np.ndarray, bias: np.ndarray, activation: str | None) -> np.ndarray:
    """``mean over (H, W) of act(y + bias)``, without writing ``y``.

    Parameters
    ----------
    y : ndarray, shape (N, H, W, C)
    bias : ndarray, shape (C,)
    activation : {"relu6", "relu", None}

    Returns
    -------
    pooled : ndarray, shape (N, C)
    """
    N, H, W, C = y.shape
    pooled = np.empty((N, C), dtype=y.dtype)
    _bias_act_pool(y.size, N, (np.ascontiguousarray(y).reshape(N, H * W, C),
                               np.ascontiguousarray(bias, dtype=y.dtype), ACTIVATION_CODES[activation], pooled))
    return pooled


__all__ = ["bias_act", "bias_act_pool"]
