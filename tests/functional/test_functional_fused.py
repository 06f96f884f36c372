"""BatchNorm + activation + residual as one op: gradients for every combination, equal to the composition."""
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from numpymnv2.functional import (batchnorm_act_backward, batchnorm_act_forward, batchnorm_backward,
                                  batchnorm_forward, relu6_backward, relu6_forward, relu_backward, relu_forward)
from strategies import away_from_kinks, check_grads, float_arrays, kink_distance, nhwc_shapes, scales

ACTIVATIONS = [None, "relu6", "relu"]
EPS = 1e-6          # the gradcheck step


@st.composite
def fused_cases(draw, max_side=6, max_channels=8, training=None, activation=ACTIVATIONS):
    """``(x, gamma, beta, running_mean, running_var, training, activation, residual)``.

    ``gamma`` up to 4 and ``beta`` up to 4 so that pre-activations pass 6 as well as 0; ``beta`` kept away from
    the kinks, where a channel with (nearly) constant input puts its whole pre-activation.
    """
    N, H, W, C = draw(nhwc_shapes(max_side=max_side, max_channels=max_channels))
    training = draw(st.booleans()) if training is None else training
    if training:
        assume(N * H * W >= 3)      # see test_batchnorm_two_values_per_channel_is_degenerate
    x = draw(float_arrays((N, H, W, C)))
    gamma = draw(scales((C,), 0.25, 4.0))
    beta = away_from_kinks(draw(float_arrays((C,), low=-1.0, high=4.0)), margin=0.05)
    running_mean = draw(float_arrays((C,)))
    running_var = draw(float_arrays((C,), low=0.25, high=2.0))
    activation = draw(st.sampled_from(activation)) if isinstance(activation, list) else activation
    residual = draw(st.none() | float_arrays((N, H, W, C)))
    return x, gamma, beta, running_mean, running_var, training, activation, residual


def pre_activation(x, gamma, beta, rm, rv, training):
    y, cache = batchnorm_forward(x, gamma, beta, rm.copy(), rv.copy(), training)
    return y, cache.inv_std


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@given(data=st.data())
def test_fused_gradients_match_finite_differences(activation, training, data):
    case = data.draw(fused_cases(training=training, activation=activation))
    x, gamma, beta, rm, rv, training, activation, residual = case
    if activation is not None:
        # A step of EPS in one x moves a pre-activation by at most about 3 |gamma| inv_std EPS (its own term and
        # the batch-statistics terms); the derivative must not change within that distance.
        pre, inv_std = pre_activation(x, gamma, beta, rm, rv, training)
        margin = 10 * EPS * float(np.max(np.abs(gamma) * inv_std))
        kinks = (0.0, 6.0) if activation == "relu6" else (0.0,)
        assume(kink_distance(pre, kinks) > margin)

    def forward(x, gamma, beta, *residual_):
        return batchnorm_act_forward(x, gamma, beta, rm.copy(), rv.copy(), training, activation=activation,
                                     residual=residual_[0] if residual_ else None)

    def backward(dout, cache):
        dx, dgamma, dbeta, dresidual = batchnorm_act_backward(dout, cache)
        return (dx, dgamma, dbeta) + ((dresidual,) if residual is not None else ())

    inputs = (x, gamma, beta) + ((residual,) if residual is not None else ())
    label = f"batchnorm_act[{'train' if training else 'eval'},{activation},{'res' if residual is not None else '-'}]"
    check_grads(label, (forward, backward), inputs, eps=EPS)


@given(fused_cases(max_side=4, max_channels=4))
def test_fused_equals_the_composition(case):
    x, gamma, beta, rm, rv, training, activation, residual = case
    rm1, rv1, rm2, rv2 = rm.copy(), rv.copy(), rm.copy(), rv.copy()
    out, cache = batchnorm_act_forward(x, gamma, beta, rm1, rv1, training, activation=activation,
                                       residual=residual)
    y, bn_cache = batchnorm_forward(x, gamma, beta, rm2, rv2, training)
    act = {"relu6": (relu6_forward, relu6_backward), "relu": (relu_forward, relu_backward)}.get(activation)
    z, act_cache = act[0](y) if act else (y, None)
    expected = z + residual if residual is not None else z
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(rm1, rm2)
    np.testing.assert_array_equal(rv1, rv2)

    dout = np.random.default_rng(0).standard_normal(out.shape)
    dx, dgamma, dbeta, dresidual = batchnorm_act_backward(dout, cache)
    dy = act[1](dout, act_cache) if act else dout
    dx2, dgamma2, dbeta2 = batchnorm_backward(dy, bn_cache)
    np.testing.assert_allclose(dx, dx2, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dgamma, dgamma2, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dbeta, dbeta2, rtol=1e-12, atol=1e-12)
    if residual is None:
        assert dresidual is None
    else:
        np.testing.assert_array_equal(dresidual, dout)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("with_residual", [False, True])
def test_fused_preserves_float32(activation, training, with_residual):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 3, 4)).astype(np.float32)
    residual = np.ones_like(x) if with_residual else None
    args = (np.ones(4, np.float32), np.zeros(4, np.float32), np.zeros(4, np.float32), np.ones(4, np.float32))
    out, cache = batchnorm_act_forward(x, *args, training, 0.1, 1e-5, activation, residual)
    grads = batchnorm_act_backward(np.ones_like(out), cache)
    assert out.dtype == np.float32
    assert all(g.dtype == np.float32 for g in grads if g is not None)
    assert args[2].dtype == args[3].dtype == np.float32


def test_fused_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    C = 3
    x = rng.standard_normal((2, 4, 5, C))
    gamma, beta = rng.uniform(0.5, 3, C), rng.uniform(0, 3, C)
    rm, rv = np.zeros(C), np.ones(C)
    residual = rng.standard_normal(x.shape)
    out, cache = batchnorm_act_forward(x, gamma, beta, rm, rv, True, activation="relu6", residual=residual)
    dout = rng.standard_normal(out.shape)
    dx, dgamma, dbeta, dres = batchnorm_act_backward(dout, cache)

    nchw = (0, 3, 1, 2)
    xt = torch.tensor(x.transpose(nchw), requires_grad=True)
    rt = torch.tensor(residual.transpose(nchw), requires_grad=True)
    gt, bt = torch.tensor(gamma, requires_grad=True), torch.tensor(beta, requires_grad=True)
    rm_t, rv_t = torch.zeros(C, dtype=torch.float64), torch.ones(C, dtype=torch.float64)
    ot = torch.nn.functional.relu6(torch.nn.functional.batch_norm(xt, rm_t, rv_t, gt, bt, True, 0.1, 1e-5)) + rt
    ot.backward(torch.tensor(dout.transpose(nchw)))
    nhwc = (0, 2, 3, 1)
    tol = dict(rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(out, ot.detach().numpy().transpose(nhwc), **tol)
    np.testing.assert_allclose(dx, xt.grad.numpy().transpose(nhwc), **tol)
    np.testing.assert_allclose(dres, rt.grad.numpy().transpose(nhwc), **tol)
    np.testing.assert_allclose(dgamma, gt.grad.numpy(), **tol)
    np.testing.assert_allclose(dbeta, bt.grad.numpy(), **tol)
    np.testing.assert_allclose(rv, rv_t.numpy(), **tol)


def test_fused_rejects_bad_arguments():
    x = np.zeros((2, 2, 2, 3))
    args = (np.ones(3), np.zeros(3), np.zeros(3), np.ones(3), True)
    with pytest.raises(ValueError, match="batchnorm_act: activation must be one of 'relu6', 'relu' or None, got 'tanh'"):
        batchnorm_act_forward(x, *args, activation="tanh")
    with pytest.raises(ValueError, match="residual has shape \\(2, 2, 2, 4\\), expected \\(2, 2, 2, 3\\)"):
        batchnorm_act_forward(x, *args, residual=np.zeros((2, 2, 2, 4)))


def test_fused_numpy_scalar_hyperparameters_do_not_upcast():
    x = np.random.default_rng(0).standard_normal((2, 3, 3, 4)).astype(np.float32)
    f32 = [np.ones(4, np.float32), np.zeros(4, np.float32), np.zeros(4, np.float32), np.ones(4, np.float32)]
    out, cache = batchnorm_act_forward(x, *f32, True, np.float64(0.1), np.float64(1e-5), "relu6")
    assert out.dtype == np.float32
    assert all(g.dtype == np.float32 for g in batchnorm_act_backward(np.ones_like(out), cache) if g is not None)
