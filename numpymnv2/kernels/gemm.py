"""Matrix products of the fast backend, split over the threads of Numba's pool under ``NUMPYMNV2_THREADING=omp``.

The pointwise convolutions and the folded inference path's products are BLAS products (``Z = X @ T^T``, see
:mod:`numpymnv2.functional.pointwise`). With the OpenMP layer (see :mod:`numpymnv2.kernels._threads`) BLAS runs
on one thread and the products are split here instead: each thread of Numba's pool multiplies its block of rows
of ``a`` by ``b`` with one single-threaded BLAS call (``np.dot`` inside a Numba kernel calls SciPy's BLAS), so
one pool of threads runs the whole step and no BLAS worker spins beside a Numba kernel. Otherwise (the default)
the products are NumPy's ``matmul`` on NumPy's own BLAS threads, exactly as in the reference.

- :func:`matmul`: ``out = a @ b``, split over the rows of ``a``.
- :func:`matmul_tn`: ``a^T @ b``, the weight gradient ``dL/dT = dZ^T X``, whose sum runs over the rows: each
  thread sums its block of rows into its own partial product, and the partial products are added.

Measured on the 2-core machine (OpenMP layer, float32, median of 50 calls): the expansion of the first block at
224x224, ``(12544, 16) @ (16, 96)``, 0.37 ms split over two threads against 0.73 ms on one BLAS thread (NumPy's
two OpenBLAS threads: 0.34 ms); ``(32768, 96) @ (96, 24)`` 1.42 ms against 2.54 ms.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from numpymnv2.kernels import _threads
from numpymnv2.kernels._launch import Kernel, num_chunks

# Below this many rows of ``a`` per thread the product is not split (one BLAS call does it).
MIN_ROWS_PER_THREAD = 32


def _products(a, b, out, n_chunks):
    """``out[lo:hi] = a[lo:hi] @ b`` for thread ``t``'s block ``[lo, hi)`` of the rows."""
    M = a.shape[0]
    for t in prange(n_chunks):
        lo, hi = t * M // n_chunks, (t + 1) * M // n_chunks
        np.dot(a[lo:hi], b, out[lo:hi])


def _products_tn(a, b, partial):
    """``partial[t] = a[lo:hi]^T @ b[lo:hi]`` for thread ``t``'s block ``[lo, hi)`` of the rows."""
    M, n_chunks = a.shape[0], partial.shape[0]
    for t in prange(n_chunks):
        lo, hi = t * M // n_chunks, (t + 1) * M // n_chunks
        np.dot(a[lo:hi].T, b[lo:hi], partial[t])


_PRODUCTS = Kernel(_products, "gemm_products")           # compiled on first use (never without the split)
_PRODUCTS_TN = Kernel(_products_tn, "gemm_products_tn")


def _chunks(M: int, work: int) -> int:
    return max(1, min(num_chunks(M, work), M // MIN_ROWS_PER_THREAD))


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``a @ b`` into ``out`` (allocated when not given) and returned.

    Parameters
    ----------
    a : ndarray, shape (M, K), C-contiguous
    b : ndarray, shape (K, N), C- or F-contiguous (a transposed weight ``T.T`` is fine), dtype of ``a``
    out : ndarray, shape (M, N), C-contiguous, dtype of ``a``, optional
    """
    if out is None:
        out = np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a, b))
    work = a.shape[0] * a.shape[1] * b.shape[1]
    blocks = _chunks(a.shape[0], work)
    if not _threads.split_products() or a.dtype != b.dtype or a.dtype != out.dtype or not a.flags.c_contiguous \
            or not out.flags.c_contiguous or blocks == 1:
        return np.matmul(a, b, out=out)
    _PRODUCTS.launch(work, a, b, out, blocks)
    return out


def matmul_tn(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a^T @ b``, a new array of shape ``(a.shape[1], b.shape[1])``.

    Parameters
    ----------
    a : ndarray, shape (M, K), C-contiguous
    b : ndarray, shape (M, N), C-contiguous, dtype of ``a``
    """
    M = a.shape[0]
    work = M * a.shape[1] * b.shape[1]
    blocks = _chunks(M, work)
    if not _threads.split_products() or a.dtype != b.dtype or not a.flags.c_contiguous \
            or not b.flags.c_contiguous or blocks == 1:
        return a.T @ b
    partial = np.empty((blocks, a.shape[1], b.shape[1]), dtype=a.dtype)
    _PRODUCTS_TN.launch(work, a, b, partial)
    return partial.sum(axis=0)


__all__ = ["matmul", "matmul_tn"]
