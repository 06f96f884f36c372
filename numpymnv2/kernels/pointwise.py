"""Pointwise (1x1) convolution on the fast backend: the three products of
:mod:`numpymnv2.functional.pointwise` (equations there) through :mod:`numpymnv2.kernels.gemm`, which splits them
over Numba's pool with the OpenMP layer (the default) and is NumPy's ``matmul`` under
``NUMPYMNV2_THREADING=workqueue`` (then this pair computes exactly what the reference computes).
"""
from __future__ import annotations

import numpy as np

from numpymnv2.functional.pointwise import PointwiseCache, check_channels, check_gradient_out
from numpymnv2.kernels import gemm


def pointwise_conv2d_forward(x: np.ndarray, T: np.ndarray):
    """``Z = X @ T^T``; the contract of :func:`numpymnv2.functional.pointwise.pointwise_conv2d_forward`.

    Parameters
    ----------
    x : ndarray, shape (N, H, W, C_in)
    T : ndarray, shape (C_out, C_in)

    Returns
    -------
    z : ndarray, shape (N, H, W, C_out)
    cache : PointwiseCache
    """
    C_out, C_in = check_channels(x, T)
    x = np.ascontiguousarray(x)
    z = gemm.matmul(x.reshape(-1, C_in), T.T)
    return z.reshape(*x.shape[:-1], C_out), PointwiseCache(x, T)


def pointwise_conv2d_backward(dz: np.ndarray, cache: PointwiseCache, dT_out: np.ndarray | None = None):
    """``dL/dT = dZ^T X`` and ``dL/dX = dZ T``; see
    :func:`numpymnv2.functional.pointwise.pointwise_conv2d_backward`.

    Parameters
    ----------
    dz : ndarray, shape (N, H, W, C_out)
    cache : PointwiseCache
    dT_out : ndarray, shape (C_out, C_in), C-contiguous, dtype of ``dz``, optional
        Where to write ``dL/dT``; None: a new array.

    Returns
    -------
    dx : ndarray, shape (N, H, W, C_in)
    dT : ndarray, shape (C_out, C_in)
    """
    x, T = cache
    C_out, C_in = T.shape
    check_gradient_out(dT_out, T, dz.dtype)
    dZ = np.ascontiguousarray(dz).reshape(-1, C_out)
    dT = gemm.matmul_tn(dZ, x.reshape(-1, C_in), out=dT_out)
    dx = gemm.matmul(dZ, T).reshape(x.shape)
    return dx, dT


__all__ = ["pointwise_conv2d_backward", "pointwise_conv2d_forward"]
