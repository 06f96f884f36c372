"""The depthwise kernels equal the reference on random shapes, strides, paddings and odd kernel sizes, on both
kernel copies; deterministic cases run every special case and every border and remainder of its loops."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from kernel_settings import COPIES, MAX_BATCH, MAX_CHANNELS, MAX_SIDE, assert_close, kernel_copy

from numpymnv2 import functional as F
from numpymnv2.kernels import depthwise as D


def check_depthwise(x, w, stride, padding, copy, seed=0):
    """Forward, cache and both gradients of the kernel against the reference."""
    out_ref, cache_ref = F.depthwise_conv2d_forward(x, w, stride, padding)
    dout = np.random.default_rng(seed).standard_normal(out_ref.shape).astype(x.dtype)
    with kernel_copy(copy):
        out, cache = D.depthwise_conv2d_forward(x, w, stride, padding)
        grads = D.depthwise_conv2d_backward(dout, cache)
    assert_close(out, out_ref)
    assert type(cache) is type(cache_ref)
    for fast, ref in zip(grads, F.depthwise_conv2d_backward(dout, cache_ref)):
        assert_close(fast, ref)


def _random(shape, K, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape).astype(dtype), rng.standard_normal((K, K, shape[3])).astype(dtype)


@st.composite
def depthwise_cases(draw):
    k = draw(st.sampled_from([1, 3, 3, 3, 5]))
    p = draw(st.integers(0, k))
    s = draw(st.sampled_from([1, 2]))
    lo = max(1, k - 2 * p)
    shape = (draw(st.integers(1, MAX_BATCH)), draw(st.integers(lo, MAX_SIDE)), draw(st.integers(lo, MAX_SIDE)),
             draw(st.integers(1, MAX_CHANNELS)))
    return (shape, k, s, p, draw(st.sampled_from([np.float64, np.float32])), draw(st.sampled_from(COPIES)),
            draw(st.integers(0, 2**32 - 1)))


@given(depthwise_cases())
def test_depthwise_matches_reference(case):
    shape, k, s, p, dtype, copy, seed = case
    x, w = _random(shape, k, dtype, seed)
    check_depthwise(x, w, s, p, copy, seed)


@pytest.mark.parametrize("copy", COPIES)
@pytest.mark.parametrize("padding", [0, 1, 2])
def test_3x3_stride1_column_remainders(copy, padding):
    # interior columns (all three taps inside) number W - 2; widths leave 0, 1, 2 and 3 of them after the
    # four-pixel blocks of the forward (which also computes the input gradient) and of the weight gradient,
    # and tiny widths leave no interior at all
    for W in (1, 2, 3, 4, 5, 6, 7, 9, 10):
        if W + 2 * padding < 3:
            continue
        x, w = _random((2, 5, W, 3), 3, seed=W)
        check_depthwise(x, w, 1, padding, copy)


@pytest.mark.parametrize("copy", COPIES)
@pytest.mark.parametrize("padding", [0, 1, 2, 3])
def test_3x3_stride2_odd_and_even_sides(copy, padding):
    # the stride-2 input gradient meets one, two or four taps per pixel, and none where padding 3 leaves an
    # input pixel that no output reads
    for H, W in ((5, 6), (6, 5), (7, 7), (8, 8), (1, 4), (3, 2)):
        if min(H, W) + 2 * padding < 3:
            continue
        x, w = _random((2, H, W, 4), 3, np.float32, seed=H * W)
        check_depthwise(x, w, 2, padding, copy)


@pytest.mark.parametrize("copy", COPIES)
def test_padding_beyond_the_filter(copy):
    # padding > K - 1: whole output rows and columns see only padding (they are 0), and the stride-1 input
    # gradient cannot be the forward of dout with the flipped filter (its padding K - 1 - p would be negative)
    for K, s, p in ((3, 1, 3), (3, 1, 4), (1, 1, 1), (5, 1, 5), (3, 2, 4)):
        x, w = _random((1, 4, 5, 3), K, seed=K + p)
        check_depthwise(x, w, s, p, copy)


@pytest.mark.parametrize("copy", COPIES)
def test_other_kernel_sizes_run_the_general_loops(copy):
    for K, s, p in ((1, 1, 0), (1, 2, 0), (5, 1, 2), (5, 2, 2), (4, 1, 1), (4, 2, 2), (3, 3, 1)):
        x, w = _random((2, 7, 6, 3), K, seed=K * s)
        check_depthwise(x, w, s, p, copy)


@pytest.mark.parametrize("copy", COPIES)
@pytest.mark.parametrize("stride", [1, 2])
def test_layer_shapes(copy, stride):
    # MobileNetV2 shapes: 3x3, padding 1, 24 channels, even and odd sides, float32
    for H, W in ((8, 8), (7, 9), (1, 1), (2, 2)):
        x, w = _random((2, H, W, 24), 3, np.float32, seed=H + W)
        check_depthwise(x, w, stride, 1, copy)


def test_special_cases_equal_the_general_loop():
    # each special case computes what the general loop computes on the same pixels: row i = 1 of a 3x3 at
    # stride 1 without padding (x 5x9 -> out 3x7), and every pixel of the stride-2 input gradient with padding 1
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 5, 9, 6))
    w = rng.standard_normal((3, 3, 6))
    general, special = np.zeros((1, 3, 7, 6)), np.zeros((1, 3, 7, 6))
    D._forward_pixels(x, w, 1, 0, 0, 1, 0, 7, general)
    D._forward_3x3_four(x, w, 0, 1, 0, 1, 0, special)
    for j in (4, 5, 6):
        D._forward_3x3_one(x, w, 0, 1, j, 1, j, special)
    np.testing.assert_allclose(special, general, rtol=1e-13, atol=1e-13)

    # border pixels of a stride-2 3x3 with padding 1 on 5x9 (out 3x5): the top row, the left column and the
    # right column have one row or one column of taps outside; (2, 4) is a corner, where the kernel uses the
    # general loop but the expression is exact too
    general, special = np.zeros((1, 3, 5, 6)), np.zeros((1, 3, 5, 6))
    for i, j in ((0, 1), (0, 2), (0, 4), (1, 0), (2, 0), (2, 4)):
        D._forward_pixels(x, w, 2, 1, 0, i, j, j + 1, general)
        D._forward_3x3_edge(x, w, 0, 2 * i - 1, 2 * j - 1, i, j, special)
    np.testing.assert_allclose(special, general, rtol=1e-13, atol=1e-13)

    dout = rng.standard_normal((1, 3, 7, 6))
    general, special = np.zeros((3, 3, 6)), np.zeros((3, 3, 6))
    for b in range(3):
        D._weight_grad_tap(x, dout, 0, 1, 1, 0, b, 1, 0, 0, 7, general)
    j = D._weight_grad_3x3_taps(x, dout, 0, 1, 1, 0, 0, 0, 7, special)
    assert j == 4
    for b in range(3):
        D._weight_grad_tap(x, dout, 0, 1, 1, 0, b, 1, 0, j, 7, special)
    np.testing.assert_allclose(special, general, rtol=1e-13, atol=1e-13)

    dout = rng.standard_normal((1, 3, 5, 6))
    general, special = np.zeros((1, 5, 9, 6)), np.zeros((1, 5, 9, 6))
    for h in range(5):
        for v in range(9):
            D._input_grad_pixel(dout, w, 2, 1, 0, h, v, general)
            D._input_grad_3x3_s2_pixel(dout, w, 1, 0, h, v, special)
    np.testing.assert_allclose(special, general, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("u, size_out, expected", [
    (0, 3, (0, 0, 0, 0, 1)), (1, 3, (1, 0, 1, 0, 1)), (2, 3, (0, 1, 2, 0, 2)), (6, 3, (2, 2, 2, 2, 1)),
    (7, 3, (1, 3, 1, 3, 0)), (8, 3, (0, 0, 0, 0, 0))])
def test_stride2_taps(u, size_out, expected):
    assert D._stride2_taps(u, size_out) == expected


def test_non_contiguous_and_mixed_dtype_inputs():
    x, w = _random((2, 6, 5, 8), 3, np.float32)
    x_strided = np.ascontiguousarray(x.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
    out, cache = D.depthwise_conv2d_forward(x_strided, w.astype(np.float64), 1, 1)
    out_ref, _ = F.depthwise_conv2d_forward(x, w, 1, 1)
    assert_close(out, out_ref)
    dx, dw = D.depthwise_conv2d_backward(np.ones(out.shape), cache)
    assert dx.dtype == dw.dtype == np.float32


def test_depthwise_rejects_bad_weight():
    with pytest.raises(ValueError, match="weight shape"):
        D.depthwise_conv2d_forward(np.zeros((1, 4, 4, 3)), np.zeros((3, 3, 4)))
