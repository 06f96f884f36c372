"""Pointwise (1x1) convolution ``z = T a``: gradients, a loop definition, PyTorch, dtype and bad input."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numpymnv2.functional import pointwise_conv2d_backward, pointwise_conv2d_forward
from strategies import check_grads, float_arrays, nhwc_shapes


@st.composite
def pointwise_cases(draw, max_side=7, max_channels=8):
    N, H, W, C_in = draw(nhwc_shapes(max_side=max_side, max_channels=max_channels))
    C_out = draw(st.integers(1, max_channels))
    return draw(float_arrays((N, H, W, C_in))), draw(float_arrays((C_out, C_in)))


@given(pointwise_cases())
def test_pointwise_gradients_match_finite_differences(case):
    check_grads("pointwise", (pointwise_conv2d_forward, pointwise_conv2d_backward), case)


@given(pointwise_cases(max_side=4, max_channels=4))
def test_pointwise_matches_loop_definition(case):
    x, T = case
    N, H, W, C_in = x.shape
    expected = np.zeros((N, H, W, T.shape[0]))
    for n in range(N):
        for i in range(H):
            for j in range(W):
                for o in range(T.shape[0]):
                    for c in range(C_in):
                        expected[n, i, j, o] += T[o, c] * x[n, i, j, c]     # z = T a, pixel by pixel
    np.testing.assert_allclose(pointwise_conv2d_forward(x, T)[0], expected, rtol=1e-12, atol=1e-12)


def test_pointwise_preserves_float32():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5, 4)).astype(np.float32)
    T = rng.standard_normal((6, 4)).astype(np.float32)
    z, cache = pointwise_conv2d_forward(x, T)
    dx, dT = pointwise_conv2d_backward(np.ones_like(z), cache)
    assert (z.dtype, dx.dtype, dT.dtype) == (np.float32,) * 3
    assert z.shape == (2, 3, 5, 6) and dx.shape == x.shape and dT.shape == T.shape


def test_pointwise_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x, T = rng.standard_normal((2, 5, 4, 3)), rng.standard_normal((6, 3))
    z, cache = pointwise_conv2d_forward(x, T)
    dz = rng.standard_normal(z.shape)
    dx, dT = pointwise_conv2d_backward(dz, cache)
    xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    Tt = torch.tensor(T[:, :, None, None], requires_grad=True)
    zt = torch.nn.functional.conv2d(xt, Tt)
    zt.backward(torch.tensor(dz.transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(z, zt.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dx, xt.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dT, Tt.grad.numpy()[:, :, 0, 0], rtol=1e-10, atol=1e-10)


def test_pointwise_backward_accepts_non_contiguous_gradient():
    rng = np.random.default_rng(2)
    x, T = rng.standard_normal((2, 3, 3, 4)), rng.standard_normal((5, 4))
    z, cache = pointwise_conv2d_forward(x, T)
    dz = np.asfortranarray(rng.standard_normal(z.shape))
    dx, dT = pointwise_conv2d_backward(dz, cache)
    dx2, dT2 = pointwise_conv2d_backward(np.ascontiguousarray(dz), cache)
    np.testing.assert_array_equal(dx, dx2)
    np.testing.assert_array_equal(dT, dT2)


def test_pointwise_rejects_channel_mismatch():
    with pytest.raises(ValueError, match="weight expects 4 input channels, got input shape \\(1, 2, 2, 3\\)"):
        pointwise_conv2d_forward(np.zeros((1, 2, 2, 3)), np.zeros((5, 4)))


@pytest.mark.parametrize("backend", ["reference", "fast"])
@pytest.mark.parametrize("shape,C_out", [((2, 3, 3, 4), 5), ((32, 1, 1, 160), 960), ((8, 8, 8, 24), 144)])
def test_pointwise_backward_writes_the_weight_gradient_where_asked(backend, shape, C_out):
    """``dT_out``: the weight gradient written into a given array (a layer's ``weight.grad``), the same values as
    a new one, on both pairs and on every path of the fast products."""
    from numpymnv2 import ops
    forward, backward = ops.POINTWISE_CONV2D.on(backend)
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(np.float32)
    T = rng.standard_normal((C_out, shape[-1])).astype(np.float32)
    z, cache = forward(x, T)
    dz = rng.standard_normal(z.shape).astype(np.float32)
    dx, dT = backward(dz, cache)
    out = np.full(T.shape, np.nan, np.float32)
    dx2, dT2 = backward(dz, cache, dT_out=out)
    assert dT2 is out
    np.testing.assert_array_equal(dx2, dx)
    np.testing.assert_array_equal(out, dT)


@pytest.mark.parametrize("backend", ["reference", "fast"])
@pytest.mark.parametrize("bad,got", [(np.zeros((5, 3), np.float32), r"\(5, 3\) float32"),
                                     (np.zeros((5, 4)), r"\(5, 4\) float64"),
                                     (np.zeros((4, 5), np.float32).T, r"\(5, 4\) float32 not C-contiguous"),
                                     ([[0.0] * 4] * 5, "list")])
def test_pointwise_backward_rejects_a_bad_gradient_array(backend, bad, got):
    from numpymnv2 import ops
    forward, backward = ops.POINTWISE_CONV2D.on(backend)
    z, cache = forward(np.ones((1, 2, 2, 4), np.float32), np.ones((5, 4), np.float32))
    with pytest.raises(ValueError, match=r"pointwise_conv2d: dT_out must be a C-contiguous float32 array of shape "
                                         r"\(5, 4\), got " + got):
        backward(np.ones_like(z), cache, dT_out=bad)
