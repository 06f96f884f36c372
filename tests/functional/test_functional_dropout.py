"""Inverted dropout: gradients with a seeded mask, identity in eval, unbiased in train, mask values."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numpymnv2.functional import dropout_backward, dropout_forward
from strategies import check_grads, float_arrays, nhwc_shapes, seeds


@given(nhwc_shapes().flatmap(float_arrays), st.sampled_from([0.0, 0.2, 0.5, 0.9, 1.0]), seeds())
def test_dropout_gradients_match_finite_differences(x, p, seed):
    def forward(x):
        # a fresh generator with the same seed per call: the same mask at every finite-difference point
        return dropout_forward(x, p, True, np.random.default_rng(seed))
    check_grads("dropout", (forward, dropout_backward), x)


@given(nhwc_shapes(max_side=4).flatmap(float_arrays), st.floats(0.05, 0.95), seeds())
def test_dropout_matches_loop_definition(x, p, seed):
    y, cache = dropout_forward(x, p, True, np.random.default_rng(seed))
    u = np.random.default_rng(seed).random(x.shape)          # the draws the mask is made of
    for idx in np.ndindex(x.shape):
        keep = u[idx] >= p
        assert cache.mask[idx] == (1 / (1 - p) if keep else 0.0)
        assert y[idx] == (x[idx] * cache.mask[idx])


@given(nhwc_shapes().flatmap(float_arrays), st.floats(0.0, 1.0))
def test_dropout_is_the_identity_in_eval(x, p):
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    y, cache = dropout_forward(x, p, False, rng)
    np.testing.assert_array_equal(y, x)
    assert not np.shares_memory(y, x)
    np.testing.assert_array_equal(dropout_backward(np.ones_like(x), cache), np.ones_like(x))
    assert rng.bit_generator.state == state               # evaluation draws nothing


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_dropout_is_unbiased_in_train(p):
    rng = np.random.default_rng(0)
    x = np.linspace(-1, 1, 12).reshape(3, 4)
    samples = np.stack([dropout_forward(x, p, True, rng)[0] for _ in range(20000)])
    # each sample mean has standard deviation |x| sqrt(p / (1 - p) / 20000) <= 0.007
    np.testing.assert_allclose(samples.mean(axis=0), x, atol=0.03)
    kept = (samples != 0).mean()
    assert abs(kept - (1 - p)) < 0.01


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5, 0.75])
def test_dropout_mask_is_zero_or_inverse_keep_probability(p):
    x = np.ones((4, 5, 5, 8))
    y, cache = dropout_forward(x, p, True, np.random.default_rng(1))
    assert set(np.unique(cache.mask)) <= {0.0, 1 / (1 - p)}
    assert set(np.unique(y)) <= {0.0, 1 / (1 - p)}
    np.testing.assert_array_equal(dropout_backward(np.ones_like(x), cache), cache.mask)


def test_dropout_extremes():
    x = np.ones((2, 3))
    y0, c0 = dropout_forward(x, 0.0, True, np.random.default_rng(0))
    np.testing.assert_array_equal(y0, x)
    y1, c1 = dropout_forward(x, 1.0, True, np.random.default_rng(0))
    np.testing.assert_array_equal(y1, 0)
    np.testing.assert_array_equal(dropout_backward(np.ones_like(x), c1), 0)


def test_dropout_same_generator_state_same_mask():
    x = np.ones((3, 4, 4, 2))
    a, _ = dropout_forward(x, 0.3, True, np.random.default_rng(7))
    b, _ = dropout_forward(x, 0.3, True, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("training", [True, False])
def test_dropout_preserves_float32(training):
    x = np.ones((2, 3, 3, 4), np.float32)
    y, cache = dropout_forward(x, 0.2, training, np.random.default_rng(0))
    dx = dropout_backward(np.ones_like(y), cache)
    assert y.dtype == dx.dtype == np.float32
    if training:
        assert cache.mask.dtype == np.float32


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_dropout_rejects_bad_p(p):
    with pytest.raises(ValueError, match="p must be in \\[0, 1\\]"):
        dropout_forward(np.ones(3), p, True, np.random.default_rng(0))


def test_dropout_numpy_scalar_p_does_not_upcast():
    y, cache = dropout_forward(np.ones((3, 4), np.float32), np.float64(0.25), True, np.random.default_rng(0))
    assert y.dtype == cache.mask.dtype == np.float32
