"""The ReLU6 kernels equal the reference, on both kernel copies, also at the kinks and on non-finite values."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from kernel_settings import COPIES, MAX_BATCH, MAX_CHANNELS, MAX_SIDE, kernel_copy

from numpymnv2 import functional as F
from numpymnv2.kernels import activation as A


@given(st.tuples(st.integers(1, MAX_BATCH), st.integers(1, MAX_SIDE), st.integers(1, MAX_SIDE),
                 st.integers(1, MAX_CHANNELS)), st.sampled_from([np.float32, np.float64]), st.sampled_from(COPIES),
       st.integers(0, 2**32 - 1))
def test_relu6_matches_reference(shape, dtype, copy, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 5 + 3).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    with kernel_copy(copy):
        y, cache = A.relu6_forward(x)
        dx = A.relu6_backward(dy, cache)
    y_ref, cache_ref = F.relu6_forward(x)
    assert y.dtype == dx.dtype == x.dtype
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(dx, F.relu6_backward(dy, cache_ref))


@pytest.mark.parametrize("copy", COPIES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu6_kinks_and_non_finite_values(copy, dtype):
    # exactly at 0 and 6 the gradient is 0 (PyTorch's convention); NaN stays NaN in both directions
    x = np.array([-1.0, -0.0, 0.0, 3.0, 6.0, 7.0, np.inf, -np.inf, np.nan], dtype)
    dy = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1], dtype)
    dy_nan = np.full_like(x, np.nan)
    with kernel_copy(copy):
        y, cache = A.relu6_forward(x)
        dx = A.relu6_backward(dy, cache)
        dx_nan = A.relu6_backward(dy_nan, cache)
    np.testing.assert_array_equal(y, [0, 0, 0, 3, 6, 6, 6, 0, np.nan])
    np.testing.assert_array_equal(dx, [0, 0, 0, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(dx_nan, F.relu6_backward(dy_nan, F.relu6_forward(x)[1]))
    assert np.isnan(dx_nan).all()


@pytest.mark.parametrize("copy", COPIES)
def test_relu6_block_remainders(copy):
    # the kernels run over the raveled array in blocks of BLOCK elements: a full block, one more element, and
    # one fewer, with the values of the last block checked
    rng = np.random.default_rng(3)
    for size in (A.BLOCK - 1, A.BLOCK, A.BLOCK + 1):
        x = rng.standard_normal(size) * 5 + 3
        dy = rng.standard_normal(size)
        with kernel_copy(copy):
            y, cache = A.relu6_forward(x)
            dx = A.relu6_backward(dy, cache)
        np.testing.assert_array_equal(y, np.clip(x, 0, 6))
        np.testing.assert_array_equal(dx, dy * ((x > 0) & (x < 6)))


def test_relu6_takes_non_contiguous_input():
    x = np.linspace(-2, 8, 40).reshape(5, 8)[:, ::2]
    y, cache = A.relu6_forward(x)
    np.testing.assert_array_equal(y, np.clip(x, 0, 6))
    np.testing.assert_array_equal(A.relu6_backward(np.ones((5, 4)), cache), (x > 0) & (x < 6))
