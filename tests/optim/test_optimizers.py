"""Optimizer properties that need no torch: convergence, dtype, in-place updates, groups, state_dict, errors."""
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import npz_round_trip

from numpymnv2 import optim
from numpymnv2.nn.module import Module, Parameter

SHAPES = [(6, 4), (4,), (3, 3, 5), (1,)]

# One constructor per optimizer and interesting option, used by the generic tests below.
CONFIGS = {
    "sgd": lambda p: optim.SGD(p, lr=0.05),
    "sgd-momentum-dampening-wd": lambda p: optim.SGD(p, lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-2),
    "sgd-nesterov": lambda p: optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    "rmsprop-tf": lambda p: optim.RMSprop(p, lr=0.01, weight_decay=4e-5),
    "rmsprop-tf-centered": lambda p: optim.RMSprop(p, lr=0.01, centered=True, eps=1e-3),
    "rmsprop-torch": lambda p: optim.RMSprop(p, lr=0.01, eps_inside_sqrt=False, centered=True, weight_decay=1e-3),
    "rmsprop-no-momentum": lambda p: optim.RMSprop(p, lr=0.01, momentum=0.0),
    "adam": lambda p: optim.Adam(p, lr=0.01, weight_decay=1e-2),
    "adamw": lambda p: optim.AdamW(p, lr=0.01),
}
configs = pytest.mark.parametrize("make", CONFIGS.values(), ids=CONFIGS.keys())


def make_params(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return [Parameter(rng.standard_normal(s).astype(dtype)) for s in SHAPES]


def set_grads(params, rng):
    for p in params:
        p.grad[...] = rng.standard_normal(p.shape).astype(p.grad.dtype)


# -- the math -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [dict(lr=0.1), dict(lr=0.05, momentum=0.9), dict(lr=0.05, momentum=0.9, nesterov=True)],
                         ids=["plain", "momentum", "nesterov"])
def test_sgd_converges_on_a_quadratic(kw):
    """L(θ) = ½ θᵀAθ - bᵀθ with A symmetric positive definite; the minimum is A⁻¹b."""
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    a = q @ np.diag([0.5, 1.0, 2.0, 3.0, 4.0]) @ q.T
    b = rng.standard_normal(5)
    theta = Parameter(np.zeros(5))
    opt = optim.SGD([theta], **kw)
    for _ in range(500):
        theta.grad[...] = a @ theta.data - b
        opt.step()
    np.testing.assert_allclose(theta.data, np.linalg.solve(a, b), atol=1e-8)


@pytest.mark.parametrize("make", [lambda p: optim.RMSprop(p, lr=0.01), lambda p: optim.Adam(p, lr=0.1),
                                  lambda p: optim.AdamW(p, lr=0.1)], ids=["rmsprop-tf", "adam", "adamw"])
def test_adaptive_optimizers_reduce_a_quadratic(make):
    theta = Parameter(np.full(4, 3.0))
    opt = make([theta])
    for _ in range(300):
        theta.grad[...] = theta.data          # L = ½ |θ|²
        opt.step()
    assert np.abs(theta.data).max() < 0.3


def test_rmsprop_tf_first_step_by_hand():
    """v starts at 1: v1 = α + (1-α) g², m1 = η g / sqrt(v1 + ε), θ1 = θ0 - m1; then m2 = μ m1 + η g2 / ..."""
    theta0, g1, g2 = np.array([1.0, -2.0]), np.array([0.5, 3.0]), np.array([-1.0, 0.25])
    lr, alpha, mu, eps = 0.1, 0.9, 0.9, 1e-3
    p = Parameter(theta0.copy())
    opt = optim.RMSprop([p], lr=lr, alpha=alpha, momentum=mu, eps=eps)
    p.grad[...] = g1
    opt.step()
    v1 = alpha * 1.0 + (1 - alpha) * g1 ** 2
    m1 = lr * g1 / np.sqrt(v1 + eps)
    np.testing.assert_allclose(p.data, theta0 - m1, rtol=1e-15)
    p.grad[...] = g2
    opt.param_groups[0]["lr"] = lr / 10      # TensorFlow: the new lr scales only the new gradient
    opt.step()
    v2 = alpha * v1 + (1 - alpha) * g2 ** 2
    m2 = mu * m1 + lr / 10 * g2 / np.sqrt(v2 + eps)
    np.testing.assert_allclose(p.data, theta0 - m1 - m2, rtol=1e-14)
    np.testing.assert_allclose(opt.state[0]["square_avg"], v2, rtol=1e-15)


def test_rmsprop_tf_centered_by_hand():
    g = np.array([0.5, -3.0])
    p = Parameter(np.zeros(2))
    opt = optim.RMSprop([p], lr=0.1, alpha=0.9, momentum=0.0, eps=1e-2, centered=True)
    p.grad[...] = g
    opt.step()
    v, gbar = 0.9 + 0.1 * g ** 2, 0.1 * g
    np.testing.assert_allclose(p.data, -0.1 * g / np.sqrt(v - gbar ** 2 + 1e-2), rtol=1e-14)


def test_adam_first_step_is_lr_times_sign():
    """With bias correction, Adam's first step is η g / (|g| + ε), about η sign(g)."""
    p = Parameter(np.zeros(3))
    opt = optim.Adam([p], lr=0.01, eps=0.0)
    p.grad[...] = [2.0, -0.5, 1e-3]
    opt.step()
    np.testing.assert_allclose(p.data, [-0.01, 0.01, -0.01], rtol=1e-12)


def test_adamw_decay_is_decoupled_and_adam_decay_is_not():
    """With zero gradients, AdamW shrinks θ by (1 - η λ) per step; Adam's L2 term goes through the moments."""
    pw, pa = Parameter(np.full(2, 2.0)), Parameter(np.full(2, 2.0))
    adamw, adam = optim.AdamW([pw], lr=0.1, weight_decay=0.5), optim.Adam([pa], lr=0.1, weight_decay=0.5)
    for _ in range(3):
        adamw.step()
        adam.step()
    np.testing.assert_allclose(pw.data, 2.0 * 0.95 ** 3, rtol=1e-14)
    np.testing.assert_allclose(pa.data, 2.0 - 0.3, rtol=1e-3)  # Adam: g = λθ > 0, each step ≈ η sign(g)


@configs
def test_zero_gradient_and_zero_lr_leave_params_unchanged(make):
    params = make_params()
    before = [p.data.copy() for p in params]
    opt = make(params)
    for g in opt.param_groups:
        g["lr"] = 0.0
    set_grads(params, np.random.default_rng(1))
    opt.step()
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p.data, b)


# -- dtype, in place, allocation -------------------------------------------------------------------------
@configs
def test_float32_in_float32_out_in_place(make):
    params = make_params(np.float32)
    arrays = [p.data for p in params]
    opt = make(params)
    rng = np.random.default_rng(2)
    for _ in range(3):
        set_grads(params, rng)
        opt.step()
    for p, a in zip(params, arrays):
        assert p.data is a and p.data.dtype == np.float32
        assert np.isfinite(p.data).all()
    for state in opt.state:
        assert all(arr.dtype == np.float32 for arr in state.values())
    assert all(v.dtype != np.float32 or k.startswith("state.") for k, v in opt.state_dict().items())


def test_float32_update_is_computed_in_float32():
    """A float32 step equals the same formula evaluated in float32 (no float64 intermediates)."""
    rng = np.random.default_rng(0)
    p = Parameter(rng.standard_normal(1000).astype(np.float32))
    theta0 = p.data.copy()
    p.grad[...] = rng.standard_normal(1000).astype(np.float32)
    optim.SGD([p], lr=0.1).step()
    np.testing.assert_array_equal(p.data, theta0 - np.float32(0.1) * p.grad)


def test_mixed_dtype_params_each_keep_their_dtype():
    p32, p64 = Parameter(np.ones(3, np.float32)), Parameter(np.ones(3, np.float64))
    opt = optim.Adam([p32, p64])
    p32.grad[...] = 1
    p64.grad[...] = 1
    opt.step()
    assert p32.data.dtype == np.float32 and p64.data.dtype == np.float64


@configs
def test_step_allocates_no_array_memory(make):
    params = [Parameter(np.random.default_rng(0).standard_normal(100_000)) for _ in range(2)]
    opt = make(params)
    set_grads(params, np.random.default_rng(1))
    opt.step()                                   # state created lazily (if any) on the first step
    tracemalloc.start()
    try:
        opt.step()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50_000, f"a step allocated {peak} bytes (one parameter is 800000)"


# -- params, groups, zero_grad ---------------------------------------------------------------------------
class Tiny(Module):
    def __init__(self):
        super().__init__()
        self.weight = Parameter(np.ones((3, 2)))
        self.bias = Parameter(np.ones(3))
        self.bn_weight = Parameter(np.ones(3))


def test_params_as_parameters_pairs_generators_and_groups():
    m = Tiny()
    for params in (list(m.parameters()), m.parameters(), m.named_parameters(),
                   [{"params": [m.weight]}, {"params": [("bias", m.bias), m.bn_weight], "lr": 0.5}]):
        opt = optim.SGD(params, lr=0.1)
        assert sum(len(g["params"]) for g in opt.param_groups) == 3
    assert opt.param_groups[1]["lr"] == 0.5 and opt.param_groups[0]["lr"] == 0.1
    assert optim.SGD(m.named_parameters(), lr=0.1).param_names == ["weight", "bias", "bn_weight"]


def test_param_groups_helper_skips_1d_params():
    m = Tiny()
    groups = optim.param_groups(m.named_parameters(), weight_decay=0.1)
    assert [name for name, _ in groups[0]["params"]] == ["weight"] and groups[0]["weight_decay"] == 0.1
    assert [name for name, _ in groups[1]["params"]] == ["bias", "bn_weight"] and groups[1]["weight_decay"] == 0
    opt = optim.SGD(groups, lr=0.1)
    opt.step()                                    # zero grads: only weight decay acts
    np.testing.assert_allclose(m.weight.data, 1 - 0.1 * 0.1)
    np.testing.assert_array_equal(m.bias.data, 1.0)
    np.testing.assert_array_equal(m.bn_weight.data, 1.0)
    everything = optim.param_groups(m.named_parameters(), weight_decay=0.1, skip_bn_and_bias=False)
    assert len(everything) == 1 and len(everything[0]["params"]) == 3
    assert len(optim.param_groups(m.parameters(), 0.1)) == 2


def test_zero_grad_zeroes_grads_in_place():
    params = make_params()
    grads = [p.grad for p in params]
    set_grads(params, np.random.default_rng(0))
    opt = optim.SGD(params, lr=0.1)
    opt.zero_grad()
    assert all(p.grad is g and not p.grad.any() for p, g in zip(params, grads))


def test_lr_set_per_group_is_used():
    a, b = Parameter(np.zeros(1)), Parameter(np.zeros(1))
    opt = optim.SGD([{"params": [a]}, {"params": [b]}], lr=1.0)
    opt.param_groups[1]["lr"] = np.float64(0.25)     # numpy scalars are accepted
    a.grad[...] = b.grad[...] = 1.0
    opt.step()
    assert a.data[0] == -1.0 and b.data[0] == -0.25


# -- state_dict -----------------------------------------------------------------------------------------
@configs
@settings(deadline=None, max_examples=10)
@given(steps_before=st.integers(0, 4), steps_after=st.integers(1, 4), seed=st.integers(0, 1000))
def test_resume_from_state_dict_is_bit_identical(make, steps_before, steps_after, seed):
    grads = np.random.default_rng(seed)
    grad_seq = [[grads.standard_normal(s).astype(np.float32) for s in SHAPES]
                for _ in range(steps_before + steps_after)]

    def feed(params, k):
        for p, g in zip(params, grad_seq[k]):
            p.grad[...] = g

    straight = make_params(np.float32, seed)
    opt = make(straight)
    for k in range(steps_before + steps_after):
        feed(straight, k)
        opt.step()

    first = make_params(np.float32, seed)
    opt1 = make(first)
    for k in range(steps_before):
        feed(first, k)
        opt1.step()
    saved = npz_round_trip(opt1.state_dict())
    resumed = [Parameter(p.data.copy()) for p in first]
    opt2 = make(resumed)
    opt2.load_state_dict(saved)
    for k in range(steps_before, steps_before + steps_after):
        feed(resumed, k)
        opt2.step()
    for a, b in zip(straight, resumed):
        np.testing.assert_array_equal(a.data, b.data)
    assert opt2.step_count == steps_before + steps_after


def test_state_dict_keys_and_types():
    params = make_params()
    opt = optim.Adam([{"params": params[:2]}, {"params": params[2:], "weight_decay": 0.1}], lr=0.01)
    d = opt.state_dict()
    assert d["step"].shape == () and d["step"].dtype == np.int64
    np.testing.assert_array_equal(d["group.1.params"], [2, 3])
    np.testing.assert_array_equal(d["group.1.betas"], [0.9, 0.999])
    assert float(d["group.1.weight_decay"]) == 0.1
    assert d["state.3.exp_avg"].shape == SHAPES[3]
    assert all(isinstance(v, np.ndarray) for v in d.values())
    sgd = optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True).state_dict()
    assert sgd["group.0.nesterov"].dtype == np.bool_ and "state.0.momentum_buffer" in sgd


def test_state_dict_is_a_copy():
    params = make_params()
    opt = optim.SGD(params, lr=0.1, momentum=0.9)
    d = opt.state_dict()
    d["state.0.momentum_buffer"][...] = 7
    assert not opt.state[0]["momentum_buffer"].any()


def test_load_restores_hyperparameters_and_schedule_keys():
    params = make_params()
    opt = optim.SGD(params, lr=0.1, momentum=0.9)
    optim.ExponentialLR(opt, 0.5).step()
    other = optim.SGD(make_params(), lr=1.0, momentum=0.5)
    other.load_state_dict(opt.state_dict())
    assert other.param_groups[0]["lr"] == 0.05 and other.param_groups[0]["momentum"] == 0.9
    assert other.param_groups[0]["initial_lr"] == 0.1


def test_load_errors_name_key_expected_and_got():
    opt = optim.SGD(make_params(), lr=0.1, momentum=0.9)
    good = opt.state_dict()

    bad = dict(good, **{"state.1.momentum_buffer": np.zeros(5)})
    with pytest.raises(ValueError, match=r"state\.1\.momentum_buffer: expected shape \(4,\).*got \(5,\)"):
        opt.load_state_dict(bad)

    missing = {k: v for k, v in good.items() if k != "group.0.lr"}
    with pytest.raises(ValueError, match=r"missing key group\.0\.lr"):
        opt.load_state_dict(missing)

    with pytest.raises(ValueError, match=r"unexpected keys \(1\): state\.0\.exp_avg"):
        opt.load_state_dict(dict(good, **{"state.0.exp_avg": np.zeros((6, 4))}))

    with pytest.raises(ValueError, match=r"group\.0: SGD: lr must be >= 0, got -1\.0"):
        opt.load_state_dict(dict(good, **{"group.0.lr": np.array(-1.0)}))

    two_groups = optim.SGD([{"params": make_params()[:2]}, {"params": make_params()[2:]}], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"missing key group\.1\.params"):
        two_groups.load_state_dict(good)

    with pytest.raises(ValueError, match=r"step: expected a 0-d non-negative integer"):
        opt.load_state_dict(dict(good, step=np.array(1.5)))

    with pytest.raises(TypeError, match="expected a dict"):
        opt.load_state_dict([1, 2])


def test_failed_load_leaves_optimizer_unchanged():
    params = make_params()
    opt = optim.SGD(params, lr=0.1, momentum=0.9)
    set_grads(params, np.random.default_rng(0))
    opt.step()
    before = opt.state_dict()
    bad = {k: (np.full_like(v, 9) if k.startswith("state.") else v) for k, v in before.items()}
    bad["group.0.momentum"] = np.array(0.5)
    bad["state.3.momentum_buffer"] = np.zeros(7)
    with pytest.raises(ValueError):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])


def test_loading_a_float64_checkpoint_into_float32_casts():
    opt64 = optim.Adam(make_params(np.float64), lr=0.01)
    opt32 = optim.Adam(make_params(np.float32), lr=0.01)
    opt32.load_state_dict(opt64.state_dict())
    assert all(a.dtype == np.float32 for s in opt32.state for a in s.values())


# -- errors ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make, message", [
    (lambda p: optim.SGD(p, lr=-0.1), r"SGD: lr must be >= 0, got -0\.1"),
    (lambda p: optim.SGD(p, lr=0.1, nesterov=True), r"SGD: nesterov=True needs momentum > 0 and dampening = 0"),
    (lambda p: optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), r"dampening=0\.1"),
    (lambda p: optim.SGD(p, lr=0.1, momentum=-1), r"SGD: momentum must be >= 0"),
    (lambda p: optim.SGD(p, lr=0.1, weight_decay=-1), r"SGD: weight_decay must be >= 0"),
    (lambda p: optim.SGD(p, lr=float("nan")), r"SGD: lr must be a finite number"),
    (lambda p: optim.SGD(p, lr="fast"), r"SGD: lr must be a number, got 'fast'"),
    (lambda p: optim.SGD(p, lr=0.1, nesterov=1), r"SGD: nesterov must be True or False"),
    (lambda p: optim.RMSprop(p, lr=0.1, alpha=1.5), r"RMSprop: alpha must be in \[0, 1\], got 1\.5"),
    (lambda p: optim.RMSprop(p, lr=0.1, eps=-1e-8), r"RMSprop: eps must be >= 0"),
    (lambda p: optim.Adam(p, betas=(0.9, 1.0)), r"Adam: betas\[1\] must be in \[0, 1\), got 1\.0"),
    (lambda p: optim.AdamW(p, betas=(0.9,)), r"AdamW: betas must be a tuple of 2 numbers"),
    (lambda p: optim.Adam([{"params": p[:2]}, {"params": p[2:], "eps": -1.0}]),
     r"Adam: eps must be >= 0, got -1\.0 \(param group 1\)"),
    (lambda p: optim.SGD([{"params": p, "momentun": 0.9}], lr=0.1), r"unknown option\(s\) \['momentun'\]"),
    (lambda p: optim.SGD([], lr=0.1), r"SGD: got an empty parameter list"),
    (lambda p: optim.SGD([p[0], p[0]], lr=0.1), r"appears more than once"),
    (lambda p: optim.SGD([{"lr": 0.1}], lr=0.1), r"param group 0 has no 'params'"),
])
def test_bad_hyperparameters_raise_value_error(make, message):
    with pytest.raises(ValueError, match=message):
        make(make_params())


def test_bad_params_raise_type_error():
    with pytest.raises(TypeError, match=r"SGD: params must be an iterable"):
        optim.SGD(Parameter(np.ones(2)), lr=0.1)
    with pytest.raises(TypeError, match=r"expected a Parameter or a \(name, Parameter\) pair"):
        optim.SGD([np.ones(2)], lr=0.1)
    with pytest.raises(TypeError, match="mixes param-group dicts"):
        optim.SGD([{"params": make_params()[:1]}, Parameter(np.ones(2))], lr=0.1)


def test_bad_lr_set_later_is_caught_at_step():
    opt = optim.SGD(make_params(), lr=0.1)
    opt.param_groups[0]["lr"] = -1.0
    with pytest.raises(ValueError, match="SGD: lr must be >= 0, got -1.0"):
        opt.step()


def test_grad_shape_and_dtype_mismatch_at_step_names_the_parameter():
    m = Tiny()
    opt = optim.SGD(m.named_parameters(), lr=0.1)
    m.weight.grad[...] = 1.0
    m.bias.grad = np.zeros(4)
    with pytest.raises(ValueError, match=r"'bias' \(index 1\) has shape \(3,\) but its grad has shape \(4,\)"):
        opt.step()
    m.bias.grad = np.zeros(3, np.float32)
    with pytest.raises(TypeError, match=r"'bias' \(index 1\) is float64 but its grad is float32"):
        opt.step()
    assert (m.weight.data == 1).all()             # nothing was updated by the failed steps
    m.bias.grad = np.zeros(3)
    m.weight.data = np.ones((2, 2))
    with pytest.raises(ValueError, match=r"'weight' \(index 0\) changed from \(3, 2\)"):
        opt.step()


def test_momentum_switched_on_later_starts_its_buffer_like_torch():
    """A buffer created mid-run starts as the first gradient it sees (PyTorch: clone on first use)."""
    p = Parameter(np.zeros(2))
    opt = optim.SGD([p], lr=1.0, momentum=0.0)
    p.grad[...] = 1.0
    opt.step()
    opt.param_groups[0].update(momentum=0.5, dampening=0.5)
    opt.step()
    np.testing.assert_array_equal(opt.state[0]["momentum_buffer"], [1.0, 1.0])
    np.testing.assert_array_equal(p.data, [-2.0, -2.0])


def test_update_functions_work_standalone():
    """The update functions allocate their own scratch when no work arrays are given."""
    theta, g = np.ones(3), np.full(3, 0.5)
    optim.sgd_update(theta, g, lr=0.1)
    np.testing.assert_allclose(theta, 0.95)
    m, v = np.zeros(3), np.zeros(3)
    optim.adam_update(theta, g, m, v, step=1, lr=0.1, eps=0.0)
    np.testing.assert_allclose(theta, 0.85)
    sq = np.ones(3)
    optim.rmsprop_tf_update(theta, g, sq, lr=0.1, eps=0.0)
    np.testing.assert_allclose(theta, 0.85 - 0.1 * 0.5 / np.sqrt(0.9 + 0.1 * 0.25))
    optim.rmsprop_update(theta, g, np.zeros(3), lr=0.1, alpha=0.0, eps=0.0)
    np.testing.assert_allclose(theta, 0.85 - 0.1 * 0.5 / np.sqrt(0.925) - 0.1)
