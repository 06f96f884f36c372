"""The inverted residual block: structure and keys, gradients by finite differences, the ablation switches."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import randomize_bn

from numpymnv2 import gradcheck
from numpymnv2.models import InvertedResidual
from numpymnv2.nn import BatchNorm2d, ConvBNAct, DepthwiseConv2d, PointwiseConv2d


# (inp, oup, stride, expand_ratio) of each kind of block
KINDS = {
    "t=1": (6, 4, 1, 1),
    "stride 2": (4, 6, 2, 6),
    "residual": (4, 4, 1, 6),
    "projection without shortcut (stride 1, inp != oup)": (4, 5, 1, 3),
}


def test_children_and_keys_follow_torchvision():
    expanded = InvertedResidual(4, 4, 1, 6)
    assert [type(m) for m in expanded.conv] == [ConvBNAct, ConvBNAct, PointwiseConv2d, BatchNorm2d]
    assert isinstance(expanded.conv[1].conv, DepthwiseConv2d) and expanded.conv[1].conv.stride == 1
    assert list(expanded.state_dict())[:2] == ["conv.0.0.weight", "conv.0.1.weight"]
    assert "conv.2.weight" in expanded.state_dict() and "conv.3.running_var" in expanded.state_dict()
    assert expanded.hidden_dim == 24 and expanded.use_res_connect

    plain = InvertedResidual(6, 4, 1, 1)
    keys = list(plain.state_dict())
    assert keys[0] == "conv.0.0.weight" and "conv.1.weight" in keys and keys[-1] == "conv.2.num_batches_tracked"
    assert not plain.use_res_connect
    assert not InvertedResidual(4, 4, 2, 6).use_res_connect
    assert not InvertedResidual(4, 4, 1, 6, use_shortcut=False).use_res_connect


def _check(block, x, seed, max_coords=12):
    # eps 1e-7 keeps the perturbation from crossing a ReLU6 kink; float64 leaves ~9 significant digits
    result = gradcheck(block, x, eps=1e-7, max_coords=max_coords, seed=seed)
    assert result.passed, str(result)
    return result


@given(kind=st.sampled_from(sorted(KINDS)), training=st.booleans(), linear_bottleneck=st.booleans(),
       use_shortcut=st.booleans(), batch=st.integers(1, 2), side=st.integers(3, 6), seed=st.integers(0, 2**16))
def test_gradients_match_finite_differences(kind, training, linear_bottleneck, use_shortcut, batch, side, seed):
    inp, oup, stride, t = KINDS[kind]
    rng = np.random.default_rng(seed)
    block = InvertedResidual(inp, oup, stride, t, linear_bottleneck=linear_bottleneck, use_shortcut=use_shortcut,
                             seed=seed, dtype="float64")
    randomize_bn(block, rng)
    block.train(training)
    if training and batch * ((side - 1) // stride + 1) ** 2 < 2:
        batch = 2
    x = rng.uniform(-1, 1, (batch, side, side, inp))
    _check(block, x, seed)


def test_shortcut_adds_dout_to_the_branch_gradient():
    """dL/dx of a residual block is the branch's dL/dx plus dout: compare with the same block without shortcut."""
    rng = np.random.default_rng(1)
    with_res = InvertedResidual(4, 4, 1, 6, seed=3, dtype="float64").train()
    without = InvertedResidual(4, 4, 1, 6, use_shortcut=False, seed=3, dtype="float64").train()
    x = rng.standard_normal((2, 5, 5, 4))
    out_res, out_plain = with_res(x), without(x)
    np.testing.assert_allclose(out_res, out_plain + x, rtol=0, atol=1e-14)
    dout = rng.standard_normal(out_res.shape)
    np.testing.assert_allclose(with_res.backward(dout), without.backward(dout) + dout, rtol=0, atol=1e-13)


def test_nonlinear_bottleneck_clips_the_projection():
    block = InvertedResidual(4, 6, 1, 6, linear_bottleneck=False, seed=0, dtype="float64").train()
    out = block(np.random.default_rng(0).standard_normal((2, 5, 5, 4)))
    assert out.min() >= 0 and out.max() <= 6
    linear = InvertedResidual(4, 6, 1, 6, seed=0, dtype="float64").train()
    assert linear(np.random.default_rng(0).standard_normal((2, 5, 5, 4))).min() < 0


def test_stride_two_halves_the_resolution_and_counts_batches():
    block = InvertedResidual(4, 6, 2, 6, seed=0)
    out = block(np.zeros((2, 7, 8, 4), dtype=np.float32) + 0.5)
    assert out.shape == (2, 4, 4, 6) and out.dtype == np.float32
    assert all(int(b) == 1 for k, b in block.named_buffers() if k.endswith("num_batches_tracked"))


def test_errors_name_the_block():
    block = InvertedResidual(24, 24, 1, 6).set_names("features.3")
    with pytest.raises(ValueError, match=r"InvertedResidual\(features.3\): expected input with 24 channels, got 32"):
        block(np.zeros((1, 8, 8, 32), dtype=np.float32))
    with pytest.raises(TypeError, match="float32"):
        block(np.zeros((1, 8, 8, 24), dtype=np.float64))
    with pytest.raises(ValueError, match="backward called before forward"):
        block.backward(np.zeros((1, 8, 8, 24), dtype=np.float32))
    block(np.ones((2, 8, 8, 24), dtype=np.float32))
    with pytest.raises(ValueError, match="gradient of shape"):
        block.backward(np.zeros((2, 4, 4, 24), dtype=np.float32))
    for bad, error, message in [(dict(stride=0), ValueError, "InvertedResidual: expected stride >= 1, got 0"),
                                (dict(expand_ratio=0), ValueError, "expected expand_ratio >= 1, got 0"),
                                (dict(inp=2.5), TypeError, "InvertedResidual: expected an integer inp, got 2.5")]:
        args = dict(inp=4, oup=4, stride=1, expand_ratio=6) | bad
        with pytest.raises(error, match=message):
            InvertedResidual(**args)
