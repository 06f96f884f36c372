"""The depthwise kernels equal the reference on random shapes, strides, paddings and odd kernel sizes."""
import numpy as np
import pytest
from kernel_settings import MAX_BATCH, MAX_CHANNELS, MAX_SIDE
from hypothesis import given
from hypothesis import strategies as st

from numpymnv2 import functional as F
from numpymnv2 import kernels as K

TOL = {np.float64: 1e-12, np.float32: 2e-5}


def assert_close(fast, ref, dtype):
    assert fast.dtype == ref.dtype == np.dtype(dtype)
    assert fast.shape == ref.shape
    scale = max(1.0, float(np.abs(ref).max(initial=0)))
    np.testing.assert_allclose(fast, ref, rtol=0, atol=TOL[dtype] * scale)


@st.composite
def depthwise_cases(draw):
    k = draw(st.sampled_from([1, 3, 3, 3, 5]))
    p = draw(st.integers(0, k // 2))
    s = draw(st.sampled_from([1, 2]))
    lo = max(1, k - 2 * p)
    shape = (draw(st.integers(1, MAX_BATCH)), draw(st.integers(lo, MAX_SIDE)), draw(st.integers(lo, MAX_SIDE)),
             draw(st.integers(1, MAX_CHANNELS)))
    return shape, k, s, p, draw(st.sampled_from([np.float64, np.float32])), draw(st.integers(0, 2**32 - 1))


@given(depthwise_cases())
def test_depthwise_matches_reference(case):
    shape, k, s, p, dtype, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((k, k, shape[3])).astype(dtype)
    out_ref, cache_ref = F.depthwise_conv2d_forward(x, w, s, p)
    out, cache = K.depthwise_conv2d_forward(x, w, s, p)
    assert_close(out, out_ref, dtype)
    assert type(cache) is type(cache_ref)
    dout = rng.standard_normal(out.shape).astype(dtype)
    for fast, ref in zip(K.depthwise_conv2d_backward(dout, cache), F.depthwise_conv2d_backward(dout, cache_ref)):
        assert_close(fast, ref, dtype)


@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_layer_shape(stride):
    # a MobileNetV2 shape: 3x3, padding 1, 24 channels, even and odd sides
    rng = np.random.default_rng(stride)
    for H, W in [(8, 8), (7, 9)]:
        x = rng.standard_normal((2, H, W, 24)).astype(np.float32)
        w = rng.standard_normal((3, 3, 24)).astype(np.float32)
        out, cache = K.depthwise_conv2d_forward(x, w, stride, 1)
        out_ref, cache_ref = F.depthwise_conv2d_forward(x, w, stride, 1)
        assert_close(out, out_ref, np.float32)
        dout = rng.standard_normal(out.shape).astype(np.float32)
        for fast, ref in zip(K.depthwise_conv2d_backward(dout, cache), F.depthwise_conv2d_backward(dout, cache_ref)):
            assert_close(fast, ref, np.float32)


def test_depthwise_rejects_bad_weight():
    with pytest.raises(ValueError, match="weight shape"):
        K.depthwise_conv2d_forward(np.zeros((1, 4, 4, 3)), np.zeros((3, 3, 4)))
