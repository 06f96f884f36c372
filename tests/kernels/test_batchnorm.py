"""BatchNorm and fused BatchNorm + activation (+ residual) kernels equal the reference, train and eval."""
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
def bn_cases(draw):
    shape = (draw(st.integers(1, MAX_BATCH)), draw(st.integers(1, MAX_SIDE)), draw(st.integers(1, MAX_SIDE)),
             draw(st.integers(1, MAX_CHANNELS)))
    training = draw(st.booleans())
    if training and shape[0] * shape[1] * shape[2] < 2:
        shape = (2,) + shape[1:]
    return (shape, training, draw(st.sampled_from([np.float64, np.float32])),
            draw(st.sampled_from([None, "relu6", "relu"])), draw(st.booleans()), draw(st.integers(0, 2**32 - 1)))


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


@given(bn_cases())
def test_batchnorm_act_matches_reference(case):
    shape, training, dtype, activation, with_residual, seed = case
    rng, x, gamma, beta, rm, rv = _inputs(shape, dtype, seed)
    residual = rng.standard_normal(shape).astype(dtype) if with_residual else None
    rm_ref, rv_ref = rm.copy(), rv.copy()
    out_ref, cache_ref = F.batchnorm_act_forward(x, gamma, beta, rm_ref, rv_ref, training, 0.1, 1e-5, activation,
                                                 residual)
    out, cache = K.batchnorm_act_forward(x, gamma, beta, rm, rv, training, 0.1, 1e-5, activation, residual)
    assert_close(out, out_ref, dtype)
    assert_close(rm, rm_ref, dtype)
    assert_close(rv, rv_ref, dtype)
    assert type(cache) is type(cache_ref) and type(cache.bn) is type(cache_ref.bn)
    assert (cache.activation, cache.has_residual, cache.bn.training) == (activation, with_residual, training)
    dout = rng.standard_normal(shape).astype(dtype)
    fast, ref = K.batchnorm_act_backward(dout, cache), F.batchnorm_act_backward(dout, cache_ref)
    for a, b in zip(fast[:3], ref[:3]):
        assert_close(a, b, dtype)
    if with_residual:
        assert_close(fast[3], ref[3], dtype)
    else:
        assert fast[3] is None and ref[3] is None


@given(bn_cases())
def test_batchnorm_matches_reference(case):
    shape, training, dtype, _, _, seed = case
    rng, x, gamma, beta, rm, rv = _inputs(shape, dtype, seed)
    rm_ref, rv_ref = rm.copy(), rv.copy()
    out_ref, cache_ref = F.batchnorm_forward(x, gamma, beta, rm_ref, rv_ref, training, 0.1, 1e-5)
    out, cache = K.batchnorm_forward(x, gamma, beta, rm, rv, training, 0.1, 1e-5)
    assert_close(out, out_ref, dtype)
    assert_close(rm, rm_ref, dtype)
    assert_close(rv, rv_ref, dtype)
    assert_close(cache.x_hat, cache_ref.x_hat, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    for a, b in zip(K.batchnorm_backward(dy, cache), F.batchnorm_backward(dy, cache_ref)):
        assert_close(a, b, dtype)


def test_large_mean_keeps_variance_accurate():
    # the shifted one-pass sums must not cancel when the mean is far larger than the spread
    rng = np.random.default_rng(0)
    x = (1e4 + rng.standard_normal((4, 5, 5, 3))).astype(np.float64)
    args = (np.ones(3), np.zeros(3))
    out_ref, _ = F.batchnorm_forward(x, *args, np.zeros(3), np.ones(3), True)
    out, _ = K.batchnorm_forward(x, *args, np.zeros(3), np.ones(3), True)
    np.testing.assert_allclose(out, out_ref, atol=1e-9)


def test_fused_rejects_bad_arguments():
    x = np.zeros((2, 2, 2, 3))
    p = np.ones(3)
    with pytest.raises(ValueError, match="activation"):
        K.batchnorm_act_forward(x, p, p, p.copy(), p.copy(), True, activation="tanh")
    with pytest.raises(ValueError, match="residual"):
        K.batchnorm_act_forward(x, p, p, p.copy(), p.copy(), True, residual=np.zeros((2, 2, 2, 4)))
    with pytest.raises(ValueError, match="more than one value"):
        K.batchnorm_act_forward(np.zeros((1, 1, 1, 3)), p, p, p.copy(), p.copy(), True)
