"""BatchNorm over (N, H, W) per channel: gradients in both modes, invariants, PyTorch's running statistics."""
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from numpymnv2 import gradcheck
from numpymnv2.functional import batchnorm_backward, batchnorm_forward
from strategies import check_grads, float_arrays, nhwc_shapes, scales


@st.composite
def bn_cases(draw, max_side=6, max_channels=8, training=True):
    """``(x, gamma, beta, running_mean, running_var)``; in training mode at least three values per channel
    (two make a degenerate case, see test_batchnorm_two_values_per_channel_is_degenerate)."""
    N, H, W, C = draw(nhwc_shapes(max_side=max_side, max_channels=max_channels))
    if training:
        assume(N * H * W >= 3)
    x = draw(float_arrays((N, H, W, C)))
    gamma, beta = draw(scales((C,))), draw(float_arrays((C,)))
    running_mean = draw(float_arrays((C,)))
    running_var = draw(float_arrays((C,), low=0.25, high=2.0))
    return x, gamma, beta, running_mean, running_var


def bn_function(running_mean, running_var, training):
    """``forward(x, gamma, beta)`` on fresh copies of the statistics, so repeated calls see the same state."""
    def forward(x, gamma, beta):
        return batchnorm_forward(x, gamma, beta, running_mean.copy(), running_var.copy(), training)
    return forward, batchnorm_backward


@given(bn_cases(training=True))
def test_batchnorm_train_gradients_match_finite_differences(case):
    x, gamma, beta, rm, rv = case
    check_grads("batchnorm[train]", bn_function(rm, rv, True), (x, gamma, beta))


@given(bn_cases(training=False))
def test_batchnorm_eval_gradients_match_finite_differences(case):
    x, gamma, beta, rm, rv = case
    check_grads("batchnorm[eval]", bn_function(rm, rv, False), (x, gamma, beta))


def test_batchnorm_two_values_per_channel_is_degenerate():
    # With M = 2 values per channel, x_hat = +-sqrt(var / (var + eps)) ~ +-1 whatever x is: the gradient with
    # respect to x is of order eps_bn = 1e-5 times the output, below what a float64 central difference resolves
    # to 1e-6 relative (its round-off is ~1e-10 of the output). The gradient tests therefore draw M >= 3; here the
    # check is on the absolute scale, where it holds.
    x = np.array([0.0, 1.0, 0.3, -0.2]).reshape(2, 1, 1, 2)
    gamma, beta = np.array([1.0, 2.0]), np.array([0.1, -0.5])
    y, cache = batchnorm_forward(x, gamma, beta, np.zeros(2), np.ones(2), True)
    np.testing.assert_allclose(np.abs(cache.x_hat), 1.0, atol=1e-3)
    result = gradcheck(bn_function(np.zeros(2), np.ones(2), True), (x, gamma, beta))
    assert result.passed and result.reports[0].max_abs_error < 1e-8
    assert np.abs(batchnorm_backward(np.ones_like(y), cache)[0]).max() < 1e-3


def bn_loops(x, gamma, beta, eps=1e-5):
    """Training-mode BatchNorm, one channel and one value at a time."""
    N, H, W, C = x.shape
    y = np.empty_like(x)
    mus, vars_ = np.zeros(C), np.zeros(C)
    for c in range(C):
        values = [x[n, i, j, c] for n in range(N) for i in range(H) for j in range(W)]
        mu = sum(values) / len(values)
        var = sum((v - mu) ** 2 for v in values) / len(values)
        mus[c], vars_[c] = mu, var
        for n in range(N):
            for i in range(H):
                for j in range(W):
                    y[n, i, j, c] = gamma[c] * (x[n, i, j, c] - mu) / np.sqrt(var + eps) + beta[c]
    return y, mus, vars_


@given(bn_cases(max_side=4, max_channels=3))
def test_batchnorm_train_matches_loop_definition(case):
    x, gamma, beta, rm, rv = case
    M = x.shape[0] * x.shape[1] * x.shape[2]
    expected, mu, var = bn_loops(x, gamma, beta)
    rm0, rv0 = rm.copy(), rv.copy()
    y, _ = batchnorm_forward(x, gamma, beta, rm, rv, True)
    np.testing.assert_allclose(y, expected, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(rm, 0.9 * rm0 + 0.1 * mu, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(rv, 0.9 * rv0 + 0.1 * var * M / (M - 1), rtol=1e-12, atol=1e-12)


@given(bn_cases(max_side=4, max_channels=3, training=False))
def test_batchnorm_eval_uses_running_statistics_and_leaves_them(case):
    x, gamma, beta, rm, rv = case
    rm0, rv0 = rm.copy(), rv.copy()
    y, _ = batchnorm_forward(x, gamma, beta, rm, rv, False)
    N, H, W, C = x.shape
    for n, i, j, c in np.ndindex(N, H, W, C):
        assert np.isclose(y[n, i, j, c], gamma[c] * (x[n, i, j, c] - rm0[c]) / np.sqrt(rv0[c] + 1e-5) + beta[c],
                          rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(rm, rm0)
    np.testing.assert_array_equal(rv, rv0)


@given(nhwc_shapes(max_side=6), st.integers(0, 2**32 - 1), st.floats(0.1, 10))
def test_batchnorm_train_output_has_zero_mean_unit_variance(shape, seed, scale):
    N, H, W, C = shape
    assume(N * H * W >= 2)
    x = np.random.default_rng(seed).standard_normal(shape) * scale + 3.0
    var_in = x.var(axis=(0, 1, 2))
    assume(var_in.min() > 1e-2)
    y, _ = batchnorm_forward(x, np.ones(C), np.zeros(C), np.zeros(C), np.ones(C), True)
    np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0.0, atol=1e-12)
    # the biased variance of y is var / (var + eps): 1 up to eps / var
    np.testing.assert_allclose(y.var(axis=(0, 1, 2)), var_in / (var_in + 1e-5), rtol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 1, 2)), 1.0, atol=1e-3)


def test_batchnorm_running_statistics_over_several_steps():
    # starting from PyTorch's initial state (0, 1), five steps of the exponential moving average
    rng = np.random.default_rng(3)
    C = 4
    rm, rv = np.zeros(C), np.ones(C)
    exp_m, exp_v = np.zeros(C), np.ones(C)
    for _ in range(5):
        x = rng.standard_normal((3, 2, 5, C)) * 2 + 1
        batchnorm_forward(x, np.ones(C), np.zeros(C), rm, rv, True)
        exp_m = 0.9 * exp_m + 0.1 * x.mean(axis=(0, 1, 2))
        exp_v = 0.9 * exp_v + 0.1 * x.reshape(-1, C).var(axis=0, ddof=1)      # unbiased
        np.testing.assert_allclose(rm, exp_m, rtol=1e-13)
        np.testing.assert_allclose(rv, exp_v, rtol=1e-13)


def test_batchnorm_momentum_and_eps_are_honoured():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 3, 2))
    rm, rv = np.zeros(2), np.ones(2)
    y, cache = batchnorm_forward(x, np.ones(2), np.zeros(2), rm, rv, True, momentum=0.5, eps=1e-3)
    np.testing.assert_allclose(rm, 0.5 * x.mean(axis=(0, 1, 2)))
    np.testing.assert_allclose(cache.inv_std, 1 / np.sqrt(x.var(axis=(0, 1, 2)) + 1e-3))


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_preserves_float32(training):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    gamma, beta = np.ones(5, np.float32), np.zeros(5, np.float32)
    rm, rv = np.zeros(5, np.float32), np.ones(5, np.float32)
    y, cache = batchnorm_forward(x, gamma, beta, rm, rv, training, 0.1, 1e-5)
    dx, dgamma, dbeta = batchnorm_backward(np.ones_like(y), cache)
    assert {a.dtype for a in (y, dx, dgamma, dbeta, rm, rv, cache.x_hat, cache.inv_std)} == {np.dtype(np.float32)}


def test_batchnorm_train_needs_two_values_per_channel():
    with pytest.raises(ValueError, match="more than one value per channel.*\\(1, 1, 1, 3\\)"):
        batchnorm_forward(np.zeros((1, 1, 1, 3)), np.ones(3), np.zeros(3), np.zeros(3), np.ones(3), True)
    # evaluation mode has no batch statistics, so a single value is fine
    y, _ = batchnorm_forward(np.ones((1, 1, 1, 3)), np.ones(3), np.zeros(3), np.zeros(3), np.ones(3), False)
    np.testing.assert_allclose(y, 1 / np.sqrt(1 + 1e-5))


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_matches_torch(training):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    C = 3
    x = rng.standard_normal((4, 3, 5, C)) * 2 + 0.5
    gamma, beta = rng.uniform(0.5, 1.5, C), rng.uniform(-0.5, 0.5, C)
    rm, rv = rng.uniform(-0.2, 0.2, C), rng.uniform(0.5, 1.5, C)
    rm_t, rv_t = torch.tensor(rm), torch.tensor(rv)
    y, cache = batchnorm_forward(x, gamma, beta, rm, rv, training)
    dy = rng.standard_normal(y.shape)
    dx, dgamma, dbeta = batchnorm_backward(dy, cache)

    xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    gt, bt = torch.tensor(gamma, requires_grad=True), torch.tensor(beta, requires_grad=True)
    yt = torch.nn.functional.batch_norm(xt, rm_t, rv_t, gt, bt, training=training, momentum=0.1, eps=1e-5)
    yt.backward(torch.tensor(dy.transpose(0, 3, 1, 2)))
    tol = dict(rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(y, yt.detach().numpy().transpose(0, 2, 3, 1), **tol)
    np.testing.assert_allclose(dx, xt.grad.numpy().transpose(0, 2, 3, 1), **tol)
    np.testing.assert_allclose(dgamma, gt.grad.numpy(), **tol)
    np.testing.assert_allclose(dbeta, bt.grad.numpy(), **tol)
    np.testing.assert_allclose(rm, rm_t.numpy(), **tol)
    np.testing.assert_allclose(rv, rv_t.numpy(), **tol)


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_numpy_scalar_hyperparameters_do_not_upcast(training):
    # NEP 50: np.float64(1e-5) is a strong float64 scalar; var(float32) + it would be float64
    x = np.random.default_rng(0).standard_normal((2, 3, 3, 4)).astype(np.float32)
    f32 = [np.ones(4, np.float32), np.zeros(4, np.float32), np.zeros(4, np.float32), np.ones(4, np.float32)]
    y, cache = batchnorm_forward(x, *f32, training, np.float64(0.1), np.float64(1e-5))
    assert y.dtype == cache.inv_std.dtype == cache.x_hat.dtype == np.float32
    assert f32[2].dtype == f32[3].dtype == np.float32
