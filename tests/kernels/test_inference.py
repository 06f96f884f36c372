"""The inference kernels (bias + activation + shortcut in place, and the same with pooling) equal NumPy."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from kernel_settings import COPIES, MAX_BATCH, MAX_CHANNELS, MAX_SIDE, assert_close, kernel_copy

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
