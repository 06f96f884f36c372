"""ReLU6 and ReLU: gradients away from the kinks, the kink convention (0, as PyTorch), dtype."""
import numpy as np
import pytest
from hypothesis import given

from numpymnv2.functional import relu6_backward, relu6_forward, relu_backward, relu_forward
from strategies import away_from_kinks, check_grads, float_arrays, nhwc_shapes

OPS = {"relu6": (relu6_forward, relu6_backward), "relu": (relu_forward, relu_backward)}


@given(nhwc_shapes().flatmap(float_arrays))
def test_relu6_gradients_match_finite_differences(x):
    # scaled to [-8, 8] so that values fall on both sides of both kinks, then moved away from them
    x = away_from_kinks(x * 8)
    check_grads("relu6", OPS["relu6"], x)


@given(nhwc_shapes().flatmap(float_arrays))
def test_relu_gradients_match_finite_differences(x):
    x = away_from_kinks(x, kinks=(0.0,))
    check_grads("relu", OPS["relu"], x)


@given(nhwc_shapes(max_side=3, max_channels=3).flatmap(lambda s: float_arrays(s, low=-8, high=8)))
def test_activations_match_loop_definition(x):
    y6, _ = relu6_forward(x)
    y, _ = relu_forward(x)
    dy6 = relu6_backward(np.ones_like(x), relu6_forward(x)[1])
    dy = relu_backward(np.ones_like(x), relu_forward(x)[1])
    for idx in np.ndindex(x.shape):
        v = x[idx]
        assert y6[idx] == (0.0 if v < 0 else 6.0 if v > 6 else v)
        assert y[idx] == (v if v > 0 else 0.0)
        assert dy6[idx] == (1.0 if 0 < v < 6 else 0.0)
        assert dy[idx] == (1.0 if v > 0 else 0.0)


def test_gradient_is_zero_at_the_kinks():
    x = np.array([-1.0, 0.0, 3.0, 6.0, 7.0])
    np.testing.assert_array_equal(relu6_backward(np.ones(5), relu6_forward(x)[1]), [0, 0, 1, 0, 0])
    np.testing.assert_array_equal(relu_backward(np.ones(5), relu_forward(x)[1]), [0, 0, 1, 1, 1])


@pytest.mark.parametrize("name", ["relu6", "relu"])
def test_activation_matches_torch_including_kinks(name):
    torch = pytest.importorskip("torch")
    fwd, bwd = OPS[name]
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-8, 8, 50), [0.0, 6.0, -0.0, 1e-300, 6 - 1e-15]])
    dy = rng.standard_normal(x.shape)
    y, cache = fwd(x)
    dx = bwd(dy, cache)
    xt = torch.tensor(x, requires_grad=True)
    yt = getattr(torch.nn.functional, name)(xt)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-10)
    if name == "relu6":
        assert dx[50] == 0 and dx[51] == 0        # the kinks 0 and 6


@pytest.mark.parametrize("name", ["relu6", "relu"])
def test_activation_preserves_float32(name):
    fwd, bwd = OPS[name]
    x = np.linspace(-8, 8, 24, dtype=np.float32).reshape(1, 2, 3, 4)
    y, cache = fwd(x)
    dx = bwd(np.ones_like(y), cache)
    assert y.dtype == dx.dtype == np.float32 and y.shape == dx.shape == x.shape


def test_activation_keeps_nan_visible():
    # a NaN must not be clipped into a plausible number
    y, _ = relu6_forward(np.array([np.nan, 1.0]))
    assert np.isnan(y[0])
