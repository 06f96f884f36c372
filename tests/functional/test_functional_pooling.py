"""Global average pooling: gradients, loop definition, PyTorch, dtype."""
import numpy as np
import pytest
from hypothesis import given

from numpymnv2.functional import global_avg_pool_backward, global_avg_pool_forward
from strategies import check_grads, float_arrays, nhwc_shapes


@given(nhwc_shapes().flatmap(float_arrays))
def test_global_avg_pool_gradients_match_finite_differences(x):
    check_grads("global_avg_pool", (global_avg_pool_forward, global_avg_pool_backward), x)


@given(nhwc_shapes(max_side=4, max_channels=3).flatmap(float_arrays))
def test_global_avg_pool_matches_loop_definition(x):
    N, H, W, C = x.shape
    y, _ = global_avg_pool_forward(x)
    assert y.shape == (N, C)
    for n in range(N):
        for c in range(C):
            total = 0.0
            for i in range(H):
                for j in range(W):
                    total += x[n, i, j, c]
            assert np.isclose(y[n, c], total / (H * W), rtol=1e-12, atol=1e-15)


def test_global_avg_pool_preserves_float32():
    x = np.arange(2 * 3 * 5 * 4, dtype=np.float32).reshape(2, 3, 5, 4)
    y, cache = global_avg_pool_forward(x)
    dx = global_avg_pool_backward(np.ones_like(y), cache)
    assert y.dtype == dx.dtype == np.float32 and dx.shape == x.shape
    np.testing.assert_allclose(dx, 1 / 15)


def test_global_avg_pool_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 4, 6))
    y, cache = global_avg_pool_forward(x)
    dy = rng.standard_normal(y.shape)
    dx = global_avg_pool_backward(dy, cache)
    xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    yt = torch.nn.functional.adaptive_avg_pool2d(xt, 1).flatten(1)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dx, xt.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-10, atol=1e-10)
