"""Depthwise convolution: gradients, a loop definition, PyTorch (groups = channels), dtype and bad input."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numpymnv2.functional import depthwise_conv2d_backward, depthwise_conv2d_forward
from strategies import check_grads, float_arrays


@st.composite
def depthwise_cases(draw, max_side=7, max_channels=8, dtype=np.float64, kernel_sizes=(1, 2, 3, 4, 5)):
    """``(x, w, stride, padding)``: MobileNetV2's 3x3 with padding 1 half the time, otherwise any kernel size,
    stride 1-3 and padding 0-2 with a non-empty output."""
    if draw(st.booleans()):
        K, padding, stride = 3, 1, draw(st.sampled_from([1, 2]))
    else:
        K = draw(st.sampled_from(kernel_sizes))
        padding = draw(st.integers(0, 2))
        stride = draw(st.integers(1, 3))
    low = max(1, K - 2 * padding)
    N = draw(st.integers(1, 4))
    H = draw(st.integers(low, max(low, max_side)))
    W = draw(st.integers(low, max(low, max_side)))
    C = draw(st.integers(1, max_channels))
    return draw(float_arrays((N, H, W, C), dtype)), draw(float_arrays((K, K, C), dtype)), stride, padding


def depthwise_loops(x, w, stride, padding):
    """``out[n, i, j, c] = sum_{a, b} w[a, b, c] x_pad[n, s i + a, s j + b, c]``, one scalar at a time."""
    N, H, W, C = x.shape
    K = w.shape[0]
    s, p = stride, padding
    H_out, W_out = (H + 2 * p - K) // s + 1, (W + 2 * p - K) // s + 1
    out = np.zeros((N, H_out, W_out, C))
    for n in range(N):
        for i in range(H_out):
            for j in range(W_out):
                for c in range(C):
                    for a in range(K):
                        for b in range(K):
                            r, q = s * i + a - p, s * j + b - p
                            if 0 <= r < H and 0 <= q < W:
                                out[n, i, j, c] += w[a, b, c] * x[n, r, q, c]
    return out


@given(depthwise_cases())
def test_depthwise_gradients_match_finite_differences(case):
    x, w, stride, padding = case
    check_grads("depthwise", (depthwise_conv2d_forward, depthwise_conv2d_backward), (x, w),
                stride=stride, padding=padding)


@given(depthwise_cases(max_side=5, max_channels=3))
def test_depthwise_matches_loop_definition(case):
    x, w, stride, padding = case
    out, _ = depthwise_conv2d_forward(x, w, stride, padding)
    np.testing.assert_allclose(out, depthwise_loops(x, w, stride, padding), rtol=1e-12, atol=1e-12)


def test_depthwise_mobilenet_shapes():
    x = np.zeros((2, 7, 8, 5), np.float32)
    w = np.zeros((3, 3, 5), np.float32)
    assert depthwise_conv2d_forward(x, w, 1, 1)[0].shape == (2, 7, 8, 5)
    assert depthwise_conv2d_forward(x, w, 2, 1)[0].shape == (2, 4, 4, 5)
    assert depthwise_conv2d_forward(np.zeros((1, 1, 1, 5)), np.zeros((3, 3, 5)), 2, 1)[0].shape == (1, 1, 1, 5)


def test_depthwise_preserves_float32():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 6, 3)).astype(np.float32)
    w = rng.standard_normal((3, 3, 3)).astype(np.float32)
    out, cache = depthwise_conv2d_forward(x, w, 2, 1)
    dx, dw = depthwise_conv2d_backward(np.ones_like(out), cache)
    assert (out.dtype, dx.dtype, dw.dtype) == (np.float32,) * 3
    assert dx.shape == x.shape and dw.shape == w.shape


@pytest.mark.parametrize("stride,padding,K", [(1, 1, 3), (2, 1, 3), (1, 0, 3), (2, 2, 5), (3, 0, 2), (1, 0, 1)])
def test_depthwise_matches_torch_grouped_conv(stride, padding, K):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(K + 10 * stride + 100 * padding)
    C = 4
    x = rng.standard_normal((2, 7, 6, C))
    w = rng.standard_normal((K, K, C))
    out, cache = depthwise_conv2d_forward(x, w, stride, padding)
    dout = rng.standard_normal(out.shape)
    dx, dw = depthwise_conv2d_backward(dout, cache)

    xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    wt = torch.tensor(w.transpose(2, 0, 1)[:, None], requires_grad=True)   # (K, K, C) -> (C, 1, K, K)
    ot = torch.nn.functional.conv2d(xt, wt, stride=stride, padding=padding, groups=C)
    ot.backward(torch.tensor(dout.transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(out, ot.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dx, xt.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dw, wt.grad.numpy()[:, 0].transpose(1, 2, 0), rtol=1e-10, atol=1e-10)


def test_depthwise_rejects_bad_input():
    x = np.zeros((1, 4, 4, 3))
    with pytest.raises(ValueError, match="expected weight shape \\(K, K, 3\\).*got \\(3, 3, 2\\)"):
        depthwise_conv2d_forward(x, np.zeros((3, 3, 2)))
    with pytest.raises(ValueError, match="got \\(3, 2, 3\\)"):
        depthwise_conv2d_forward(x, np.zeros((3, 2, 3)))
    with pytest.raises(ValueError, match="W=4 with kernel_size=7.*empty output"):
        depthwise_conv2d_forward(np.zeros((1, 9, 4, 3)), np.zeros((7, 7, 3)), padding=1)
    with pytest.raises(ValueError, match="stride >= 1"):
        depthwise_conv2d_forward(x, np.zeros((3, 3, 3)), stride=0)
