"""Depthwise convolution, Numba kernels with the contract of :mod:`numpymnv2.functional.depthwise`.

The equations are those of :func:`numpymnv2.functional.depthwise.depthwise_conv2d_forward`. Each direction is a
row function run by a loop of :mod:`numpymnv2.kernels._launch`: one pass over memory whose innermost loop runs
over the contiguous channel axis ``c`` (``range(C)``, indexed ``x[n, h, w, c]``, so LLVM vectorises it). The
padding is never materialised: a pixel visits only the taps inside the image (:func:`_taps_inside`,
:func:`_outputs_inside`). Products and sums may fuse into FMA instructions (``fastmath={"contract"}``, no
reordering).

- Forward (:func:`_forward_row`): work split over output rows ``(n, i)``. The general loop
  (:func:`_forward_pixels`) sums a pixel's taps one at a time into ``out``; a 3x3 filter's interior pixels
  take one nine-tap expression per pixel (:func:`_forward_3x3_one`), four pixels at a time at stride 1
  (:func:`_forward_3x3_four`), and its border pixels but the corners a nine-tap expression with the taps
  outside clamped and counted 0 (:func:`_forward_3x3_edge`).
- Input gradient: at stride 1 (with ``padding <= K - 1``) it is the forward convolution of ``dout``, padded by
  ``K - 1 - padding``, with the flipped filter, so it runs the forward kernel. Otherwise a gather over input
  rows ``(n, h)`` (:func:`_input_grad_row`): each input pixel collects the products of the outputs that read
  it, so no two threads write the same pixel; 3x3 at stride 2 has its own per-pixel expressions.
- Weight gradient (:func:`_weight_grad_row`): a sum over every output pixel, one float64 partial sum per thread
  (:func:`~numpymnv2.kernels._launch.per_thread_sums`); 3x3 at stride 1 does the three taps of a filter row in
  one pass.

Each special case is written beside the general loop it replaces, says what it buys, and has a test that runs
it (``tests/kernels/test_depthwise.py``). The figures are CPU time of the serial copy against the general loop,
interleaved in one process on a shared 2-core machine (noise about 10%), float32, at the depthwise layers of
MobileNetV2 (width 1.0, batch 32 at 32x32 and batch 8 at 224x224). Removed because they did not pay by more
than the noise: a two-pixel block after the four-pixel ones (forward and weight gradient, 5-10% at 16x16 and
4x4 and nothing elsewhere), four outputs per update in the general weight-gradient loop, and the clamped
expression at the corner pixels (1.2-3x slower at 2x2 and 1x1).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from numpymnv2._checks import conv_output_size
from numpymnv2.functional.depthwise import DepthwiseCache
from numpymnv2.kernels._launch import parallel_rows, per_thread_sums

# rows of the weight gradient summed in the inputs' dtype before they join the float64 per-thread sum
WEIGHT_GRAD_ROWS_PER_FLUSH = 8


@njit(cache=True, inline="always")
def _taps_inside(start, K, size):
    """The taps ``[lo, hi)`` of a ``K``-tap filter placed at ``start`` (tap ``a`` reads index ``start + a``) whose
    index lies in ``[0, size)``."""
    return max(0, -start), min(K, size - start)


@njit(cache=True, inline="always")
def _outputs_inside(b, s, p, size, size_out):
    """The outputs ``[lo, hi)`` of ``range(size_out)`` whose tap ``b``, at index ``s j - p + b``, lies in
    ``[0, size)``."""
    lo = -((b - p) // s)              # ceil((p - b) / s): the first j with s j - p + b >= 0
    hi = (size - 1 + p - b) // s + 1  # one past the last j with s j - p + b <= size - 1
    lo = max(lo, 0)
    return lo, max(lo, min(hi, size_out))


@njit(cache=True, inline="always")
def _clamp(k, size):
    """Index ``k`` clamped into ``[0, size)``."""
    return min(max(k, 0), size - 1)


@njit(cache=True, inline="always")
def _indicator(k, size, one):
    """``one`` (1 in the arrays' dtype) when index ``k`` lies in ``[0, size)``, else 0."""
    return one if 0 <= k < size else one - one


# ------------------------------------------------------------------------------------------------------------
# forward
# ------------------------------------------------------------------------------------------------------------
@njit(cache=True, inline="always")
def _forward_pixels(x, w, s, p, n, i, j_begin, j_end, out):
    """``out[n, i, j, c] = sum_{a, b} w[a, b, c] x[n, s i - p + a, s j - p + b, c]`` for ``j_begin <= j < j_end``,
    over the taps inside the image."""
    H, W, C = x.shape[1], x.shape[2], x.shape[3]
    K = w.shape[0]
    h0 = s * i - p
    a_lo, a_hi = _taps_inside(h0, K, H)
    for j in range(j_begin, j_end):
        v0 = s * j - p
        b_lo, b_hi = _taps_inside(v0, K, W)
        for c in range(C):
            out[n, i, j, c] = 0
        for a in range(a_lo, a_hi):
            for b in range(b_lo, b_hi):
                for c in range(C):
                    out[n, i, j, c] += w[a, b, c] * x[n, h0 + a, v0 + b, c]


# 3x3 stride-1 forward, four pixels per pass: with _forward_3x3_one for the last 0-3 interior pixels,
# 0.41-0.73x the general loop's time at 8x14x14x384/576, 8x7x7x960 and 32x8x8x144 (against 0.64-0.89x with
# _forward_3x3_one alone); at 8x56x56x144 and 32x16x16x32 it measured 1.2x the time of _forward_3x3_one alone.
@njit(cache=True, inline="always")
def _forward_3x3_four(x, w, n, h0, v0, i, j, out):
    """Four pixels of a 3x3 filter at stride 1 with every tap inside:
    ``out[n, i, j + k, c] = sum_{a, b < 3} w[a, b, c] x[n, h0 + a, v0 + k + b, c]`` for ``k = 0, 1, 2, 3``.

    One pass over the channels loads the nine weights and the six values of each input row once for the four
    outputs, and stores each output once (the general loop reads and writes ``out`` once per tap).
    """
    for c in range(x.shape[3]):
        w00, w01, w02 = w[0, 0, c], w[0, 1, c], w[0, 2, c]
        w10, w11, w12 = w[1, 0, c], w[1, 1, c], w[1, 2, c]
        w20, w21, w22 = w[2, 0, c], w[2, 1, c], w[2, 2, c]
        x00, x01, x02 = x[n, h0, v0, c], x[n, h0, v0 + 1, c], x[n, h0, v0 + 2, c]
        x03, x04, x05 = x[n, h0, v0 + 3, c], x[n, h0, v0 + 4, c], x[n, h0, v0 + 5, c]
        x10, x11, x12 = x[n, h0 + 1, v0, c], x[n, h0 + 1, v0 + 1, c], x[n, h0 + 1, v0 + 2, c]
        x13, x14, x15 = x[n, h0 + 1, v0 + 3, c], x[n, h0 + 1, v0 + 4, c], x[n, h0 + 1, v0 + 5, c]
        x20, x21, x22 = x[n, h0 + 2, v0, c], x[n, h0 + 2, v0 + 1, c], x[n, h0 + 2, v0 + 2, c]
        x23, x24, x25 = x[n, h0 + 2, v0 + 3, c], x[n, h0 + 2, v0 + 4, c], x[n, h0 + 2, v0 + 5, c]
        out[n, i, j, c] = (w00 * x00 + w01 * x01 + w02 * x02 + w10 * x10 + w11 * x11 + w12 * x12
                           + w20 * x20 + w21 * x21 + w22 * x22)
        out[n, i, j + 1, c] = (w00 * x01 + w01 * x02 + w02 * x03 + w10 * x11 + w11 * x12 + w12 * x13
                               + w20 * x21 + w21 * x22 + w22 * x23)
        out[n, i, j + 2, c] = (w00 * x02 + w01 * x03 + w02 * x04 + w10 * x12 + w11 * x13 + w12 * x14
                               + w20 * x22 + w21 * x23 + w22 * x24)
        out[n, i, j + 3, c] = (w00 * x03 + w01 * x04 + w02 * x05 + w10 * x13 + w11 * x14 + w12 * x15
                               + w20 * x23 + w21 * x24 + w22 * x25)


# 3x3 interior pixel, nine taps in one expression: 0.60-0.80x the general loop's time at the stride-2 layers,
# 0.40-0.83x at the stride-1 ones (where it also does what the four-pixel blocks leave).
@njit(cache=True, inline="always")
def _forward_3x3_one(x, w, n, h0, v0, i, j, out):
    """One pixel of a 3x3 filter with every tap inside, at any stride:
    ``out[n, i, j, c] = sum_{a, b < 3} w[a, b, c] x[n, h0 + a, v0 + b, c]`` in one expression, one store per
    output (the general loop reads and writes ``out`` once per tap)."""
    for c in range(x.shape[3]):
        out[n, i, j, c] = (w[0, 0, c] * x[n, h0, v0, c] + w[0, 1, c] * x[n, h0, v0 + 1, c]
                           + w[0, 2, c] * x[n, h0, v0 + 2, c] + w[1, 0, c] * x[n, h0 + 1, v0, c]
                           + w[1, 1, c] * x[n, h0 + 1, v0 + 1, c] + w[1, 2, c] * x[n, h0 + 1, v0 + 2, c]
                           + w[2, 0, c] * x[n, h0 + 2, v0, c] + w[2, 1, c] * x[n, h0 + 2, v0 + 1, c]
                           + w[2, 2, c] * x[n, h0 + 2, v0 + 2, c])


# 3x3 border pixel with one row or one column of taps outside, nine taps in one expression: with it the
# stride-1 forward took 0.76-0.93x the time it took without it (general loop at every border pixel) at
# 32x16x16x32, 32x8x8x144, 32x4x4x192, 8x14x14x384, 8x28x28x192, 8x56x56x144 and 8x112x112x32. Corner pixels (two taps
# outside in each direction) stay with the general loop: there the nine taps would be 2.25x the work (a clamped
# expression at every border pixel made 2x2 and 1x1 images 1.2-3x slower).
@njit(cache=True, inline="always")
def _forward_3x3_edge(x, w, n, h0, v0, i, j, out):
    """One pixel of a 3x3 filter whose taps outside the image form one row or one column:
    ``out[n, i, j, c] = sum_{a, b < 3} m_a e_b w[a, b, c] x[n, r_a, q_b, c]``, with ``m_a`` (``e_b``) 1 when
    row ``h0 + a`` (column ``v0 + b``) is inside and 0 when not, and ``r_a``, ``q_b`` the row and column clamped
    into the image. A tap outside thus reads a value of one of the pixel's own taps inside and counts 0, in one
    store per output; the difference from the reference is that an infinity in the window gives NaN
    (``0 * inf``) rather than an infinity.
    """
    H, W = x.shape[1], x.shape[2]
    one = out.dtype.type(1)
    r0, r1, r2 = _clamp(h0, H), _clamp(h0 + 1, H), _clamp(h0 + 2, H)
    q0, q1, q2 = _clamp(v0, W), _clamp(v0 + 1, W), _clamp(v0 + 2, W)
    m0, m1, m2 = _indicator(h0, H, one), _indicator(h0 + 1, H, one), _indicator(h0 + 2, H, one)
    e0, e1, e2 = _indicator(v0, W, one), _indicator(v0 + 1, W, one), _indicator(v0 + 2, W, one)
    for c in range(x.shape[3]):
        out[n, i, j, c] = (m0 * (e0 * w[0, 0, c] * x[n, r0, q0, c] + e1 * w[0, 1, c] * x[n, r0, q1, c]
                                 + e2 * w[0, 2, c] * x[n, r0, q2, c])
                           + m1 * (e0 * w[1, 0, c] * x[n, r1, q0, c] + e1 * w[1, 1, c] * x[n, r1, q1, c]
                                   + e2 * w[1, 2, c] * x[n, r1, q2, c])
                           + m2 * (e0 * w[2, 0, c] * x[n, r2, q0, c] + e1 * w[2, 1, c] * x[n, r2, q1, c]
                                   + e2 * w[2, 2, c] * x[n, r2, q2, c]))


# A function of its own, not inlined into _forward_row (inline="always", as the other helpers): the row function
# calls it from three places, and Numba copied its IR, the clamped expression and the general loop included,
# into each. That made the forward kernel the slowest of the package to compile: 10.5 s on a cold cache for each
# of its serial and parallel copies, against 3.6 s now (the first train step at batch 32, 32x32, width 0.35, went
# from 17.0 to 12.2 s). Border pixels are a small share of a row; the kernel's time did not change measurably.
@njit(cache=True, fastmath={"contract"})
def _forward_3x3_border(x, w, s, p, n, i, j, rows_inside, out):
    """Border pixel ``(i, j)`` of a 3x3 filter with ``rows_inside`` of its three rows of taps inside: the clamped
    expression when one row or one column of taps is outside, else the general loop."""
    b_lo, b_hi = _taps_inside(s * j - p, 3, x.shape[2])
    if rows_inside * (b_hi - b_lo) == 6:
        _forward_3x3_edge(x, w, n, s * i - p, s * j - p, i, j, out)
    else:
        _forward_pixels(x, w, s, p, n, i, j, j + 1, out)


@njit(cache=True, inline="always")
def _forward_row(inputs, r):
    """Output row ``r = (n, i)`` of ``out[n, i, j, c] = sum_{a, b} w[a, b, c] x[n, s i - p + a, s j - p + b, c]``
    (stride ``s``, padding ``p``)."""
    x, w, s, p, out = inputs
    H, W = x.shape[1], x.shape[2]
    H_out, W_out = out.shape[1], out.shape[2]
    n, i = r // H_out, r % H_out
    h0 = s * i - p
    if w.shape[0] != 3:
        _forward_pixels(x, w, s, p, n, i, 0, W_out, out)
        return
    a_lo, a_hi = _taps_inside(h0, 3, H)
    # the columns [j_lo, j_hi) have their three taps inside
    j_lo, j_hi = _outputs_inside(0, s, p, W, W_out)[0], _outputs_inside(2, s, p, W, W_out)[1]
    if a_hi - a_lo < 3 or j_lo >= j_hi:
        for j in range(W_out):
            _forward_3x3_border(x, w, s, p, n, i, j, a_hi - a_lo, out)
        return
    for j in range(j_lo):
        _forward_3x3_border(x, w, s, p, n, i, j, 3, out)
    j = j_lo
    if s == 1:
        while j + 4 <= j_hi:
            _forward_3x3_four(x, w, n, h0, j - p, i, j, out)
            j += 4
    while j < j_hi:
        _forward_3x3_one(x, w, n, h0, s * j - p, i, j, out)
        j += 1
    for j in range(j_hi, W_out):
        _forward_3x3_border(x, w, s, p, n, i, j, 3, out)


_forward = parallel_rows(_forward_row, fastmath={"contract"})


# ------------------------------------------------------------------------------------------------------------
# input gradient
# ------------------------------------------------------------------------------------------------------------
@njit(cache=True, inline="always")
def _input_grad_pixel(dout, w, s, p, n, h, v, dx):
    """``dL/dx[n, h, v, c] = sum dout[n, i, j, c] w[a, b, c]`` over the taps ``(a, b)`` and outputs ``(i, j)``
    inside ``dout`` with ``s i - p + a = h`` and ``s j - p + b = v``."""
    H_out, W_out = dout.shape[1], dout.shape[2]
    K = w.shape[0]
    for c in range(dx.shape[3]):
        dx[n, h, v, c] = 0
    for a in range((h + p) % s, K, s):          # the taps a with s dividing h + p - a
        i = (h + p - a) // s
        if 0 <= i < H_out:
            for b in range((v + p) % s, K, s):
                j = (v + p - b) // s
                if 0 <= j < W_out:
                    for c in range(dx.shape[3]):
                        dx[n, h, v, c] += dout[n, i, j, c] * w[a, b, c]


@njit(cache=True, inline="always")
def _stride2_taps(u, size_out):
    """The taps of a 3-tap filter at stride 2 that reach padded index ``u = h + p`` from an output inside
    ``[0, size_out)``: ``(a0, i0, a1, i1, count)``, the ``count`` first of tap ``a0`` from output ``i0`` and tap
    ``a1`` from output ``i1``, where tap ``a`` of output ``i`` reads ``u = 2 i + a``."""
    if u % 2 == 1:
        i = (u - 1) // 2
        return 1, i, 1, i, (1 if i < size_out else 0)
    i0, i2 = u // 2, u // 2 - 1                 # an even u is read by tap 0 of output u / 2, tap 2 of the one before
    inside0, inside2 = i0 < size_out, 0 <= i2 < size_out
    if inside0 and inside2:
        return 0, i0, 2, i2, 2
    if inside0:
        return 0, i0, 0, i0, 1
    if inside2:
        return 2, i2, 2, i2, 1
    return 0, 0, 0, 0, 0


# 3x3 stride-2 input gradient, one expression per number of taps: 0.65-0.87x the general gather's time at
# every stride-2 layer shape.
@njit(cache=True, inline="always")
def _input_grad_3x3_s2_pixel(dout, w, p, n, h, v, dx):
    """:func:`_input_grad_pixel` for a 3x3 filter at stride 2, where one to four taps reach ``(h, v)``: each case
    is one expression and one store per value (the general loop reads and writes ``dx`` once per tap)."""
    ra0, ri0, ra1, ri1, nr = _stride2_taps(h + p, dout.shape[1])
    cb0, cj0, cb1, cj1, nc = _stride2_taps(v + p, dout.shape[2])
    C = dx.shape[3]
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
                              + dout[n, ri1, cj0, c] * w[ra1, cb0, c] + dout[n, ri1, cj1, c] * w[ra1, cb1, c])


@njit(cache=True, inline="always")
def _input_grad_row(inputs, r):
    """Input row ``r = (n, h)`` of ``dL/dx`` (a gather: each input pixel collects from the outputs that read
    it, so no two threads write the same pixel)."""
    dout, w, s, p, dx = inputs
    H, W = dx.shape[1], dx.shape[2]
    n, h = r // H, r % H
    for v in range(W):
        if w.shape[0] == 3 and s == 2:
            _input_grad_3x3_s2_pixel(dout, w, p, n, h, v, dx)
        else:
            _input_grad_pixel(dout, w, s, p, n, h, v, dx)


_input_grad = parallel_rows(_input_grad_row, fastmath={"contract"})


# ------------------------------------------------------------------------------------------------------------
# weight gradient
# ------------------------------------------------------------------------------------------------------------
# 3x3 stride-1 weight gradient, the three taps of a filter row per pass, four outputs at a time: 0.67-0.85x
# the general loop's time at 8x14x14x384/576, 8x7x7x960, 8x112x112x32, 32x16x16x32 and 32x8x8x144 (0.94x at
# 8x56x56x144 and 8x28x28x192; below 7 columns it has nothing to do).
@njit(cache=True, inline="always")
def _weight_grad_3x3_taps(x, dout, n, i, hh, a, p, j_lo, j_hi, acc):
    """The three taps ``b`` of filter row ``a`` of a 3x3 filter at stride 1, for outputs ``j_lo <= j < j_hi``
    whose three taps are all inside: ``acc[a, b, c] += sum_j dout[n, i, j, c] x[n, hh, j - p + b, c]``.

    Four outputs per pass over the channels: the six values ``x[n, hh, j - p .. j - p + 5, c]`` serve all twelve
    products, and each ``acc[a, b, c]`` is read and written once per four outputs. Returns the first ``j`` not
    done (fewer than four remain).
    """
    j = j_lo
    while j + 4 <= j_hi:
        v = j - p
        for c in range(x.shape[3]):
            d0, d1, d2, d3 = dout[n, i, j, c], dout[n, i, j + 1, c], dout[n, i, j + 2, c], dout[n, i, j + 3, c]
            x0, x1, x2 = x[n, hh, v, c], x[n, hh, v + 1, c], x[n, hh, v + 2, c]
            x3, x4, x5 = x[n, hh, v + 3, c], x[n, hh, v + 4, c], x[n, hh, v + 5, c]
            acc[a, 0, c] += d0 * x0 + d1 * x1 + d2 * x2 + d3 * x3
            acc[a, 1, c] += d0 * x1 + d1 * x2 + d2 * x3 + d3 * x4
            acc[a, 2, c] += d0 * x2 + d1 * x3 + d2 * x4 + d3 * x5
        j += 4
    return j


@njit(cache=True, inline="always")
def _weight_grad_tap(x, dout, n, i, hh, a, b, s, p, j_lo, j_hi, acc):
    """Tap ``(a, b)`` over the outputs ``j_lo <= j < j_hi`` of row ``(n, i)``, whose input row is ``hh``:
    ``acc[a, b, c] += sum_j dout[n, i, j, c] x[n, hh, s j - p + b, c]``."""
    for j in range(j_lo, j_hi):
        v = s * j - p + b
        for c in range(x.shape[3]):
            acc[a, b, c] += dout[n, i, j, c] * x[n, hh, v, c]


@njit(cache=True, inline="always")
def _weight_grad_row(inputs, r, acc):
    """Output row ``r = (n, i)``: ``acc[a, b, c] += sum_j dout[n, i, j, c] x[n, s i - p + a, s j - p + b, c]``
    over the taps inside the image."""
    x, dout, s, p = inputs
    H, W = x.shape[1], x.shape[2]
    H_out, W_out = dout.shape[1], dout.shape[2]
    K = acc.shape[0]
    n, i = r // H_out, r % H_out
    h0 = s * i - p
    a_lo, a_hi = _taps_inside(h0, K, H)
    for a in range(a_lo, a_hi):
        # outputs [j_done_lo, j_done_hi) done for all three taps of the filter row at once (3x3, stride 1), the
        # others tap by tap
        j_done_lo = j_done_hi = 0
        if K == 3 and s == 1:
            j_done_lo = _outputs_inside(0, 1, p, W, W_out)[0]
            j_done_hi = _weight_grad_3x3_taps(x, dout, n, i, h0 + a, a, p, j_done_lo,
                                              _outputs_inside(2, 1, p, W, W_out)[1], acc)
        for b in range(K):
            j_lo, j_hi = _outputs_inside(b, s, p, W, W_out)
            _weight_grad_tap(x, dout, n, i, h0 + a, a, b, s, p, j_lo, min(j_hi, j_done_lo), acc)
            _weight_grad_tap(x, dout, n, i, h0 + a, a, b, s, p, max(j_lo, j_done_hi), j_hi, acc)


_weight_grad = per_thread_sums(_weight_grad_row, WEIGHT_GRAD_ROWS_PER_FLUSH, fastmath={"contract"})


# ------------------------------------------------------------------------------------------------------------
# public functions
# ------------------------------------------------------------------------------------------------------------
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
    _forward(out.size * K * K, N * H_out, (x, w, s, p, out))
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
    N, H, W, C = x.shape
    K = w.shape[0]
    dout = np.ascontiguousarray(dout, dtype=x.dtype)
    dx = np.empty_like(x)
    work = dout.size * K * K
    if s == 1 and p <= K - 1:
        # dL/dx[h, v] = sum_{a, b} dout[h + p - a, v + p - b] w[a, b]: the forward convolution of dout, padded by
        # K - 1 - p, with the filter flipped in both axes
        _forward(work, N * H, (dout, np.ascontiguousarray(w[::-1, ::-1]), 1, K - 1 - p, dx))
    else:
        _input_grad(work, N * H, (dout, w, s, p, dx))
    rows = N * dout.shape[1]
    dw = _weight_grad(work, rows, (x, dout, s, p), (K, K, C))
    return dx, dw.astype(x.dtype)


__all__ = ["depthwise_conv2d_backward", "depthwise_conv2d_forward"]
