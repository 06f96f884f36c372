"""The inference kernels (bias + activation + shortcut in place, the same with pooling, and the depthwise
convolution with its bias and activation) equal the readable reference and NumPy."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from kernel_settings import COPIES, MAX_BATCH, MAX_CHANNELS, MAX_SIDE, assert_close, kernel_copy

from numpymnv2 import functional as F
from numpymnv2.kernels import inference as K

ACTIVATIONS = {"relu6": lambda z: np.clip(z, 0, 6), "relu": lambda z: np.maximum(z, 0), None: lambda z: z}


@given(st.tuples(st.integers(1, MAX_BATCH), st.integers(1, MAX_SIDE), st.integers(1, MAX_SIDE),
                 st.integers(1, MAX_CHANNELS)), st.sampled_from(list(ACTIVATIONS)), st.booleans(),
       st.sampled_from([np.float32, np.float64]), st.sampled_from(COPIES), st.integers(0, 2**32 - 1))
def test_bias_act_and_pool_match_numpy(shape, activation, with_residual, dtype, copy, seed):
    rng = np.random.default_rng(seed)
    y = (rng.standard_normal(shape) * 4 + 2).astype(dtype)
    bias = rng.standard_normal(shape[-1]).astype(dtype)
    residual = rng.standard_normal(shape).astype(dtype) if with_residual else None
    want = ACTIVATIONS[activation](y + bias) + (residual if with_residual else 0)
    want_pooled = ACTIVATIONS[activation](y + bias).mean(axis=(1, 2))
    with kernel_copy(copy):
        pooled = K.bias_act_pool(y, bias, activation)
        K.bias_act(y, bias, activation, residual)
    assert_close(y, want.astype(dtype))
    assert_close(pooled, want_pooled.astype(dtype))


@pytest.mark.parametrize("copy", COPIES)
def test_bias_act_pixel_blocks(copy):
    # the kernel runs in blocks of PIXELS pixels: one fewer, exactly, and one more, with a residual
    rng = np.random.default_rng(0)
    for pixels in (K.PIXELS - 1, K.PIXELS, K.PIXELS + 1, 3 * K.PIXELS + 5):
        y = rng.standard_normal((1, pixels, 1, 3)) * 5
        bias, residual = rng.standard_normal(3), rng.standard_normal(y.shape)
        want = np.clip(y + bias, 0, 6) + residual
        with kernel_copy(copy):
            K.bias_act(y, bias, "relu6", residual)
        np.testing.assert_array_equal(y, want)


# -- depthwise convolution + bias + activation in one kernel ----------------------------------------------

def depthwise_bias_act_reference(x, w, stride, padding, bias, activation):
    """The readable depthwise convolution, then NumPy's bias and activation."""
    z, _ = F.depthwise_conv2d_forward(x, w, stride, padding)
    return ACTIVATIONS[activation](z + bias)


@st.composite
def depthwise_bias_act_cases(draw):
    k = draw(st.sampled_from([1, 3, 3, 3, 5]))
    p = draw(st.integers(0, k))
    lo = max(1, k - 2 * p)
    shape = (draw(st.integers(1, MAX_BATCH)), draw(st.integers(lo, MAX_SIDE)), draw(st.integers(lo, MAX_SIDE)),
             draw(st.integers(1, MAX_CHANNELS)))
    return (shape, k, draw(st.sampled_from([1, 2])), p, draw(st.sampled_from(list(ACTIVATIONS))),
            draw(st.sampled_from([np.float64, np.float32])), draw(st.sampled_from(COPIES)),
            draw(st.integers(0, 2**32 - 1)))


@given(depthwise_bias_act_cases())
def test_depthwise_bias_act_matches_reference(case):
    shape, k, s, p, activation, dtype, copy, seed = case
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    w = rng.standard_normal((k, k, shape[3])).astype(dtype)
    bias = (rng.standard_normal(shape[3]) * 2).astype(dtype)
    want = depthwise_bias_act_reference(x, w, s, p, bias, activation)
    with kernel_copy(copy):
        got = K.depthwise_bias_act(x, w, s, p, bias, activation)
        out = np.full_like(want, np.nan)
        returned = K.depthwise_bias_act(x, w, s, p, bias, activation, out=out)
    assert returned is out
    assert_close(got, want)
    np.testing.assert_array_equal(out, got)


@pytest.mark.parametrize("copy", COPIES)
@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_bias_act_borders_and_remainders(copy, stride):
    # odd and even sides (stride-2 remainders), widths that leave 0-3 interior columns after the four-pixel
    # blocks, images smaller than the filter's reach: every border and corner path of the 3x3 loops
    rng = np.random.default_rng(stride)
    for H, W in [(1, 1), (2, 2), (3, 3), (1, 7), (7, 1), (4, 5), (5, 4), (6, 9), (9, 10), (8, 11)]:
        x = rng.standard_normal((2, H, W, 3)) * 3
        w, bias = rng.standard_normal((3, 3, 3)), rng.standard_normal(3)
        want = depthwise_bias_act_reference(x, w, stride, 1, bias, "relu6")
        with kernel_copy(copy):
            got = K.depthwise_bias_act(x, w, stride, 1, bias, "relu6")
        assert got.shape == want.shape == (2, (H - 1) // stride + 1, (W - 1) // stride + 1, 3)
        assert_close(got, want)


@pytest.mark.parametrize("copy", COPIES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_depthwise_bias_act_relu6_at_its_kinks(copy, dtype):
    # integer-valued sums land exactly on 0 and 6, and beyond them: ReLU6 gives exactly 0 and 6
    x = np.ones((1, 4, 4, 7), dtype=dtype)
    w = np.zeros((3, 3, 7), dtype=dtype)
    w[1, 1] = [0, 6, 7, -1, 3, 8, -2]   # the centre tap only: the sum is w[1, 1, c] at every pixel
    bias = np.array([0, 0, -1, 1, 3, 0, 0], dtype=dtype)
    with kernel_copy(copy):
        got = K.depthwise_bias_act(x, w, 1, 1, bias, "relu6")
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, np.broadcast_to(np.array([0, 6, 6, 0, 6, 6, 0], dtype=dtype), got.shape))


def test_depthwise_bias_act_float32_stays_float32_and_rejects_bad_arguments():
    x = np.ones((1, 5, 5, 2), dtype=np.float32)
    w, bias = np.ones((3, 3, 2), dtype=np.float32), np.zeros(2, dtype=np.float32)
    assert K.depthwise_bias_act(x, w, 2, 1, bias, None).dtype == np.float32
    with pytest.raises(ValueError, match="weight shape"):
        K.depthwise_bias_act(x, np.ones((3, 3, 3), dtype=np.float32), 1, 1, bias, None)
    with pytest.raises(ValueError, match="bias shape"):
        K.depthwise_bias_act(x, w, 1, 1, np.zeros(3, dtype=np.float32), None)
    for out in (np.empty((1, 5, 5, 2)), np.empty((1, 4, 5, 2), dtype=np.float32),
                np.empty((1, 5, 2, 5), dtype=np.float32).transpose(0, 1, 3, 2)):
        with pytest.raises(ValueError, match="out must be"):
            K.depthwise_bias_act(x, w, 1, 1, bias, None, out=out)
    with pytest.raises(ValueError, match="empty output"):
        K.depthwise_bias_act(x[:, :1], np.ones((5, 5, 2), dtype=np.float32), 1, 1, bias, None)
