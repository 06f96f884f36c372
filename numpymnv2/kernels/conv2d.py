"""Full 2-D convolution (the network's stem), with the contract of :mod:`numpymnv2.functional.conv2d`.

The products are the reference's GEMMs (through :mod:`.gemm`); what the reference spends most of its time on
is gathering the patches (``im2col``: one strided copy per tap, each moving rows of only ``C_in = 3`` values)
and scattering their gradients back (``col2im``: one strided add per tap). Here each is one Numba pass:
``im2col`` writes each output row's patches in order, and ``col2im`` is written as a gather, every input pixel
adding up the patch entries that read it, so rows can run on different threads without two of them writing one
pixel. Measured on the 2-core machine (one thread, CPU time, float32, the stem 3 -> 32 at stride 2): batch 8 at
224x224, im2col 7.4 ms and col2im 16.9 ms with NumPy; see :func:`im2col` and :func:`col2im` for the kernels' times.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from numpymnv2._checks import conv_output_size
from numpymnv2.functional.conv2d import Conv2dCache, check_conv2d_weight
from numpymnv2.kernels import gemm
from numpymnv2.kernels._launch import parallel_rows


@njit(cache=True, inline="always")
def _im2col_row(inputs, r):
    """Output row ``r = (n, i)``: ``cols[n, i, j, a, b, c] = x[n, s i - p + a, s j - p + b, c]``, 0 outside.

    Arrays as ``x (N, H, W C)`` and ``cols (N, H_out, W_out, K, K C)``: for a pixel whose window lies inside the
    image the ``K C`` values of filter row ``a`` are one contiguous run of input row ``s i - p + a``."""
    x, C, s, p, cols = inputs
    N, H, WC = x.shape
    W = WC // C
    H_out, W_out, K, KC = cols.shape[1], cols.shape[2], cols.shape[3], cols.shape[4]
    n, i = r // H_out, r % H_out
    zero = cols.dtype.type(0)
    for a in range(K):
        h = s * i - p + a
        for j in range(W_out):
            v0 = s * j - p
            if h < 0 or h >= H:
                for q in range(KC):
                    cols[n, i, j, a, q] = zero
            elif v0 >= 0 and v0 + K <= W:
                start = v0 * C
                for q in range(KC):
                    cols[n, i, j, a, q] = x[n, h, start + q]
            else:
                for b in range(K):
                    v = v0 + b
                    for c in range(C):
                        cols[n, i, j, a, b * C + c] = x[n, h, v * C + c] if 0 <= v < W else zero


@njit(cache=True, inline="always")
def _col2im_row(inputs, r):
    """Input row ``r = (n, h)``: ``dx[n, h, v, c] = sum dcols[n, i, j, a, b, c]`` over the taps with
    ``s i - p + a = h`` and ``s j - p + b = v``.

    Arrays as in :func:`_im2col_row`: for each filter row ``a`` that reaches input row ``h`` (from output row
    ``i``), each output column ``j`` adds its ``K C`` patch values onto a contiguous run of the row; the row
    belongs to this call alone, so rows may run on different threads."""
    dcols, C, s, p, dx = inputs
    N, H, WC = dx.shape
    W = WC // C
    H_out, W_out, K, KC = dcols.shape[1], dcols.shape[2], dcols.shape[3], dcols.shape[4]
    n, h = r // H, r % H
    for q in range(WC):
        dx[n, h, q] = 0
    for a in range(K):
        t = h + p - a
        if t < 0 or t % s != 0 or t // s >= H_out:
            continue
        i = t // s
        for j in range(W_out):
            v0 = s * j - p
            if v0 >= 0 and v0 + K <= W:
                start = v0 * C
                for q in range(KC):
                    dx[n, h, start + q] += dcols[n, i, j, a, q]
            else:
                for b in range(K):
                    v = v0 + b
                    if 0 <= v < W:
                        for c in range(C):
                            dx[n, h, v * C + c] += dcols[n, i, j, a, b * C + c]


_im2col = parallel_rows(_im2col_row)
_col2im = parallel_rows(_col2im_row)


def im2col(x: np.ndarray, kernel_size: int, stride: int, padding: int) -> np.ndarray:
    """Every ``K x K`` patch of ``x``; the contract of :func:`numpymnv2.functional.conv2d.im2col`.

    Parameters
    ----------
    x : ndarray, shape (N, H, W, C)
    kernel_size, stride, padding : int

    Returns
    -------
    cols : ndarray, shape (N, H_out, W_out, K, K, C)
    """
    N, H, W, C = x.shape
    K, s, p = int(kernel_size), int(stride), int(padding)
    H_out = conv_output_size(H, K, s, p, "im2col", "H")
    W_out = conv_output_size(W, K, s, p, "im2col", "W")
    cols = np.empty((N, H_out, W_out, K, K * C), dtype=x.dtype)
    _im2col(cols.size, N * H_out, (np.ascontiguousarray(x).reshape(N, H, W * C), C, s, p, cols))
    return cols.reshape(N, H_out, W_out, K, K, C)


def col2im(dcols: np.ndarray, x_shape: tuple, stride: int, padding: int) -> np.ndarray:
    """Adjoint of :func:`im2col`; the contract of :func:`numpymnv2.functional.conv2d.col2im`.

    Parameters
    ----------
    dcols : ndarray, shape (N, H_out, W_out, K, K, C)
    x_shape : tuple (N, H, W, C)

    Returns
    -------
    dx : ndarray, shape (N, H, W, C)
    """
    N, H, W, C = x_shape
    N, H_out, W_out, K = dcols.shape[:4]
    dx = np.empty((N, H, W * C), dtype=dcols.dtype)
    _col2im(dcols.size, N * H, (np.ascontiguousarray(dcols).reshape(N, H_out, W_out, K, K * C), C, int(stride),
                                int(padding), dx))
    return dx.reshape(x_shape)


def conv2d_forward(x: np.ndarray, w: np.ndarray, stride: int = 1, padding: int = 0):
    """Full convolution, no bias; the contract and equations of
    :func:`numpymnv2.functional.conv2d.conv2d_forward` (the same GEMM, with :func:`im2col`).

    Parameters
    ----------
    x : ndarray, shape (N, H, W, C_in)
    w : ndarray, shape (C_out, K, K, C_in)
    stride, padding : int

    Returns
    -------
    out : ndarray, shape (N, H_out, W_out, C_out)
    cache : Conv2dCache
    """
    cols = im2col(x, check_conv2d_weight(x, w), stride, padding)
    N, H_out, W_out = cols.shape[:3]
    C_out = w.shape[0]
    # the product of functional.conv2d.conv2d_from_patches, out = cols2d @ w2d^T, by gemm
    out = gemm.matmul(cols.reshape(N * H_out * W_out, -1), w.reshape(C_out, -1).T)
    return out.reshape(N, H_out, W_out, C_out), Conv2dCache(cols, w, x.shape, stride, padding)


def conv2d_backward(dout: np.ndarray, cache: Conv2dCache):
    """Gradients of :func:`conv2d_forward`; see :func:`numpymnv2.functional.conv2d.conv2d_backward`.

    Parameters
    ----------
    dout : ndarray, shape (N, H_out, W_out, C_out)
    cache : Conv2dCache

    Returns
    -------
    dx : ndarray, shape (N, H, W, C_in)
    dw : ndarray, shape (C_out, K, K, C_in)
    """
    cols, w = cache.cols, cache.w
    C_out = w.shape[0]
    dout2d = np.ascontiguousarray(dout).reshape(-1, C_out)
    # the products of functional.conv2d.conv2d_backward_to_patches, by gemm
    dw = gemm.matmul_tn(dout2d, cols.reshape(dout2d.shape[0], -1)).reshape(w.shape)
    dcols = gemm.matmul(dout2d, w.reshape(C_out, -1)).reshape(cols.shape)
    return col2im(dcols, cache.x_shape, cache.stride, cache.padding), dw
