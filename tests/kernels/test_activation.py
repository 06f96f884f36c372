"""The ReLU6 kernel equals the reference."""
import numpy as np
from kernel_settings import MAX_BATCH, MAX_CHANNELS, MAX_SIDE
from hypothesis import given
from hypothesis import strategies as st

from numpymnv2 import functional as F
from numpymnv2 import kernels as K


@given(st.tuples(st.integers(1, MAX_BATCH), st.integers(1, MAX_SIDE), st.integers(1, MAX_SIDE),
                 st.integers(1, MAX_CHANNELS)), st.sampled_from([np.float32, np.float64]), st.integers(0, 2**32 - 1))
def test_relu6_matches_reference(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 5 + 3).astype(dtype)
    y, cache = K.relu6_forward(x)
    y_ref, cache_ref = F.relu6_forward(x)
    assert y.dtype == x.dtype
    np.testing.assert_array_equal(y, y_ref)
    dy = rng.standard_normal(shape).astype(dtype)
    dx = K.relu6_backward(dy, cache)
    assert dx.dtype == x.dtype
    np.testing.assert_array_equal(dx, F.relu6_backward(dy, cache_ref))


def test_relu6_kinks_pass_no_gradient():
    x = np.array([-1.0, 0.0, 3.0, 6.0, 7.0])
    _, cache = K.relu6_forward(x)
    np.testing.assert_array_equal(K.relu6_backward(np.ones(5), cache), [0, 0, 1, 0, 0])
