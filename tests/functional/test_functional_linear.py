"""The classifier ``y = x W^T + b``: gradients with and without bias, loop definition, PyTorch, dtype."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numpymnv2.functional import linear_backward, linear_forward
from strategies import check_grads, float_arrays


@st.composite
def linear_cases(draw, max_features=8):
    N = draw(st.integers(1, 4))
    D_in, D_out = draw(st.integers(1, max_features)), draw(st.integers(1, max_features))
    x, w = draw(float_arrays((N, D_in))), draw(float_arrays((D_out, D_in)))
    b = draw(st.none() | float_arrays((D_out,)))
    return x, w, b


@given(linear_cases())
def test_linear_gradients_match_finite_differences(case):
    x, w, b = case
    if b is None:
        def forward(x, w):
            return linear_forward(x, w, None)
        check_grads("linear", (forward, linear_backward), (x, w))
    else:
        check_grads("linear", (linear_forward, linear_backward), (x, w, b))


@given(linear_cases(max_features=4))
def test_linear_matches_loop_definition(case):
    x, w, b = case
    y, _ = linear_forward(x, w, b)
    for n in range(x.shape[0]):
        for o in range(w.shape[0]):
            expected = (0.0 if b is None else b[o]) + sum(w[o, i] * x[n, i] for i in range(x.shape[1]))
            assert np.isclose(y[n, o], expected, rtol=1e-12, atol=1e-12)


def test_linear_does_not_modify_its_bias():
    x, w, b = np.ones((2, 3)), np.ones((4, 3)), np.arange(4.0)
    linear_forward(x, w, b)
    np.testing.assert_array_equal(b, np.arange(4.0))


def test_linear_preserves_float32():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5)).astype(np.float32)
    w = rng.standard_normal((4, 5)).astype(np.float32)
    b = np.zeros(4, np.float32)
    y, cache = linear_forward(x, w, b)
    dx, dw, db = linear_backward(np.ones_like(y), cache)
    assert {a.dtype for a in (y, dx, dw, db)} == {np.dtype(np.float32)}


def test_linear_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x, w, b = rng.standard_normal((3, 5)), rng.standard_normal((4, 5)), rng.standard_normal(4)
    y, cache = linear_forward(x, w, b)
    dy = rng.standard_normal(y.shape)
    dx, dw, db = linear_backward(dy, cache)
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    yt = torch.nn.functional.linear(xt, wt, bt)
    yt.backward(torch.tensor(dy))
    for ours, theirs in ((y, yt.detach()), (dx, xt.grad), (dw, wt.grad), (db, bt.grad)):
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-10, atol=1e-10)


def test_linear_rejects_feature_mismatch():
    with pytest.raises(ValueError, match="weight expects 5 input features, got input shape \\(2, 3\\)"):
        linear_forward(np.zeros((2, 3)), np.zeros((4, 5)), None)


def test_linear_rejects_non_matrix_input():
    with pytest.raises(ValueError, match="expected a 2-D input \\(N, D_in\\), got shape \\(5,\\)"):
        linear_forward(np.zeros(5), np.zeros((4, 5)), None)
