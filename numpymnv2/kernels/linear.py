"""The classifier's fully connected layer with the contract of :mod:`numpymnv2.functional.linear`, its products by
:mod:`.gemm` (so that with the OpenMP layer no product of the fast backend runs on NumPy's BLAS
threads, which would spin beside Numba's workers)."""
from __future__ import annotations

import numpy as np

from numpymnv2.functional.linear import LinearCache, check_linear_input
from numpymnv2.kernels import gemm


def linear_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None):
    """``y = x W^T + b``, ``(N, D_in) -> (N, D_out)``, and the cache; the contract (shapes, errors) of
    :func:`numpymnv2.functional.linear.linear_forward`."""
    check_linear_input(x, weight)
    y = gemm.matmul(np.ascontiguousarray(x), weight.T)
    if bias is not None:
        y += bias
    return y, LinearCache(x, weight)


def linear_backward(dy: np.ndarray, cache: LinearCache):
    """Return ``(dx, dweight, dbias)``; see :func:`numpymnv2.functional.linear.linear_backward`."""
    x, weight = cache
    dy = np.ascontiguousarray(dy)
    # forward was: y = x @ weight.T + bias
    return gemm.matmul(dy, weight), gemm.matmul_tn(dy, np.ascontiguousarray(x)), dy.sum(axis=0)
