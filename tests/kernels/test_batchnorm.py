"""BatchNorm and fused BatchNorm + activation (+ residual) kernels equal the reference, train and eval, on both
kernel copies, also for constant channels, activation kinks and more threads than rows."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from kernel_settings import COPIES, MAX_BATCH, MAX_CHANNELS, MAX_SIDE, assert_close, kernel_copy

from numpymnv2 import functional as F
from numpymnv2.kernels import batchnorm as B
from numpymnv2.kernels import fused


@st.composite
def bn_cases(draw):
    shape = (draw(st.integers(1, MAX_BATCH)), draw(st.integers(1, MAX_SIDE)), draw(st.integers(1, MAX_SIDE)),
             draw(st.integers(1, MAX_CHANNELS)))
    training = draw(st.booleans())
    if training and shape[0] * shape[1] * shape[2] < 2:
        shape = (2,) + shape[1:]
    return (shape, training, draw(st.sampled_from([np.float64, np.float32])),
            draw(st.sampled_from([None, "relu6", "relu"])), draw(st.booleans()), draw(st.sampled_from(COPIES)),
            draw(st.integers(0, 2**32 - 1)))


def _inputs(shape, dtype, seed):
    # values from a seeded generator: random offsets and scales put pre-activations on both sides of the kinks,
    # and exactly-at-a-kink values (where the derivative is undefined) have probability zero
    rng = np.random.default_rng(seed)
    C = shape[3]
    x = (rng.standard_normal(shape) * rng.uniform(0.5, 3, C) + rng.uniform(-2, 2, C)).astype(dtype)
    gamma = rng.uniform(0.5, 3, C).astype(dtype)
    beta = rng.uniform(-1, 4, C).astype(dtype)
    running_mean = rng.standard_normal(C).astype(dtype)
    running_var = rng.uniform(0.5, 2, C).astype(dtype)
    return rng, x, gamma, beta, running_mean, running_var


def _check_fused(x, gamma, beta, rm, rv, training, activation, residual, dout, copy, eps=1e-5):
    """The fused kernel's output, running statistics, cache and gradients against the reference."""
    rm_ref, rv_ref = rm.copy(), rv.copy()
    out_ref, cache_ref = F.batchnorm_act_forward(x, gamma, beta, rm_ref, rv_ref, training, 0.1, eps, activation,
                                                 residual)
    with kernel_copy(copy):
        out, cache = fused.batchnorm_act_forward(x, gamma, beta, rm, rv, training, 0.1, eps, activation, residual)
        grads = fused.batchnorm_act_backward(dout, cache)
    assert_close(out, out_ref)
    assert_close(rm, rm_ref)
    assert_close(rv, rv_ref)
    # the fast cache keeps the input and its statistics, and rebuilds x_hat from them (BatchNormInputCache)
    assert type(cache) is type(cache_ref) and type(cache.bn) is B.BatchNormInputCache
    assert cache.bn.x is x or not x.flags.c_contiguous
    assert (cache.activation, cache.has_residual, cache.bn.training) == (activation, residual is not None, training)
    assert_close(cache.bn.x_hat, cache_ref.bn.x_hat)
    grads_ref = F.batchnorm_act_backward(dout, cache_ref)
    for a, b in zip(grads[:3], grads_ref[:3]):
        assert_close(a, b)
    if residual is None:
        assert grads[3] is None and grads_ref[3] is None
    else:
        assert_close(grads[3], grads_ref[3])


@given(bn_cases())
def test_batchnorm_act_matches_reference(case):
    shape, training, dtype, activation, with_residual, copy, seed = case
    rng, x, gamma, beta, rm, rv = _inputs(shape, dtype, seed)
    residual = rng.standard_normal(shape).astype(dtype) if with_residual else None
    dout = rng.standard_normal(shape).astype(dtype)
    _check_fused(x, gamma, beta, rm, rv, training, activation, residual, dout, copy)


@given(bn_cases())
def test_batchnorm_matches_reference(case):
    shape, training, dtype, _, _, copy, seed = case
    rng, x, gamma, beta, rm, rv = _inputs(shape, dtype, seed)
    rm_ref, rv_ref = rm.copy(), rv.copy()
    dy = rng.standard_normal(shape).astype(dtype)
    out_ref, cache_ref = F.batchnorm_forward(x, gamma, beta, rm_ref, rv_ref, training, 0.1, 1e-5)
    with kernel_copy(copy):
        out, cache = B.batchnorm_forward(x, gamma, beta, rm, rv, training, 0.1, 1e-5)
        grads = B.batchnorm_backward(dy, cache)
    assert_close(out, out_ref, dtype)
    assert_close(rm, rm_ref, dtype)
    assert_close(rv, rv_ref, dtype)
    assert_close(cache.x_hat, cache_ref.x_hat, dtype)
    assert type(cache) is B.BatchNormInputCache and cache.training == training and cache.x is x
    for a, b in zip(grads, F.batchnorm_backward(dy, cache_ref)):
        assert_close(a, b, dtype)


@pytest.mark.parametrize("copy", COPIES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", [None, "relu6", "relu"])
def test_constant_channel_has_zero_variance(copy, dtype, activation):
    # a constant channel (variance exactly 0: x_hat = 0, inv_std = 1 / sqrt(eps)) beside varying ones; the output
    # of the constant channel is act(beta), and its input gradient is the reference's
    rng, x, gamma, beta, rm, rv = _inputs((2, 3, 4, 3), dtype, 5)
    x[..., 1] = dtype(2.5)
    dout = rng.standard_normal(x.shape).astype(dtype)
    for training in (True, False):
        _check_fused(x, gamma, beta, rm.copy(), rv.copy(), training, activation, None, dout, copy)
    out, cache = B.batchnorm_forward(x, gamma, beta, rm, rv, True)
    np.testing.assert_array_equal(cache.x_hat[..., 1], 0)
    np.testing.assert_array_equal(out[..., 1], beta[1])


@pytest.mark.parametrize("copy", COPIES)
@pytest.mark.parametrize("activation", ["relu6", "relu"])
def test_activation_kinks_pass_no_gradient(copy, activation):
    # eval mode with mean 0, variance 1, eps 0, gamma 1 and beta 0 makes the pre-activation exactly x, so x
    # lands exactly on the kinks; there the gradient is 0 (PyTorch's convention), as in the reference
    x = np.array([-1.0, 0.0, 3.0, 6.0, 7.0, 0.5]).reshape(1, 2, 3, 1)
    ones, zeros = np.ones(1), np.zeros(1)
    _check_fused(x, ones, zeros, zeros.copy(), ones.copy(), False, activation, x.copy(), np.ones_like(x), copy,
                 eps=0.0)
    with kernel_copy(copy):
        out, cache = fused.batchnorm_act_forward(x, ones, zeros, zeros.copy(), ones.copy(), False, 0.1, 0.0,
                                                 activation)
        dx = fused.batchnorm_act_backward(np.ones_like(x), cache)[0]
    expected_out = {"relu6": [0, 0, 3, 6, 6, 0.5], "relu": [0, 0, 3, 6, 7, 0.5]}[activation]
    expected_dx = {"relu6": [0, 0, 1, 0, 0, 1], "relu": [0, 0, 1, 1, 1, 1]}[activation]
    np.testing.assert_array_equal(out.ravel(), expected_out)
    np.testing.assert_array_equal(dx.ravel(), expected_dx)


@pytest.mark.parametrize("training", [True, False])
def test_more_threads_than_rows(training):
    # N * H = 1 row: the parallel copy keeps one partial sum per row (numpymnv2.kernels._launch.num_chunks)
    rng, x, gamma, beta, rm, rv = _inputs((1, 1, 7, 4), np.float64, 2)
    _check_fused(x, gamma, beta, rm, rv, training, "relu6", x.copy(), rng.standard_normal(x.shape), "parallel")


def test_large_mean_keeps_variance_accurate():
    # the shifted one-pass sums must not cancel when the mean is far larger than the spread
    rng = np.random.default_rng(0)
    x = (1e4 + rng.standard_normal((4, 5, 5, 3))).astype(np.float64)
    args = (np.ones(3), np.zeros(3))
    out_ref, _ = F.batchnorm_forward(x, *args, np.zeros(3), np.ones(3), True)
    out, _ = B.batchnorm_forward(x, *args, np.zeros(3), np.ones(3), True)
    np.testing.assert_allclose(out, out_ref, atol=1e-9)


def test_fused_rejects_bad_arguments():
    x = np.zeros((2, 2, 2, 3))
    p = np.ones(3)
    with pytest.raises(ValueError, match="activation"):
        fused.batchnorm_act_forward(x, p, p, p.copy(), p.copy(), True, activation="tanh")
    with pytest.raises(ValueError, match="residual"):
        fused.batchnorm_act_forward(x, p, p, p.copy(), p.copy(), True, residual=np.zeros((2, 2, 2, 4)))
    with pytest.raises(ValueError, match="more than one value"):
        fused.batchnorm_act_forward(np.zeros((1, 1, 1, 3)), p, p, p.copy(), p.copy(), True)
