"""Kernels of the inference path (:class:`numpymnv2.models.fuse.FoldedMobileNetV2` on the fast backend).

With BatchNorm folded into the convolutions, what follows each convolution is a per-channel bias, an activation
and, at the end of a residual block, the shortcut add. NumPy spends one pass over the tensor on each
(``y += bias``, ``np.clip``, ``y += shortcut``); here they are one pass, in place on the convolution's output
(:func:`bias_act`), and after the last convolution the same pass also averages each image's pixels
(:func:`bias_act_pool`), so the last feature map is never written back. The depthwise convolution takes its
bias and activation in its own kernel (:func:`depthwise_bias_act`): each output row gets them right after the
depthwise loops of :mod:`numpymnv2.kernels.depthwise` wrote it, while it is still in cache, so the depthwise
output is written to memory once and never re-read by a separate pass.

:func:`bias_act` and :func:`bias_act_pool` work on activations flattened to ``(N, P, C)`` (``P = H W`` pixels of
``C`` channels).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from numpymnv2._checks import conv_output_size
from numpymnv2.kernels._launch import parallel_rows
from numpymnv2.kernels.activation import ACTIVATION_CODES, activation
from numpymnv2.kernels.depthwise import _forward_row as _depthwise_row

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


@njit(cache=True, inline="always")
def _depthwise_bias_act_row(inputs, r):
    """Output row ``r = (n, i)``: ``out[n, i, j, c] = act(sum_{a, b} w[a, b, c] x[n, s i - p + a, s j - p + b, c]
    + bias[c])``, the depthwise sum as in :func:`numpymnv2.kernels.depthwise._forward_row` (same taps, same border
    handling), then bias and activation over the row it just wrote."""
    x, w, s, p, bias, act, out = inputs
    _depthwise_row((x, w, s, p, out), r)
    H_out = out.shape[1]
    row = out[r // H_out, r % H_out]            # (W_out, C), still in cache
    for j in range(row.shape[0]):
        for c in range(row.shape[1]):
            row[j, c] = activation(row[j, c] + bias[c], act)


_bias_act = parallel_rows(_bias_act_row)
_bias_act_pool = parallel_rows(_bias_act_pool_row)
_depthwise_bias_act = parallel_rows(_depthwise_bias_act_row, fastmath={"contract"})


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
    kernel, args = bias_act_call(y, bias, activation, residual)
    kernel(*args)


def bias_act_call(y: np.ndarray, bias: np.ndarray, activation: str | None,
                  residual: np.ndarray | None = None) -> tuple:
    """``(kernel, args)``: the call :func:`bias_act` makes, with its arguments bound; ``kernel(*args)`` runs it.

    For a caller that repeats the same call on the same arrays (the plan of
    :class:`numpymnv2.models.fuse.FoldedMobileNetV2`): contiguous arrays of ``y``'s dtype are bound as they
    are, not copied, so the call sees what is in them when it runs.
    """
    C = y.shape[-1]
    y2 = y.reshape(-1, C)
    res = y2 if residual is None else np.ascontiguousarray(residual, dtype=y.dtype).reshape(-1, C)
    return _bias_act, (y.size, (y2.shape[0] + PIXELS - 1) // PIXELS,
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
    pooled = np.empty((y.shape[0], y.shape[-1]), dtype=y.dtype)
    kernel, args = bias_act_pool_call(y, bias, activation, pooled)
    kernel(*args)
    return pooled


def bias_act_pool_call(y: np.ndarray, bias: np.ndarray, activation: str | None, pooled: np.ndarray) -> tuple:
    """``(kernel, args)``: :func:`bias_act_pool` writing into ``pooled`` (N, C), arguments bound (see
    :func:`bias_act_call`)."""
    N, H, W, C = y.shape
    return _bias_act_pool, (y.size, N, (np.ascontiguousarray(y).reshape(N, H * W, C),
                                        np.ascontiguousarray(bias, dtype=y.dtype), ACTIVATION_CODES[activation],
                                        pooled))


def depthwise_bias_act(x: np.ndarray, w: np.ndarray, stride: int, padding: int, bias: np.ndarray,
                       activation: str | None, out: np.ndarray | None = None) -> np.ndarray:
    """``act(depthwise_conv2d(x, w) + bias)`` in one kernel: the folded depthwise step of inference.

    The depthwise sum is that of :func:`numpymnv2.functional.depthwise.depthwise_conv2d_forward` (zero padding,
    taps outside the image skipped), so the result equals the reference convolution followed by NumPy's bias and
    activation up to float rounding.

    Parameters
    ----------
    x : ndarray, shape (N, H, W, C)
    w : ndarray, shape (K, K, C)
    stride, padding : int
    bias : ndarray, shape (C,)
    activation : {"relu6", "relu", None}
    out : ndarray, shape (N, H_out, W_out, C), C-contiguous, dtype of ``x``, optional
        Written and returned; a new array when not given. Must not overlap ``x``.

    Returns
    -------
    out : ndarray, shape (N, H_out, W_out, C)
    """
    kernel, args = depthwise_bias_act_call(x, w, stride, padding, bias, activation, out)
    kernel(*args)
    return args[2][-1]


def depthwise_bias_act_call(x: np.ndarray, w: np.ndarray, stride: int, padding: int, bias: np.ndarray,
                            activation: str | None, out: np.ndarray | None = None) -> tuple:
    """``(kernel, args)``: :func:`depthwise_bias_act`'s call with its arguments (and ``out``, allocated when not
    given: ``args[2][-1]``) checked and bound (see :func:`bias_act_call`)."""
    N, H, W, C = x.shape
    K = w.shape[0]
    if w.shape != (K, K, C) or bias.shape != (C,):
        raise ValueError(f"depthwise_bias_act: expected weight shape (K, K, {C}) and bias shape ({C},) for input "
                         f"shape {x.shape}, got {w.shape} and {bias.shape}")
    s, p = int(stride), int(padding)
    shape = (N, conv_output_size(H, K, s, p, "depthwise_bias_act", "H"),
             conv_output_size(W, K, s, p, "depthwise_bias_act", "W"), C)
    if out is None:
        out = np.empty(shape, dtype=x.dtype)
    elif out.shape != shape or out.dtype != x.dtype or not out.flags.c_contiguous:
        raise ValueError(f"depthwise_bias_act: out must be a C-contiguous {x.dtype} array of shape {shape}, got "
                         f"{out.dtype} {out.shape}")
    return _depthwise_bias_act, (out.size * K * K, N * shape[1],
                                 (np.ascontiguousarray(x), np.ascontiguousarray(w, dtype=x.dtype), s, p,
                                  np.ascontiguousarray(bias, dtype=x.dtype), ACTIVATION_CODES[activation], out))


__all__ = ["bias_act", "bias_act_call", "bias_act_pool", "bias_act_pool_call", "depthwise_bias_act",
           "depthwise_bias_act_call"]
