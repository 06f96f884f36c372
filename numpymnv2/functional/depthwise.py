"""Depthwise convolution in NHWC: every channel filtered by its own ``K x K`` kernel (paper Section 3.1).

Weight layout ``w : (K, K, C)``, channels last so a tap multiplies a contiguous run of channels. PyTorch's
``(C, 1, K, K)`` maps to it with ``w_torch[:, 0].transpose(1, 2, 0)``.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from numpymnv2._checks import conv_output_size


class DepthwiseCache(NamedTuple):
    x: np.ndarray             # (N, H, W, C) the input
    w: np.ndarray             # (K, K, C)
    stride: int
    padding: int


def _tap(x_pad: np.ndarray, a: int, b: int, s: int, H_out: int, W_out: int) -> np.ndarray:
    """The ``(N, H_out, W_out, C)`` view of ``x_pad`` that tap ``(a, b)`` multiplies."""
    return x_pad[:, a:a + s * (H_out - 1) + 1:s, b:b + s * (W_out - 1) + 1:s, :]


def depthwise_conv2d_forward(x: np.ndarray, w: np.ndarray, stride: int = 1, padding: int = 1):
    """Depthwise convolution (groups = channels), no bias.

    Parameters
    ----------
    x : ndarray, shape (N, H, W, C)
    w : ndarray, shape (K, K, C)
    stride : int
        1 or 2 in MobileNetV2; any positive value works.
    padding : int
        Symmetric zero padding; MobileNetV2 uses 1 for its 3x3 kernels.

    Returns
    -------
    out : ndarray, shape (N, H_out, W_out, C), ``H_out = floor((H + 2p - K) / s) + 1``
    cache : DepthwiseCache

    Notes
    -----
    Forward, channel ``c`` seeing only channel ``c``::

        out[n, i, j, c] = sum_{a, b} w[a, b, c] * x_pad[n, s i + a, s j + b, c]

    Backward, per tap ``(a, b)`` (the sums run over n, i, j)::

        dL/dw[a, b, c]                      = sum dout[n, i, j, c] * x_pad[n, s i + a, s j + b, c]
        dL/dx_pad[n, s i + a, s j + b, c]  += dout[n, i, j, c] * w[a, b, c]

    and ``dL/dx`` is ``dL/dx_pad`` without its border.
    """
    N, H, W, C = x.shape
    K = w.shape[0]
    if w.shape != (K, K, C):
        raise ValueError(f"depthwise_conv2d: expected weight shape (K, K, {C}) for input shape {x.shape}, "
                         f"got {w.shape}")
    s, p = stride, padding
    H_out = conv_output_size(H, K, s, p, "depthwise_conv2d", "H")
    W_out = conv_output_size(W, K, s, p, "depthwise_conv2d", "W")
    x_pad = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    out = np.zeros((N, H_out, W_out, C), dtype=x.dtype)
    for a in range(K):
        for b in range(K):
            out += _tap(x_pad, a, b, s, H_out, W_out) * w[a, b]
    return out, DepthwiseCache(x, w, s, p)


def depthwise_conv2d_backward(dout: np.ndarray, cache: DepthwiseCache):
    """Gradients of :func:`depthwise_conv2d_forward`.

    Parameters
    ----------
    dout : ndarray, shape (N, H_out, W_out, C)
    cache : DepthwiseCache

    Returns
    -------
    dx : ndarray, shape (N, H, W, C)
    dw : ndarray, shape (K, K, C)
    """
    x, w, s, p = cache
    N, H, W, C = x.shape
    K = w.shape[0]
    H_out, W_out = dout.shape[1:3]
    x_pad = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    dx_pad = np.zeros_like(x_pad)
    dw = np.empty_like(w)
    for a in range(K):
        for b in range(K):
            # forward was: out += x_pad[tap a, b] * w[a, b]
            dw[a, b] = np.einsum("nijc,nijc->c", dout, _tap(x_pad, a, b, s, H_out, W_out))
            _tap(dx_pad, a, b, s, H_out, W_out)[...] += dout * w[a, b]
    return dx_pad[:, p:p + H, p:p + W, :], dw
