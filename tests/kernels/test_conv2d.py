"""The stem convolution's kernels (patch gathering and its adjoint) equal the reference, on both kernel copies."""
import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from kernel_settings import COPIES, MAX_BATCH, MAX_SIDE, assert_close, kernel_copy

from numpymnv2 import functional as F
from numpymnv2.kernels import conv2d as K


@st.composite
def conv_cases(draw):
    k = draw(st.sampled_from([1, 3, 3, 5]))
    p = draw(st.integers(0, k // 2 + 1))
    s = draw(st.sampled_from([1, 2, 3]))
    lo = max(1, k - 2 * p)
    shape = (draw(st.integers(1, MAX_BATCH)), draw(st.integers(lo, MAX_SIDE)), draw(st.integers(lo, MAX_SIDE)),
             draw(st.integers(1, 4)))
    return (shape, draw(st.integers(1, 6)), k, s, p, draw(st.sampled_from([np.float64, np.float32])),
            draw(st.sampled_from(COPIES)), draw(st.integers(0, 2**32 - 1)))


@given(conv_cases())
def test_conv2d_matches_reference(case):
    shape, c_out, k, s, p, dtype, copy, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((c_out, k, k, shape[3])).astype(dtype)
    out_ref, cache_ref = F.conv2d_forward(x, w, s, p)
    dout = rng.standard_normal(out_ref.shape).astype(dtype)
    with kernel_copy(copy):
        out, cache = K.conv2d_forward(x, w, s, p)
        grads = K.conv2d_backward(dout, cache)
    np.testing.assert_array_equal(cache.cols, cache_ref.cols)     # the patches are copies: exactly equal
    assert_close(out, out_ref)
    for fast, ref in zip(grads, F.conv2d_backward(dout, cache_ref)):
        assert_close(fast, ref)


def test_conv2d_takes_non_contiguous_input():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 9)).transpose(0, 2, 3, 1)        # (2, 7, 9, 3), not C-contiguous
    w = rng.standard_normal((4, 3, 3, 3))
    out, cache = K.conv2d_forward(x, w, 2, 1)
    out_ref, cache_ref = F.conv2d_forward(x, w, 2, 1)
    assert_close(out, out_ref)
    dout = rng.standard_normal(out.shape)
    for fast, ref in zip(K.conv2d_backward(dout, cache), F.conv2d_backward(dout, cache_ref)):
        assert_close(fast, ref)
