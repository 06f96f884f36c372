"""The depthwise kernels equal the reference on random shapes, strides, paddings and odd kernel sizes, on both
kernel copies."""
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
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((k, k, shape[3])).astype(dtype)
    check_depthwise(x, w, s, p, copy, seed)


@pytest.mark.parametrize("copy", COPIES)
@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_layer_shape(copy, stride):
    # a MobileNetV2 shape: 3x3, padding 1, 24 channels, even and odd sides
    rng = np.random.default_rng(stride)
    for H, W in [(8, 8), (7, 9)]:
        x = rng.standard_normal((2, H, W, 24)).astype(np.float32)
        w = rng.standard_normal((3, 3, 24)).astype(np.float32)
        check_depthwise(x, w, stride, 1, copy)


def test_depthwise_rejects_bad_weight():
    with pytest.raises(ValueError, match="weight shape"):
        D.depthwise_conv2d_forward(np.zeros((1, 4, 4, 3)), np.zeros((3, 3, 4)))
