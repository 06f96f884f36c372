"""The residual add: both gradients are dout, shapes must match."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numpymnv2.functional import residual_add_backward, residual_add_forward
from strategies import check_grads, float_arrays, nhwc_shapes


@given(nhwc_shapes().flatmap(lambda s: st.tuples(float_arrays(s), float_arrays(s))))
def test_residual_gradients_match_finite_differences(case):
    check_grads("residual", (residual_add_forward, residual_add_backward), case)


@given(nhwc_shapes(max_side=3, max_channels=3).flatmap(lambda s: st.tuples(float_arrays(s), float_arrays(s))))
def test_residual_matches_loop_definition(case):
    x, fx = case
    out, _ = residual_add_forward(x, fx)
    for idx in np.ndindex(x.shape):
        assert out[idx] == x[idx] + fx[idx]


def test_residual_preserves_float32_and_does_not_alias_inputs():
    x = np.ones((1, 2, 2, 3), np.float32)
    fx = np.full((1, 2, 2, 3), 2, np.float32)
    out, cache = residual_add_forward(x, fx)
    dx, dfx = residual_add_backward(np.ones_like(out), cache)
    assert out.dtype == dx.dtype == dfx.dtype == np.float32
    assert not np.shares_memory(out, x) and not np.shares_memory(out, fx)


def test_residual_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="shortcut has shape \\(1, 2, 2, 3\\) but the branch gives \\(1, 2, 2, 4\\)"):
        residual_add_forward(np.zeros((1, 2, 2, 3)), np.zeros((1, 2, 2, 4)))
