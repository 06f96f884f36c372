"""Full 2-D convolution in NHWC, the network's stem (3x3, stride 2, 3 -> 32 channels).

Weight layout ``w : (C_out, K, K, C_in)``: row ``o`` flattened is the filter that, dotted with one
``(K, K, C_in)`` input patch, gives output channel ``o``. PyTorch's ``(C_out, C_in, K, K)`` maps to it with
``w_torch.transpose(0, 2, 3, 1)``.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from numpymnv2._checks import conv_output_size


class Conv2dCache(NamedTuple):
    cols: np.ndarray          # (N, H_out, W_out, K, K, C_in) the input patches ("im2col")
    w: np.ndarray             # (C_out, K, K, C_in)
    x_shape: tuple            # (N, H, W, C_in)
    stride: int
    padding: int


def im2col(x: np.ndarray, kernel_size: int, stride: int, padding: int) -> np.ndarray:
    """Gather every ``K x K`` patch of ``x``: ``cols[n, i, j, a, b, c] = x_pad[n, s i + a, s j + b, c]``.

    Parameters
    ----------
    x : ndarray, shape (N, H, W, C)
    kernel_size, stride, padding : int

    Returns
    -------
    cols : ndarray, shape (N, H_out, W_out, K, K, C)
    """
    N, H, W, C = x.shape
    K, s, p = kernel_size, stride, padding
    H_out = conv_output_size(H, K, s, p, "im2col", "H")
    W_out = conv_output_size(W, K, s, p, "im2col", "W")
    x_pad = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    cols = np.empty((N, H_out, W_out, K, K, C), dtype=x.dtype)
    for a in range(K):              # one shifted, strided view of the padded input per tap
        for b in range(K):
            cols[:, :, :, a, b, :] = x_pad[:, a:a + s * (H_out - 1) + 1:s, b:b + s * (W_out - 1) + 1:s, :]
    return cols


def col2im(dcols: np.ndarray, x_shape: tuple, stride: int, padding: int) -> np.ndarray:
    """Adjoint of :func:`im2col`: add each patch gradient back where the patch was read from.

    Parameters
    ----------
    dcols : ndarray, shape (N, H_out, W_out, K, K, C)
    x_shape : tuple (N, H, W, C)

    Returns
    -------
    dx : ndarray, shape (N, H, W, C)
    """
    N, H, W, C = x_shape
    _, H_out, W_out, K, _, _ = dcols.shape
    s, p = stride, padding
    dx_pad = np.zeros((N, H + 2 * p, W + 2 * p, C), dtype=dcols.dtype)
    for a in range(K):
        for b in range(K):
            # forward was: cols[:, :, :, a, b, :] = x_pad[tap (a, b)]; overlapping taps accumulate
            dx_pad[:, a:a + s * (H_out - 1) + 1:s, b:b + s * (W_out - 1) + 1:s, :] += dcols[:, :, :, a, b, :]
    return dx_pad[:, p:p + H, p:p + W, :]


def conv2d_forward(x: np.ndarray, w: np.ndarray, stride: int = 1, padding: int = 0):
    """Full convolution (cross-correlation, as every deep-learning library), no bias.

    Parameters
    ----------
    x : ndarray, shape (N, H, W, C_in)
    w : ndarray, shape (C_out, K, K, C_in)
    stride, padding : int
        Symmetric zero padding of ``padding`` pixels on each side.

    Returns
    -------
    out : ndarray, shape (N, H_out, W_out, C_out), with ``H_out = floor((H + 2p - K) / s) + 1``
    cache : Conv2dCache

    Notes
    -----
    Forward, with ``x_pad`` the zero-padded input::

        out[n, i, j, o] = sum_{a, b, c} w[o, a, b, c] * x_pad[n, s i + a, s j + b, c]

    Gathering the patches into ``cols`` (``im2col``) turns this into one matrix product, the same
    ``z = T a`` as a pointwise convolution but with ``a`` a whole ``K*K*C_in`` patch::

        out = cols.reshape(-1, K*K*C_in) @ w.reshape(C_out, -1).T

    Backward, from ``dout = dL/dout``::

        dL/dw    = dout^T @ cols                      (sum over every output pixel)
        dL/dcols = dout @ w                           (each patch's gradient)
        dL/dx    = col2im(dL/dcols)                   (patches overlap when s < K: their gradients add)
    """
    cols = im2col(x, check_conv2d_weight(x, w), stride, padding)
    return conv2d_from_patches(cols, w, x.shape, stride, padding)


def check_conv2d_weight(x: np.ndarray, w: np.ndarray) -> int:
    """The kernel size ``K`` of a square ``w (C_out, K, K, C_in)`` whose ``C_in`` is ``x``'s channel count."""
    C_out, K, K2, C_in = w.shape
    if K != K2:
        raise ValueError(f"conv2d: expected a square kernel, got weight shape {w.shape}")
    if x.shape[-1] != C_in:
        raise ValueError(f"conv2d: weight expects {C_in} input channels, got input shape {x.shape}")
    return K


def conv2d_from_patches(cols: np.ndarray, w: np.ndarray, x_shape: tuple, stride: int, padding: int):
    """The product of :func:`conv2d_forward` once the patches are gathered: ``out = cols @ w2d.T``.

    (The fast backend gathers the patches with its own ``im2col`` and computes the same products with
    :mod:`numpymnv2.kernels.gemm`.)
    """
    N, H_out, W_out = cols.shape[:3]
    C_out = w.shape[0]
    out = cols.reshape(N * H_out * W_out, -1) @ w.reshape(C_out, -1).T
    return out.reshape(N, H_out, W_out, C_out), Conv2dCache(cols, w, x_shape, stride, padding)


def conv2d_backward(dout: np.ndarray, cache: Conv2dCache):
    """Gradients of :func:`conv2d_forward`.

    Parameters
    ----------
    dout : ndarray, shape (N, H_out, W_out, C_out)
    cache : Conv2dCache

    Returns
    -------
    dx : ndarray, shape (N, H, W, C_in)
    dw : ndarray, shape (C_out, K, K, C_in)
    """
    dcols, dw = conv2d_backward_to_patches(dout, cache)
    # forward was: cols = im2col(x)
    dx = col2im(dcols, cache.x_shape, cache.stride, cache.padding)
    return dx, dw


def conv2d_backward_to_patches(dout: np.ndarray, cache: Conv2dCache):
    """The backward of :func:`conv2d_from_patches`: ``dL/dcols = dout @ w2d`` and ``dL/dw = dout^T @ cols``."""
    cols, w = cache.cols, cache.w
    C_out = w.shape[0]
    dout2d = dout.reshape(-1, C_out)
    cols2d = cols.reshape(dout2d.shape[0], -1)
    # forward was: out = cols2d @ w2d.T
    dw = (dout2d.T @ cols2d).reshape(w.shape)
    dcols = (dout2d @ w.reshape(C_out, -1)).reshape(cols.shape)
    return dcols, dw
