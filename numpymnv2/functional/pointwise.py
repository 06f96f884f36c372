"""Pointwise (1x1) convolution: the paper's ``z = T a`` applied to every pixel at once.

A layer's activation is ``h * w`` "pixels", each a ``d``-dimensional vector ``a`` (paper Section 3.2). A 1x1
convolution maps each pixel by the same matrix ``T`` of shape ``(C_out, C_in)``; in NHWC memory the pixels are
the rows of ``x.reshape(-1, C_in)``, so the whole layer is one matrix product. PyTorch's weight
``(C_out, C_in, 1, 1)`` maps to ``T`` with ``w_torch[:, :, 0, 0]``.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class PointwiseCache(NamedTuple):
    x: np.ndarray             # (N, H, W, C_in)
    T: np.ndarray             # (C_out, C_in)


def check_channels(x: np.ndarray, T: np.ndarray) -> tuple[int, int]:
    """``(C_out, C_in)`` of the weight ``T``, after checking that ``x``'s last axis has ``C_in`` channels."""
    C_out, C_in = T.shape
    if x.shape[-1] != C_in:
        raise ValueError(f"pointwise_conv2d: weight expects {C_in} input channels, got input shape {x.shape}")
    return C_out, C_in


def check_gradient_out(dT_out, T: np.ndarray, dtype) -> None:
    """Raise a ``ValueError`` unless ``dT_out`` is None or a C-contiguous array of ``T``'s shape and ``dtype``."""
    if dT_out is not None and not (type(dT_out) is np.ndarray and dT_out.shape == T.shape
                                   and dT_out.dtype == dtype and dT_out.flags.c_contiguous):
        got = (f"{dT_out.shape} {dT_out.dtype}" + ("" if dT_out.flags.c_contiguous else " not C-contiguous")
               if isinstance(dT_out, np.ndarray) else type(dT_out).__name__)
        raise ValueError(f"pointwise_conv2d: dT_out must be a C-contiguous {np.dtype(dtype)} array of shape "
                         f"{T.shape}, got {got}")


def pointwise_conv2d_forward(x: np.ndarray, T: np.ndarray):
    """1x1 convolution, stride 1, no bias.

    Parameters
    ----------
    x : ndarray, shape (N, H, W, C_in)
    T : ndarray, shape (C_out, C_in)

    Returns
    -------
    z : ndarray, shape (N, H, W, C_out)
    cache : PointwiseCache

    Notes
    -----
    Forward, for every pixel ``a = x[n, i, j, :]``::

        z = T a                 i.e.  Z = X @ T^T   with X = x.reshape(N*H*W, C_in)

    Backward, from ``dZ = dL/dZ``::

        dL/dT = dZ^T @ X        (sum over pixels of the outer products dz a^T)
        dL/dX = dZ @ T          (each pixel's gradient mapped back by T^T)
    """
    C_out, C_in = check_channels(x, T)
    z = x.reshape(-1, C_in) @ T.T
    return z.reshape(*x.shape[:-1], C_out), PointwiseCache(x, T)


def pointwise_conv2d_backward(dz: np.ndarray, cache: PointwiseCache, dT_out: np.ndarray | None = None):
    """Gradients of :func:`pointwise_conv2d_forward`.

    Parameters
    ----------
    dz : ndarray, shape (N, H, W, C_out)
    cache : PointwiseCache
    dT_out : ndarray, shape (C_out, C_in), C-contiguous, dtype of ``dz``, optional
        Where to write ``dL/dT`` (a layer passes its weight's gradient array after ``zero_grad``, see
        :meth:`numpymnv2.nn.Parameter.grad_target`); None: a new array.

    Returns
    -------
    dx : ndarray, shape (N, H, W, C_in)
    dT : ndarray, shape (C_out, C_in)
    """
    x, T = cache
    C_out, C_in = T.shape
    check_gradient_out(dT_out, T, dz.dtype)
    dZ = dz.reshape(-1, C_out)
    # forward was: Z = X @ T.T
    dT = np.matmul(dZ.T, x.reshape(-1, C_in), out=dT_out)
    dx = (dZ @ T).reshape(x.shape)
    return dx, dT
