"""Depthwise convolution, Numba kernels with the contract of :mod:`numpymnv2.functional.depthwise`.

The equations are those of :func:`numpymnv2.functional.depthwise.depthwise_conv2d_forward`; here each is one
pass over memory in which the innermost loop runs over the contiguous channel axis ``c`` (``range(C)``, indexed
``x[n, h, w, c]`` so LLVM vectorises it). The padding is never materialised: each output pixel only visits the
taps that fall inside the image (3x3 border pixels read a clamped position and multiply it by 0, so a NaN or
infinity in ``x`` or ``dout`` also reaches the border pixels next to it, where the reference has a zero).
For 3x3 filters the common cases have their own loops: at stride 1 the forward computes four interior pixels per
pass over the channels (the weights and each input row's values loaded once for four outputs), the input
gradient is that forward applied to ``dout`` with the flipped filter, and the weight gradient updates the three
taps of a filter row together; at stride 2 the input gradient gathers only the (at most 2x2) taps that reach a
pixel. Products and sums may fuse into FMA instructions (``fastmath={"contract"}``, no reordering). Work is
split over output rows ``(n, i)`` so threads never write the same memory; the weight gradient, a sum over every pixel,
keeps one partial sum per thread and adds them at the end.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from numpymnv2._checks import conv_output_size
from numpymnv2.functional.depthwise import DepthwiseCache
from numpymnv2.kernels._launch import Kernel, num_chunks


def _compiled(py_func):
    return Kernel(py_func, py_func.__name__, fastmath={"contract"})


@njit(cache=True)
def _clamp3(start, size):
    """Rows ``start, start + 1, start + 2`` clamped into ``[0, size)``."""
    return (min(max(start, 0), size - 1), min(max(start + 1, 0), size - 1), min(max(start + 2, 0), size - 1))


@njit(cache=True)
def _inside3(start, size, one):
    """``one`` (1 in the arrays' dtype) for each of the rows ``start, start + 1, start + 2`` inside ``[0, size)``,
    else 0."""
    zero = one - one
    return (one if 0 <= start < size else zero, one if 0 <= start + 1 < size else zero,
            one if 0 <= start + 2 < size else zero)


@njit(cache=True)
def _first_valid(p, b, s):
    """Smallest output index ``j >= 0`` whose input column ``s j - p + b`` is ``>= 0``."""
    t = p - b
    if t <= 0:
        return 0
    return (t + s - 1) // s


@njit(cache=True)
def _end_valid(size, p, b, s, size_out):
    """One past the largest output index ``j < size_out`` whose input column ``s j - p + b`` is ``< size``."""
    t = size - 1 + p - b
    if t < 0:
        return 0
    return min(size_out, t // s + 1)


@_compiled
def _depthwise_forward(x, w, s, p, out):
    # out[n, i, j, c] = sum_{a, b} w[a, b, c] * x[n, s i - p + a, s j - p + b, c]   (taps inside the image)
    N, H, W, C = x.shape
    K = w.shape[0]
    H_out, W_out = out.shape[1], out.shape[2]
    one = out.dtype.type(1)
    for r in prange(N * H_out):
        n = r // H_out
        i = r - n * H_out
        h0 = s * i - p
        a_lo = max(0, -h0)
        a_hi = min(K, H - h0)
        # 3x3, stride 1, all three input rows inside: four interior output pixels per pass over the channels,
        # which load the nine weights and six x values per input row once for four outputs (each output is the
        # same nine-tap expression as below), then two; columns [jl, jb) are done here, the others by the loop below
        jl = min(max(p, 0), W_out)
        jb = jl
        if K == 3 and s == 1 and a_lo == 0 and a_hi == 3:
            jh = min(W_out, W + p - 2)
            while jb + 4 <= jh:
                v = jb - p
                for c in range(C):
                    w00, w01, w02 = w[0, 0, c], w[0, 1, c], w[0, 2, c]
                    w10, w11, w12 = w[1, 0, c], w[1, 1, c], w[1, 2, c]
                    w20, w21, w22 = w[2, 0, c], w[2, 1, c], w[2, 2, c]
                    x00, x01, x02 = x[n, h0, v, c], x[n, h0, v + 1, c], x[n, h0, v + 2, c]
                    x03, x04, x05 = x[n, h0, v + 3, c], x[n, h0, v + 4, c], x[n, h0, v + 5, c]
                    x10, x11, x12 = x[n, h0 + 1, v, c], x[n, h0 + 1, v + 1, c], x[n, h0 + 1, v + 2, c]
                    x13, x14, x15 = x[n, h0 + 1, v + 3, c], x[n, h0 + 1, v + 4, c], x[n, h0 + 1, v + 5, c]
                    x20, x21, x22 = x[n, h0 + 2, v, c], x[n, h0 + 2, v + 1, c], x[n, h0 + 2, v + 2, c]
                    x23, x24, x25 = x[n, h0 + 2, v + 3, c], x[n, h0 + 2, v + 4, c], x[n, h0 + 2, v + 5, c]
                    out[n, i, jb, c] = (w00 * x00 + w01 * x01 + w02 * x02 + w10 * x10 + w11 * x11 + w12 * x12
                                        + w20 * x20 + w21 * x21 + w22 * x22)
                    out[n, i, jb + 1, c] = (w00 * x01 + w01 * x02 + w02 * x03 + w10 * x11 + w11 * x12 + w12 * x13
                                            + w20 * x21 + w21 * x22 + w22 * x23)
                    out[n, i, jb + 2, c] = (w00 * x02 + w01 * x03 + w02 * x04 + w10 * x12 + w11 * x13 + w12 * x14
                                            + w20 * x22 + w21 * x23 + w22 * x24)
                    out[n, i, jb + 3, c] = (w00 * x03 + w01 * x04 + w02 * x05 + w10 * x13 + w11 * x14 + w12 * x15
                                            + w20 * x23 + w21 * x24 + w22 * x25)
                jb += 4
            if jb + 2 <= jh:
                v = jb - p
                for c in range(C):
                    w00, w01, w02 = w[0, 0, c], w[0, 1, c], w[0, 2, c]
                    w10, w11, w12 = w[1, 0, c], w[1, 1, c], w[1, 2, c]
                    w20, w21, w22 = w[2, 0, c], w[2, 1, c], w[2, 2, c]
                    x00, x01, x02, x03 = x[n, h0, v, c], x[n, h0, v + 1, c], x[n, h0, v + 2, c], x[n, h0, v + 3, c]
                    x10, x11 = x[n, h0 + 1, v, c], x[n, h0 + 1, v + 1, c]
                    x12, x13 = x[n, h0 + 1, v + 2, c], x[n, h0 + 1, v + 3, c]
                    x20, x21 = x[n, h0 + 2, v, c], x[n, h0 + 2, v + 1, c]
                    x22, x23 = x[n, h0 + 2, v + 2, c], x[n, h0 + 2, v + 3, c]
                    out[n, i, jb, c] = (w00 * x00 + w01 * x01 + w02 * x02 + w10 * x10 + w11 * x11 + w12 * x12
                                        + w20 * x20 + w21 * x21 + w22 * x22)
                    out[n, i, jb + 1, c] = (w00 * x01 + w01 * x02 + w02 * x03 + w10 * x11 + w11 * x12 + w12 * x13
                                            + w20 * x21 + w21 * x22 + w22 * x23)
                jb += 2
        for j in range(W_out):
            if jl <= j < jb:
                continue
            w0 = s * j - p
            b_lo = max(0, -w0)
            b_hi = min(K, W - w0)
            if K == 3:
                if a_lo == 0 and a_hi == 3 and b_lo == 0 and b_hi == 3:
                    # interior pixel of a 3x3 filter: the nine taps in one expression, one store per output
                    for c in range(C):
                        out[n, i, j, c] = (w[0, 0, c] * x[n, h0, w0, c] + w[0, 1, c] * x[n, h0, w0 + 1, c]
                                           + w[0, 2, c] * x[n, h0, w0 + 2, c]
                                           + w[1, 0, c] * x[n, h0 + 1, w0, c]
                                           + w[1, 1, c] * x[n, h0 + 1, w0 + 1, c]
                                           + w[1, 2, c] * x[n, h0 + 1, w0 + 2, c]
                                           + w[2, 0, c] * x[n, h0 + 2, w0, c]
                                           + w[2, 1, c] * x[n, h0 + 2, w0 + 1, c]
                                           + w[2, 2, c] * x[n, h0 + 2, w0 + 2, c])
                    continue
                # border pixel: the same expression with taps outside the image read at a clamped position and
                # multiplied by 0 (x is finite), which avoids a read-modify-write of out per tap
                r0, r1, r2 = _clamp3(h0, H)
                q0, q1, q2 = _clamp3(w0, W)
                m0, m1, m2 = _inside3(h0, H, one)
                e0, e1, e2 = _inside3(w0, W, one)
                for c in range(C):
                    out[n, i, j, c] = (m0 * (e0 * w[0, 0, c] * x[n, r0, q0, c] + e1 * w[0, 1, c] * x[n, r0, q1, c]
                                             + e2 * w[0, 2, c] * x[n, r0, q2, c])
                                       + m1 * (e0 * w[1, 0, c] * x[n, r1, q0, c] + e1 * w[1, 1, c] * x[n, r1, q1, c]
                                               + e2 * w[1, 2, c] * x[n, r1, q2, c])
                                       + m2 * (e0 * w[2, 0, c] * x[n, r2, q0, c] + e1 * w[2, 1, c] * x[n, r2, q1, c]
                                               + e2 * w[2, 2, c] * x[n, r2, q2, c]))
                continue
            for c in range(C):
                out[n, i, j, c] = 0
            for a in range(a_lo, a_hi):
                for b in range(b_lo, b_hi):
                    for c in range(C):
                        out[n, i, j, c] += w[a, b, c] * x[n, h0 + a, w0 + b, c]


@_compiled
def _depthwise_backward_input(dout, w, s, p, dx):
    # dL/dx[n, h, v, c] = sum over taps (a, b) with h = s i - p + a, v = s j - p + b of dout[n, i, j, c] w[a, b, c]
    # (a gather: each input pixel collects from the outputs that read it, so no two threads write one pixel)
    N, H, W, C = dx.shape
    K = w.shape[0]
    H_out, W_out = dout.shape[1], dout.shape[2]
    one = dx.dtype.type(1)
    for r in prange(N * H):
        n = r // H
        h = r - n * H
        i0 = h + p - (K - 1)          # the output row read through tap a = K - 1 when s == 1
        for v in range(W):
            j0 = v + p - (K - 1)
            if K == 3 and s == 1:
                # stride 1: dout rows i0 .. i0 + 2 meet taps a = 2 .. 0 (the filter flipped); at the border the
                # rows outside dout are read clamped and multiplied by 0, as in the forward kernel
                if i0 >= 0 and i0 + 2 < H_out and j0 >= 0 and j0 + 2 < W_out:
                    for c in range(C):
                        dx[n, h, v, c] = (w[2, 2, c] * dout[n, i0, j0, c] + w[2, 1, c] * dout[n, i0, j0 + 1, c]
                                          + w[2, 0, c] * dout[n, i0, j0 + 2, c]
                                          + w[1, 2, c] * dout[n, i0 + 1, j0, c]
                                          + w[1, 1, c] * dout[n, i0 + 1, j0 + 1, c]
                                          + w[1, 0, c] * dout[n, i0 + 1, j0 + 2, c]
                                          + w[0, 2, c] * dout[n, i0 + 2, j0, c]
                                          + w[0, 1, c] * dout[n, i0 + 2, j0 + 1, c]
                                          + w[0, 0, c] * dout[n, i0 + 2, j0 + 2, c])
                    continue
                r0, r1, r2 = _clamp3(i0, H_out)
                q0, q1, q2 = _clamp3(j0, W_out)
                m0, m1, m2 = _inside3(i0, H_out, one)
                e0, e1, e2 = _inside3(j0, W_out, one)
                for c in range(C):
                    dx[n, h, v, c] = (m0 * (e0 * w[2, 2, c] * dout[n, r0, q0, c] + e1 * w[2, 1, c] * dout[n, r0, q1, c]
                                            + e2 * w[2, 0, c] * dout[n, r0, q2, c])
                                      + m1 * (e0 * w[1, 2, c] * dout[n, r1, q0, c]
                                              + e1 * w[1, 1, c] * dout[n, r1, q1, c]
                                              + e2 * w[1, 0, c] * dout[n, r1, q2, c])
                                      + m2 * (e0 * w[0, 2, c] * dout[n, r2, q0, c]
                                              + e1 * w[0, 1, c] * dout[n, r2, q1, c]
                                              + e2 * w[0, 0, c] * dout[n, r2, q2, c]))
                continue
            if K == 3 and s == 2:
                # stride 2: at most two taps per axis reach (h, v) (one when h + p is odd); collect them, then
                # one store per pixel with only the taps that exist
                ra0 = ri0 = ra1 = ri1 = nr = 0
                for a in range(3):
                    t = h + p - a
                    if t >= 0 and t % 2 == 0 and t // 2 < H_out:
                        if nr == 0:
                            ra0, ri0 = a, t // 2
                        else:
                            ra1, ri1 = a, t // 2
                        nr += 1
                cb0 = cj0 = cb1 = cj1 = nc = 0
                for b in range(3):
                    u = v + p - b
                    if u >= 0 and u % 2 == 0 and u // 2 < W_out:
                        if nc == 0:
                            cb0, cj0 = b, u // 2
                        else:
                            cb1, cj1 = b, u // 2
                        nc += 1
                if nr == 0 or nc == 0:
                    for c in range(C):
                        dx[n, h, v, c] = 0
                elif nr == 1 and nc == 1:
                    for c in range(C):
                        dx[n, h, v, c] = dout[n, ri0, cj0, c] * w[ra0, cb0, c]
                elif nr == 1:
                    for c in range(C):
                        dx[n, h, v, c] = dout[n, ri0, cj0, c] * w[ra0, cb0, c] + dout[n, ri0, cj1, c] * w[ra0, cb1, c]
                elif nc == 1:
                    for c in range(C):
                        dx[n, h, v, c] = dout[n, ri0, cj0, c] * w[ra0, cb0, c] + dout[n, ri1, cj0, c] * w[ra1, cb0, c]
                else:
                    for c in range(C):
                        dx[n, h, v, c] = (dout[n, ri0, cj0, c] * w[ra0, cb0, c] + dout[n, ri0, cj1, c] * w[ra0, cb1, c]
                                          + dout[n, ri1, cj0, c] * w[ra1, cb0, c]
                                          + dout[n, ri1, cj1, c] * w[ra1, cb1, c])
                continue
            for c in range(C):
                dx[n, h, v, c] = 0
            for a in range(K):
                t = h + p - a
                if t < 0 or t % s != 0:
                    continue
                i = t // s
                if i >= H_out:
                    continue
                for b in range(K):
                    u = v + p - b
                    if u < 0 or u % s != 0:
                        continue
                    j = u // s
                    if j >= W_out:
                        continue
                    for c in range(C):
                        dx[n, h, v, c] += dout[n, i, j, c] * w[a, b, c]


@_compiled
def _depthwise_backward_weight(x, dout, K, s, p, partial):
    # dL/dw[a, b, c] = sum_{n, i, j} dout[n, i, j, c] * x[n, s i - p + a, s j - p + b, c]
    # partial[t] is thread t's sum over its block of output rows, in float64.
    N, H, W, C = x.shape
    H_out, W_out = dout.shape[1], dout.shape[2]
    n_chunks = partial.shape[0]
    rows = N * H_out
    for t in prange(n_chunks):
        # row_sum collects a block of up to 8 output rows in the input dtype, then joins the float64 partial
        row_sum = np.zeros((K, K, C), dtype=x.dtype)
        r_begin, r_end = t * rows // n_chunks, (t + 1) * rows // n_chunks
        for r in range(r_begin, r_end):
            n = r // H_out
            i = r - n * H_out
            h0 = s * i - p
            a_lo = max(0, -h0)
            a_hi = min(K, H - h0)
            for a in range(a_lo, a_hi):
                hh = h0 + a
                # 3x3, stride 1: the three taps b of a filter row in one pass over the channels, four output
                # pixels at a time (x columns v .. v + 5 serve all twelve products), where every b is inside
                jl = _first_valid(p, 0, 1)
                jh = _end_valid(W, p, 2, 1, W_out)
                j = jl
                if K == 3 and s == 1 and jl < jh:
                    while j + 4 <= jh:
                        v = j - p
                        for c in range(C):
                            d0 = dout[n, i, j, c]
                            d1 = dout[n, i, j + 1, c]
                            d2 = dout[n, i, j + 2, c]
                            d3 = dout[n, i, j + 3, c]
                            x0 = x[n, hh, v, c]
                            x1 = x[n, hh, v + 1, c]
                            x2 = x[n, hh, v + 2, c]
                            x3 = x[n, hh, v + 3, c]
                            x4 = x[n, hh, v + 4, c]
                            x5 = x[n, hh, v + 5, c]
                            row_sum[a, 0, c] += d0 * x0 + d1 * x1 + d2 * x2 + d3 * x3
                            row_sum[a, 1, c] += d0 * x1 + d1 * x2 + d2 * x3 + d3 * x4
                            row_sum[a, 2, c] += d0 * x2 + d1 * x3 + d2 * x4 + d3 * x5
                        j += 4
                    if j + 2 <= jh:
                        v = j - p
                        for c in range(C):
                            d0 = dout[n, i, j, c]
                            d1 = dout[n, i, j + 1, c]
                            x0 = x[n, hh, v, c]
                            x1 = x[n, hh, v + 1, c]
                            x2 = x[n, hh, v + 2, c]
                            x3 = x[n, hh, v + 3, c]
                            row_sum[a, 0, c] += d0 * x0 + d1 * x1
                            row_sum[a, 1, c] += d0 * x1 + d1 * x2
                            row_sum[a, 2, c] += d0 * x2 + d1 * x3
                        j += 2
                    # what is left for each b: its own columns left of jl, and from j to its end
                    for b in range(3):
                        for jj in range(_first_valid(p, b, 1), jl):
                            for c in range(C):
                                row_sum[a, b, c] += dout[n, i, jj, c] * x[n, hh, jj - p + b, c]
                        for jj in range(j, _end_valid(W, p, b, 1, W_out)):
                            for c in range(C):
                                row_sum[a, b, c] += dout[n, i, jj, c] * x[n, hh, jj - p + b, c]
                    continue
                for b in range(K):
                    j_lo = _first_valid(p, b, s)
                    j_hi = _end_valid(W, p, b, s, W_out)
                    j = j_lo
                    # four output pixels per update of row_sum: one read-modify-write per four products
                    while j + 4 <= j_hi:
                        v = s * j - p + b
                        for c in range(C):
                            row_sum[a, b, c] += (dout[n, i, j, c] * x[n, hh, v, c]
                                                 + dout[n, i, j + 1, c] * x[n, hh, v + s, c]
                                                 + dout[n, i, j + 2, c] * x[n, hh, v + 2 * s, c]
                                                 + dout[n, i, j + 3, c] * x[n, hh, v + 3 * s, c])
                        j += 4
                    for jj in range(j, j_hi):
                        for c in range(C):
                            row_sum[a, b, c] += dout[n, i, jj, c] * x[n, hh, s * jj - p + b, c]
            if (r - r_begin) % 8 == 7 or r == r_end - 1:
                for a in range(K):
                    for b in range(K):
                        for c in range(C):
                            partial[t, a, b, c] += row_sum[a, b, c]
                            row_sum[a, b, c] = 0


def depthwise_conv2d_forward(x: np.ndarray, w: np.ndarray, stride: int = 1, padding: int = 1):
    """Depthwise convolution (groups = channels), no bias; the fast path of
    :func:`numpymnv2.functional.depthwise.depthwise_conv2d_forward` (same arguments, results and cache).

    Parameters
    ----------
    x : ndarray, shape (N, H, W, C)
    w : ndarray, shape (K, K, C)
    stride, padding : int

    Returns
    -------
    out : ndarray, shape (N, H_out, W_out, C), dtype of ``x``
    cache : DepthwiseCache
    """
    N, H, W, C = x.shape
    K = w.shape[0]
    if w.shape != (K, K, C):
        raise ValueError(f"depthwise_conv2d: expected weight shape (K, K, {C}) for input shape {x.shape}, "
                         f"got {w.shape}")
    s, p = int(stride), int(padding)
    H_out = conv_output_size(H, K, s, p, "depthwise_conv2d", "H")
    W_out = conv_output_size(W, K, s, p, "depthwise_conv2d", "W")
    x = np.ascontiguousarray(x)
    w = np.ascontiguousarray(w, dtype=x.dtype)
    out = np.empty((N, H_out, W_out, C), dtype=x.dtype)
    _depthwise_forward(out.size * K * K, x, w, s, p, out)
    return out, DepthwiseCache(x, w, s, p)


def depthwise_conv2d_backward(dout: np.ndarray, cache: DepthwiseCache):
    """Gradients of :func:`depthwise_conv2d_forward`; see
    :func:`numpymnv2.functional.depthwise.depthwise_conv2d_backward` for the equations.

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
    K = w.shape[0]
    dout = np.ascontiguousarray(dout, dtype=x.dtype)
    dx = np.empty_like(x)
    work = dout.size * K * K
    if K == 3 and s == 1 and p <= 2:
        # stride 1: dx is the forward convolution of dout, padded by K - 1 - p, with the flipped filter (the
        # same nine-tap sums in the same order as _depthwise_backward_input), which takes the forward kernel's
        # four-pixel blocks
        _depthwise_forward(work, dout, np.ascontiguousarray(w[::-1, ::-1]), 1, K - 1 - p, dx)
    else:
        _depthwise_backward_input(work, dout, w, s, p, dx)
    partial = np.zeros((num_chunks(dout.shape[0] * dout.shape[1], work), K, K, x.shape[3]), dtype=np.float64)
    _depthwise_backward_weight(work, x, dout, K, s, p, partial)
    dw = partial.sum(axis=0).astype(x.dtype)
    return dx, dw


__all__ = ["depthwise_conv2d_backward", "depthwise_conv2d_forward"]
