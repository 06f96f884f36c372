"""Matrix products of the fast backend, split over the threads of Numba's pool.

Every product of the fast backend comes here: the pointwise convolutions (``Z = X @ T^T``, see
:mod:`numpymnv2.functional.pointwise`), the stem's, the classifier's and the folded inference path's. With the
OpenMP layer (the default, see :mod:`numpymnv2.kernels._threads`) they are split here: each thread of Numba's
pool multiplies its block of rows of ``a`` by ``b`` with one single-threaded BLAS call (``np.dot`` inside a
Numba kernel calls SciPy's BLAS, set to one thread), so one pool of threads runs the whole step and no BLAS
worker spins beside a Numba kernel; a product too small to split is one such call. Under
``NUMPYMNV2_THREADING=workqueue`` the products are NumPy's ``matmul`` on NumPy's own BLAS threads, exactly as
in the reference.

- :func:`matmul`: ``out = a @ b``, split over the rows of ``a``; when ``a`` has too few rows, over the columns of
  ``b`` (a transposed weight, the forward ``X @ T^T``) or else over the inner dimension (``dL/dX = dZ T``), each
  thread's product into its own partial sum.
- :func:`matmul_tn`: ``a^T @ b``, the weight gradient ``dL/dT = dZ^T X``, whose sum runs over the rows: each
  thread sums its block of rows into its own partial product, and the partial products are added; with few
  rows, or no more rows than ``b`` has columns, each thread writes its block of rows of the result instead,
  ``a[:, lo:hi]^T @ b``.

Measured on the 2-core machine (OpenMP layer, float32, median of 50 calls): the expansion of the first block at
224x224, ``(12544, 16) @ (16, 96)``, 0.37 ms split over two threads against 0.73 ms on one BLAS thread (NumPy's
two OpenBLAS threads: 0.34 ms); ``(32768, 96) @ (96, 24)`` 1.42 ms against 2.54 ms.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from numpymnv2.kernels import _threads
from numpymnv2.kernels._launch import Kernel, num_chunks

# Below this many rows of ``a`` per thread the product is not split (one BLAS call does it).
MIN_ROWS_PER_THREAD = 32
# and below this many columns of ``b`` per thread a product with too few rows to split is not split either
MIN_COLUMNS_PER_THREAD = 64


def _products(a, b, out, n_chunks):
    """``out[lo:hi] = a[lo:hi] @ b`` for thread ``t``'s block ``[lo, hi)`` of the rows."""
    M = a.shape[0]
    for t in prange(n_chunks):
        lo, hi = t * M // n_chunks, (t + 1) * M // n_chunks
        np.dot(a[lo:hi], b, out[lo:hi])


def _products_tn(a, b, out, rest):
    """``a[lo:hi]^T @ b[lo:hi]`` for thread ``t``'s block ``[lo, hi)`` of the rows, into ``out`` for ``t = 0`` and
    into ``rest[t - 1]`` for the others; then ``out += rest[0]``, ``out += rest[1]``, ... in turn, each thread
    adding up its block of the rows of ``out``."""
    M, n_chunks = a.shape[0], rest.shape[0] + 1
    for t in prange(n_chunks):
        lo, hi = t * M // n_chunks, (t + 1) * M // n_chunks
        if t == 0:
            np.dot(a[lo:hi].T, b[lo:hi], out)
        else:
            np.dot(a[lo:hi].T, b[lo:hi], rest[t - 1])
    _add_blocks(out, rest, n_chunks)


@njit(cache=True, inline="always")
def _add_blocks(out, rest, n_chunks):
    """``out += rest[0]``, ``out += rest[1]``, ... in turn, thread ``t`` adding up its block of the rows of
    ``out`` (inlined into the kernels above, whose parallel copies run it in parallel)."""
    M, N = out.shape
    for t in prange(n_chunks):
        for i in range(t * M // n_chunks, (t + 1) * M // n_chunks):
            for s in range(n_chunks - 1):
                for j in range(N):
                    out[i, j] += rest[s, i, j]


def _products_cols(a, b_t, out_t, n_chunks):
    """``out_t[lo:hi] = b_t[lo:hi] @ a^T`` for thread ``t``'s block ``[lo, hi)`` of the columns of ``a @ b``."""
    N = b_t.shape[0]
    for t in prange(n_chunks):
        lo, hi = t * N // n_chunks, (t + 1) * N // n_chunks
        np.dot(b_t[lo:hi], a.T, out_t[lo:hi])


def _products_tn_cols(a, b, out, n_chunks):
    """``out[lo:hi] = a[:, lo:hi]^T @ b`` for thread ``t``'s block ``[lo, hi)`` of the columns of ``a`` (the rows
    of ``a^T @ b``); the block of ``a`` is copied first (BLAS takes only contiguous operands here)."""
    K = a.shape[1]
    for t in prange(n_chunks):
        lo, hi = t * K // n_chunks, (t + 1) * K // n_chunks
        np.dot(np.ascontiguousarray(a[:, lo:hi].T), b, out[lo:hi])


def _products_inner(a, b, out, rest):
    """``a[:, lo:hi] @ b[lo:hi]`` for thread ``t``'s block ``[lo, hi)`` of the inner dimension, into ``out`` for
    ``t = 0`` and into ``rest[t - 1]`` for the others; then the blocks added into ``out`` as in
    :func:`_products_tn`."""
    K, n_chunks = a.shape[1], rest.shape[0] + 1
    for t in prange(n_chunks):
        lo, hi = t * K // n_chunks, (t + 1) * K // n_chunks
        if t == 0:
            np.dot(np.ascontiguousarray(a[:, lo:hi]), b[lo:hi], out)
        else:
            np.dot(np.ascontiguousarray(a[:, lo:hi]), b[lo:hi], rest[t - 1])
    _add_blocks(out, rest, n_chunks)


_PRODUCTS = Kernel(_products, "gemm_products")           # compiled on first use (never without the split)
_PRODUCTS_TN = Kernel(_products_tn, "gemm_products_tn")
_PRODUCTS_COLS = Kernel(_products_cols, "gemm_products_cols")
_PRODUCTS_TN_COLS = Kernel(_products_tn_cols, "gemm_products_tn_cols")
_PRODUCTS_INNER = Kernel(_products_inner, "gemm_products_inner")


def _chunks(M: int, work: int, minimum: int = MIN_ROWS_PER_THREAD) -> int:
    """Into how many blocks of at least ``minimum`` to split ``M`` rows (or columns)."""
    return max(1, min(num_chunks(M, work), M // minimum))


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None,
           b_t: np.ndarray | None = None) -> np.ndarray:
    """``a @ b`` into ``out`` (allocated when not given) and returned.

    Split over the rows of ``a``; when ``a`` has too few rows for that (the last layers of a network at batch
    1: 49 rows at 224x224; at batch 32 and 32x32, 32 rows), over the columns of ``b`` when ``b`` is the
    transpose of a C-contiguous matrix (or ``b_t`` that matrix is given), else over the inner dimension when
    ``b`` is C-contiguous. Measured on the 2-core machine (OpenMP layer, float32, median of 300 calls): the
    head's ``(49, 320) @ (320, 1280)`` 0.26 ms split over the columns against 0.44 ms on one BLAS thread;
    ``(49, 960) @ (960, 320)`` 0.19 against 0.30 ms; the head's input gradient at batch 32, 32x32,
    ``(32, 1280) @ (1280, 320)``, 0.21 ms split over the inner dimension against 0.43 ms (NumPy's two OpenBLAS
    threads: 0.17 ms).

    Parameters
    ----------
    a : ndarray, shape (M, K), C-contiguous
    b : ndarray, shape (K, N), C- or F-contiguous (a transposed weight ``T.T`` is fine), dtype of ``a``
    out : ndarray, shape (M, N), C-contiguous, dtype of ``a``, optional
    b_t : ndarray, shape (N, K), C-contiguous, equal to ``b.T``, optional
    """
    if out is None:
        out = np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a, b))
    M, N = a.shape[0], b.shape[1]
    work = M * a.shape[1] * N
    if work == 0 or not _numba_can_multiply(a, b, out):
        return np.matmul(a, b, out=out)
    blocks = _chunks(M, work)
    if blocks == 1:
        if b_t is None and b.T.flags.c_contiguous:
            b_t = b.T
        columns = _chunks(N, work, MIN_COLUMNS_PER_THREAD)
        if b_t is not None and b_t.flags.c_contiguous and b_t.dtype == a.dtype and columns > 1:
            out_t = np.empty((N, M), dtype=a.dtype)
            _PRODUCTS_COLS.launch(work, a, b_t, out_t, columns)
            np.copyto(out, out_t.T)
            return out
        inner = _chunks(a.shape[1], work, MIN_COLUMNS_PER_THREAD)
        if b.flags.c_contiguous and inner > 1:
            _PRODUCTS_INNER.launch(work, a, b, out, np.empty((inner - 1, M, N), dtype=a.dtype))
            return out
    _PRODUCTS.launch(work, a, b, out, blocks)       # one block: one call of SciPy's BLAS on one thread
    return out


def _numba_can_multiply(a, b, out) -> bool:
    """Whether the product goes to the kernels here (split products on, and arrays that ``np.dot`` takes in a
    Numba kernel), rather than to NumPy's matmul."""
    return _threads.split_products() and a.dtype == b.dtype == out.dtype and a.dtype.char in "fd" \
        and a.flags.c_contiguous and out.flags.c_contiguous and (b.flags.c_contiguous or b.flags.f_contiguous)


def matmul_tn(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``a^T @ b`` into ``out`` (allocated when not given, shape ``(a.shape[1], b.shape[1])``) and returned.

    Split over the rows of ``a`` and ``b`` (partial products added), or over the columns of ``a`` when there
    are too few rows for that or no more rows than ``b`` has columns. Measured on the 2-core machine (OpenMP
    layer, float32, median of 300 calls): the head's weight gradient at batch 32, 32x32, ``(32, 1280)^T @
    (32, 320)``, 0.14 ms split over the columns against 0.39 ms unsplit (NumPy's two OpenBLAS threads:
    0.13 ms).

    Parameters
    ----------
    a : ndarray, shape (M, K), C-contiguous
    b : ndarray, shape (M, N), C-contiguous, dtype of ``a``
    out : ndarray, shape (K, N), C-contiguous, dtype of ``a``, optional
    """
    M, K, N = a.shape[0], a.shape[1], b.shape[1]
    if out is None:
        out = np.empty((K, N), dtype=np.result_type(a, b))
    work = M * K * N
    # b's layout is checked in the place of the output's: the kernels need it C-contiguous and of a's dtype
    if work == 0 or not _numba_can_multiply(a, b, b) or not _numba_can_multiply(a, out, out):
        return np.matmul(a.T, b, out=out)
    blocks = _chunks(M, work)
    columns = _chunks(K, work, MIN_COLUMNS_PER_THREAD)
    if columns > 1 and (blocks == 1 or M <= N):
        _PRODUCTS_TN_COLS.launch(work, a, b, out, columns)
    else:
        _PRODUCTS_TN.launch(work, a, b, out, np.empty((blocks - 1, K, N), dtype=a.dtype))
    return out


__all__ = ["matmul", "matmul_tn"]
