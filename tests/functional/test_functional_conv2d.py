"""Full 2-D convolution (the stem): gradients, a loop definition, PyTorch, dtype and bad input."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numpymnv2.functional import conv2d_backward, conv2d_forward
from numpymnv2.functional.conv2d import col2im, im2col
from strategies import check_grads, float_arrays


@st.composite
def conv_cases(draw, max_side=7, max_channels=8, dtype=np.float64):
    """``(x, w, stride, padding)`` with any square kernel, stride 1-3 and padding 0-2 giving a non-empty output."""
    K = draw(st.integers(1, 4))
    padding = draw(st.integers(0, 2))
    stride = draw(st.integers(1, 3))
    low = max(1, K - 2 * padding)           # the smallest side that still gives one output pixel
    N = draw(st.integers(1, 4))
    H = draw(st.integers(low, max(low, max_side)))
    W = draw(st.integers(low, max(low, max_side)))
    C_in = draw(st.integers(1, max_channels))
    C_out = draw(st.integers(1, max_channels))
    x = draw(float_arrays((N, H, W, C_in), dtype))
    w = draw(float_arrays((C_out, K, K, C_in), dtype))
    return x, w, stride, padding


def conv2d_loops(x, w, stride, padding):
    """``out[n, i, j, o] = sum_{a, b, c} w[o, a, b, c] x_pad[n, s i + a, s j + b, c]``, one scalar at a time."""
    N, H, W, C_in = x.shape
    C_out, K, _, _ = w.shape
    s, p = stride, padding
    H_out, W_out = (H + 2 * p - K) // s + 1, (W + 2 * p - K) // s + 1
    out = np.zeros((N, H_out, W_out, C_out))
    for n in range(N):
        for i in range(H_out):
            for j in range(W_out):
                for o in range(C_out):
                    total = 0.0
                    for a in range(K):
                        for b in range(K):
                            r, c_ = s * i + a - p, s * j + b - p
                            if 0 <= r < H and 0 <= c_ < W:
                                for c in range(C_in):
                                    total += w[o, a, b, c] * x[n, r, c_, c]
                    out[n, i, j, o] = total
    return out


@given(conv_cases())
def test_conv2d_gradients_match_finite_differences(case):
    x, w, stride, padding = case
    check_grads("conv2d", (conv2d_forward, conv2d_backward), (x, w), stride=stride, padding=padding)


@given(conv_cases(max_side=5, max_channels=3))
def test_conv2d_matches_loop_definition(case):
    x, w, stride, padding = case
    out, _ = conv2d_forward(x, w, stride, padding)
    np.testing.assert_allclose(out, conv2d_loops(x, w, stride, padding), rtol=1e-12, atol=1e-12)


@given(conv_cases(max_side=6, max_channels=3))
def test_col2im_is_the_adjoint_of_im2col(case):
    # <im2col(x), y> == <x, col2im(y)> for every x, y: the backward of a gather is a scatter-add
    x, w, stride, padding = case
    K = w.shape[1]
    cols = im2col(x, K, stride, padding)
    y = np.random.default_rng(0).standard_normal(cols.shape)
    np.testing.assert_allclose(np.sum(cols * y), np.sum(x * col2im(y, x.shape, stride, padding)), rtol=1e-10)


def test_conv2d_stem_shape():
    # MobileNetV2's stem: 3x3, stride 2, padding 1, 3 -> 32 channels, 224 -> 112
    x = np.zeros((1, 224, 224, 3), np.float32)
    out, _ = conv2d_forward(x, np.zeros((32, 3, 3, 3), np.float32), 2, 1)
    assert out.shape == (1, 112, 112, 32)


def test_conv2d_preserves_float32():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 6, 3)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    out, cache = conv2d_forward(x, w, 2, 1)
    dx, dw = conv2d_backward(np.ones_like(out), cache)
    assert (out.dtype, dx.dtype, dw.dtype) == (np.float32,) * 3
    assert dx.shape == x.shape and dw.shape == w.shape


@pytest.mark.parametrize("stride,padding,K", [(1, 0, 3), (2, 1, 3), (1, 2, 5), (3, 0, 2), (2, 0, 1)])
def test_conv2d_matches_torch(stride, padding, K):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(K + 10 * stride)
    x = rng.standard_normal((2, 7, 6, 3))
    w = rng.standard_normal((5, K, K, 3))
    dout_shape = conv2d_forward(x, w, stride, padding)[0].shape
    dout = rng.standard_normal(dout_shape)
    out, cache = conv2d_forward(x, w, stride, padding)
    dx, dw = conv2d_backward(dout, cache)

    xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)      # NHWC -> NCHW
    wt = torch.tensor(w.transpose(0, 3, 1, 2), requires_grad=True)      # (C_out, K, K, C_in) -> (C_out, C_in, K, K)
    ot = torch.nn.functional.conv2d(xt, wt, stride=stride, padding=padding)
    ot.backward(torch.tensor(dout.transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(out, ot.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dx, xt.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dw, wt.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-10, atol=1e-10)


def test_conv2d_rejects_bad_input():
    x = np.zeros((1, 4, 4, 3))
    with pytest.raises(ValueError, match="3 input channels.*shape \\(1, 4, 4, 2\\)"):
        conv2d_forward(np.zeros((1, 4, 4, 2)), np.zeros((2, 3, 3, 3)))
    with pytest.raises(ValueError, match="square kernel"):
        conv2d_forward(x, np.zeros((2, 3, 2, 3)))
    with pytest.raises(ValueError, match="H=4 with kernel_size=5.*empty output"):
        conv2d_forward(x, np.zeros((2, 5, 5, 3)))
    with pytest.raises(ValueError, match="stride >= 1, got 0"):
        conv2d_forward(x, np.zeros((2, 3, 3, 3)), stride=0)
    with pytest.raises(ValueError, match="padding >= 0, got -1"):
        conv2d_forward(x, np.zeros((2, 3, 3, 3)), padding=-1)
