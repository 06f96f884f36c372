"""The public gradient checker: it must catch wrong backward passes, pass right ones and leave modules as found."""
import numpy as np
import pytest

import numpymnv2 as mn
from numpymnv2 import functional as F
from numpymnv2.cli import main
from numpymnv2.gradcheck import GradcheckError
from numpymnv2.nn import BatchNorm2d, Dropout, Linear, PointwiseConv2d, ReLU6, Sequential


def square_forward(x, w):
    return x * x * w, (x, w)


def square_backward(dout, cache):
    x, w = cache
    return 2 * x * w * dout, x * x * dout


def square_backward_missing_2(dout, cache):
    x, w = cache
    return x * w * dout, x * x * dout                 # dL/dx lacks its factor 2


def square_backward_wrong_w(dout, cache):
    x, w = cache
    return 2 * x * w * dout, 1.01 * x * x * dout


@pytest.fixture
def xw():
    rng = np.random.default_rng(0)
    return rng.uniform(0.5, 1.5, (3, 4)), rng.uniform(-1, 1, (3, 4))


def test_passes_a_correct_backward(xw):
    result = mn.gradcheck((square_forward, square_backward), xw)
    assert result.passed and result.max_rel_error < 1e-8
    assert result.checked == 24 and [r.name for r in result.reports] == ["input0", "input1"]
    assert "PASSED: 24 coordinates" in str(result)


def test_catches_a_missing_factor_of_two(xw):
    result = mn.gradcheck((square_forward, square_backward_missing_2), xw)
    assert not result.passed
    assert result.worst.name == "input0" and result.reports[0].failures > 0 and result.reports[1].failures == 0
    assert result.max_rel_error > 0.3
    text = str(result)
    assert "FAILED" in text and f"worst relative error {result.max_rel_error:.3e} at input0[" in text
    a, n = result.worst.analytic, result.worst.numeric
    assert np.isclose(2 * a, n, rtol=1e-6)


def relu6_forward(x):
    return np.clip(x, 0, 6), x


def relu6_backward(dout, x, at_zero=0.0):
    return dout * ((x > 0) & (x < 6)) + at_zero * dout * (x == 0)


@pytest.mark.parametrize("offset", [0.0, 0.3, -0.3, 0.9, -0.9])
def test_a_coordinate_within_eps_of_a_kink_is_judged_by_the_one_sided_difference_without_it(offset):
    """Inputs within ``eps`` of ReLU6's kinks at 0 and 6 (and exactly on them, where the backward takes the slope
    of the flat side, as PyTorch does): the central difference there is half of each slope, the one-sided one
    on the far side of the kink is the derivative. A backward with the slope of the wrong side at a kink, or
    wrong away from the kinks, still fails."""
    eps = 1e-6
    x = np.array([offset * eps, 6 + offset * eps, 3.0, -2.0, 7.5])
    pair = (relu6_forward, relu6_backward)
    result = mn.gradcheck(pair, x, eps=eps)
    assert result.passed, str(result)
    assert result.at_kinks == 2 and "2 within eps of a kink" in str(result)

    def steep_near_kinks(dout, x):
        # slope 1 within eps on both sides of each kink: wrong on one side of it, and only exactly on a kink is
        # either side's slope a valid one
        return dout * ((x >= -eps) & (x <= 6 + eps))
    assert mn.gradcheck((relu6_forward, steep_near_kinks), x, eps=eps).passed == (offset == 0)
    assert not mn.gradcheck((relu6_forward, lambda d, x: 1.01 * relu6_backward(d, x)), x, eps=eps).passed


def test_report_names_the_worst_array(xw):
    result = mn.gradcheck((square_forward, square_backward_wrong_w), xw)
    assert not result.passed and result.worst.name == "input1"
    x, w = xw
    i, j = result.worst.worst_index
    assert np.isclose(result.worst.numeric, x[i, j] ** 2 * rng_R(xw)[i, j], rtol=1e-6)


def rng_R(xw):
    """The projection gradcheck draws for seed 0 (the first draw of its generator)."""
    return np.random.default_rng(0).standard_normal(xw[0].shape)


def test_raise_exception(xw):
    with pytest.raises(GradcheckError, match="gradient check failed:\n(.|\n)*FAILED") as err:
        mn.gradcheck((square_forward, square_backward_missing_2), xw, raise_exception=True)
    assert isinstance(err.value, AssertionError)
    assert mn.gradcheck((square_forward, square_backward), xw, raise_exception=True).passed


def test_catches_wrong_backward_in_a_module():
    class BrokenLinear(Linear):
        def backward(self, dout):
            dx = super().backward(dout)
            self.bias.grad *= 0.5                             # a wrong bias gradient
            return dx

    m = BrokenLinear(4, 3, rng=0, dtype="float64")
    result = mn.gradcheck(m, np.random.default_rng(1).uniform(-1, 1, (2, 4)))
    assert not result.passed and result.worst.name == "bias"
    assert {r.name: r.failures == 0 for r in result.reports} == {"input": True, "weight": True, "bias": False}


def test_float32_is_refused():
    with pytest.raises(TypeError, match="input 0 must be a float64 ndarray.*got float32"):
        mn.gradcheck((square_forward, square_backward), (np.ones(3, np.float32), np.ones(3)))
    with pytest.raises(TypeError, match="parameter weight \\(build the module with dtype='float64'\\)"):
        mn.gradcheck(Linear(3, 2), np.ones((2, 3)))
    with pytest.raises(TypeError, match="the module's input must be a float64 ndarray"):
        mn.gradcheck(Linear(3, 2, dtype="float64"), np.ones((2, 3), np.float32))


def test_non_deterministic_forward_is_refused():
    rng = np.random.default_rng(0)

    def noisy(x):
        return x + rng.standard_normal(x.shape) * 1e-3, None

    with pytest.raises(ValueError, match="not deterministic"):
        mn.gradcheck((noisy, lambda d, c: d), np.ones(3))
    with pytest.raises(ValueError, match="Dropout is not deterministic in this mode"):
        mn.gradcheck(Dropout(0.5, rng=0), np.ones((2, 3)))


def test_module_state_grads_and_generator_are_restored():
    net = Sequential(PointwiseConv2d(3, 4, rng=0, dtype="float64"), BatchNorm2d(4, dtype="float64"), ReLU6(),
                     Dropout(0.0, rng=5))
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 3, 3))
    for p in net.parameters():
        p.grad[...] = 7.0                                     # gradients a user accumulated before the check
    state = net.state_dict()
    gen_state = net[3].generator.bit_generator.state
    result = mn.gradcheck(net, x)
    assert result.passed
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, state[k], err_msg=k)      # running stats, num_batches_tracked
    assert all(np.all(p.grad == 7.0) for p in net.parameters())
    assert net[3].generator.bit_generator.state == gen_state
    assert net.training


def test_state_restored_even_when_the_check_raises():
    net = Sequential(BatchNorm2d(3, dtype="float64"), Dropout(0.5, rng=1)).train()
    state, gen_state = net.state_dict(), net[1].generator.bit_generator.state
    with pytest.raises(ValueError, match="not deterministic"):
        mn.gradcheck(net, np.random.default_rng(0).uniform(-1, 1, (2, 2, 2, 3)))
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, state[k], err_msg=k)
    assert net[1].generator.bit_generator.state == gen_state


def test_max_coords_and_params_selection():
    m = Linear(10, 8, rng=0, dtype="float64")
    x = np.random.default_rng(0).uniform(-1, 1, (6, 10))
    result = mn.gradcheck(m, x, max_coords=5)
    assert [r.checked for r in result.reports] == [5, 5, 5]
    assert [r.name for r in mn.gradcheck(m, x, params=False).reports] == ["input"]
    assert [r.name for r in mn.gradcheck(m, x, params=["bias"]).reports] == ["input", "bias"]
    with pytest.raises(ValueError, match="Linear has no parameter\\(s\\) \\['gamma'\\]"):
        mn.gradcheck(m, x, params=["gamma"])


def test_kwargs_reach_the_forward_pass():
    rng = np.random.default_rng(0)
    x, w = rng.uniform(-1, 1, (1, 5, 5, 2)), rng.uniform(-1, 1, (3, 3, 2))
    result = mn.gradcheck((F.depthwise_conv2d_forward, F.depthwise_conv2d_backward), (x, w), stride=2, padding=0)
    assert result.passed and result.max_rel_error < 1e-6


def test_wrongly_shaped_gradient_is_reported():
    with pytest.raises(ValueError, match="gradient of shape \\(3,\\) for input0, which has shape \\(4,\\)"):
        mn.gradcheck((lambda x: (2 * x, None), lambda d, c: np.ones(3)), np.ones(4))


def test_nothing_to_check_is_an_error():
    with pytest.raises(ValueError, match="nothing to check"):
        mn.gradcheck((lambda x: (2 * x, None), lambda d, c: (None,)), np.ones(4))


def test_bad_target():
    with pytest.raises(TypeError, match="target must be a Module or a \\(forward, backward\\) pair"):
        mn.gradcheck(np.sum, np.ones(3))


def test_gradients_below_the_finite_difference_resolution():
    # a BatchNorm weight of 1e-236 makes dL/dx ~ 1e-236: a central difference sees 0 there, which is not an
    # error of 1e+65 (the relative error's denominator is floored at what the difference can resolve)
    x = np.array([0.0, 0.0]).reshape(1, 1, 2, 1)

    def forward(x, gamma, beta):
        return F.batchnorm_forward(x, gamma, beta, np.zeros(1), np.ones(1), True)

    result = mn.gradcheck((forward, F.batchnorm_backward), (x, np.array([1e-236]), np.array([1.0])))
    assert result.passed and result.max_rel_error < 1e-6


def test_outputs_far_from_zero_do_not_swamp_the_difference():
    # out = x^2 + 1e4 (a large offset on every element): differencing the outputs before projecting them keeps
    # the 399 untouched elements out of the round-off (a difference of the projected sums gave 6e-6 here)
    x = np.random.default_rng(0).uniform(-1, 1, 400)
    result = mn.gradcheck((lambda x: (x * x + 1e4, x), lambda d, x: 2 * x * d), x)
    assert result.passed and result.max_rel_error < 1e-6


# ---------------------------------------------------------------------------------------------------------
# the command line

CLI_CASES = [
    ["conv2d"], ["conv2d", "--stride", "2", "--kernel", "3", "--padding", "1"], ["depthwise"],
    ["depthwise", "--stride", "2"], ["pointwise"], ["batchnorm"], ["batchnorm", "--eval"],
    ["batchnorm", "--activation", "relu6"], ["relu6"], ["relu"], ["global-avg-pool"],
    ["linear", "--shape", "3,5"], ["dropout"], ["cross-entropy", "--shape", "3,5"],
    ["cross-entropy", "--shape", "3,5", "--label-smoothing", "0.1"],
]


@pytest.mark.parametrize("args", CLI_CASES, ids=[" ".join(a) for a in CLI_CASES])
def test_cli_gradcheck_passes_for_every_functional_target(args, capsys):
    assert main(["gradcheck", *args]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"gradcheck {args[0]} (backend: fast)\n") and "PASSED" in out


def test_cli_bad_shape(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["gradcheck", "conv2d", "--shape", "2,x,3"])
    assert exc.value.code != 0
    assert "expected a shape like 2,8,8,4, got '2,x,3'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["gradcheck", "conv2d", "--shape", "2,0,3,3"])
    assert exc.value.code != 0
    assert "expected positive dimensions" in capsys.readouterr().err
    # a well-formed shape of the wrong rank for the target: an error message and exit code 2
    assert main(["gradcheck", "conv2d", "--shape", "3,5"]) == 2
    assert "--shape must be N,H,W,C for this target, got (3, 5)" in capsys.readouterr().err
    assert main(["gradcheck", "linear"]) == 2
    assert "--shape must be N,D for linear" in capsys.readouterr().err


def test_cli_failed_check_exits_1_with_the_table_on_stdout_and_one_line_on_stderr(capsys):
    # a step of 1 is far too large for BatchNorm's curvature: the differences miss the analytic gradient
    assert main(["gradcheck", "batchnorm", "--max-coords", "2", "--eps", "1"]) == 1
    captured = capsys.readouterr()
    assert "FAILED" in captured.out and "worst relative error" in captured.out
    assert captured.err.startswith("numpymnv2 gradcheck: batchnorm: 2 of 6 coordinates disagree")
    assert captured.err.count("\n") == 1


@pytest.mark.parametrize("argv, says", [
    (["conv2d", "--shape", "100000,1000,1000,3"], "gradcheck conv2d on an input of shape (100000, 1000, 1000, 3) "
                                                  "needs about"),
    (["mobilenetv2", "--shape", "100000,1,1,1", "--resolution", "224"], "on a batch of 100000 images of 224x224"),
])
def test_cli_refuses_a_check_too_large_for_the_memory_before_any_array_exists(argv, says, capsys):
    assert main(["gradcheck", *argv]) == 2
    err = capsys.readouterr().err
    assert says in err and "--shape" in err and err.count("\n") == 1


def test_cli_unknown_target(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["gradcheck", "softmax"])
    assert exc.value.code != 0 and "invalid choice: 'softmax'" in capsys.readouterr().err


def test_roundoff_is_reported():
    # u max|out R| / eps: the accuracy a central difference can deliver, so callers can tell an unresolvable
    # gradient from a wrong one
    x = np.random.default_rng(1).uniform(-1, 1, (2, 3))
    result = mn.gradcheck((lambda x: (x * x + 0.5, x), lambda d, x: 2 * x * d), x)
    R = np.random.default_rng(0).standard_normal(x.shape)
    assert np.isclose(result.roundoff, np.finfo(float).eps * np.abs((x * x + 0.5) * R).max() / 1e-6)


def test_unresolvable_gradient_is_judged_against_the_roundoff():
    # dL/dgamma = x_hat R with x = 1e-6 next to a bias of 0.1: a millionth of the output, resolved by a central
    # difference only to ~4e-6 relative; the helper the op tests use measures it against roundoff / 1e-6 instead
    from strategies import resolvable_rel_error

    def forward(x, gamma, beta):
        return F.batchnorm_act_forward(x, gamma, beta, np.zeros(1), np.ones(1), False, activation="relu")

    x = np.full((1, 1, 1, 1), 1e-6)
    result = mn.gradcheck((forward, F.batchnorm_act_backward), (x, np.ones(1), np.array([0.1])))
    assert result.passed
    assert resolvable_rel_error(result) < 1e-6 <= result.max_rel_error


def test_bad_step_and_coordinate_count(xw):
    with pytest.raises(ValueError, match="eps must be a finite number > 0, got 0"):
        mn.gradcheck((square_forward, square_backward), xw, eps=0)
    with pytest.raises(ValueError, match="max_coords must be at least 1"):
        mn.gradcheck((square_forward, square_backward), xw, max_coords=0)     # would check nothing and pass


@pytest.mark.parametrize("name, value, error", [("atol", float("nan"), ValueError), ("rtol", float("nan"), ValueError),
                                                ("atol", -1e-5, ValueError), ("rtol", float("inf"), ValueError),
                                                ("eps", float("nan"), ValueError), ("eps", float("inf"), ValueError),
                                                ("atol", "1e-5", TypeError), ("eps", True, TypeError)])
def test_tolerances_and_step_are_validated(xw, name, value, error):
    with pytest.raises(error, match=name):
        mn.gradcheck((square_forward, square_backward), xw, **{name: value})


def test_a_nan_gradient_fails_whatever_the_tolerance(xw):
    def nan_backward(dout, cache):
        x, w = cache
        return np.full_like(x, np.nan), x * x * dout

    result = mn.gradcheck((square_forward, nan_backward), xw, atol=1e3, rtol=1e3)
    assert not result.passed and "FAILED" in str(result)


def test_params_must_be_a_flag_or_names():
    from numpymnv2 import nn
    module = nn.Linear(3, 2, rng=np.random.default_rng(0), dtype="float64")
    x = np.random.default_rng(1).standard_normal((2, 3))
    for bad in (4, "weight", 2.5):
        with pytest.raises(TypeError, match="params must be True, False or a sequence of parameter names"):
            mn.gradcheck(module, x, params=bad)
    assert mn.gradcheck(module, x, params=["weight"]).passed


@pytest.mark.parametrize("argv", [["--rtol", "nan"], ["--atol", "nan"], ["--atol", "-1"], ["--eps", "0"],
                                  ["--out-channels", "0"], ["--kernel", "0"], ["--stride", "0"], ["--params", "0"],
                                  ["--p", "1"], ["--resolution", "16"], ["--width", "nan"]])
def test_cli_rejects_impossible_settings_before_checking(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["gradcheck", "conv2d", *argv])
    assert exc.value.code == 2 and argv[0] in capsys.readouterr().err


@pytest.mark.parametrize("target", ["depthwise", "batchnorm", "inverted-residual"])
@pytest.mark.parametrize("backend", ["reference", "fast"])
def test_cli_checks_the_chosen_backend_and_says_so(target, backend, capsys, monkeypatch):
    from numpymnv2 import ops
    ran = []
    real_on = ops.Op.on

    def spying_on(self, name):
        ran.append(name)
        return real_on(self, name)

    monkeypatch.setattr(ops.Op, "on", spying_on)
    real_active = ops.Op.active

    def spying_active(self):
        ran.append(mn.get_backend())
        return real_active(self)

    monkeypatch.setattr(ops.Op, "active", spying_active)
    assert main(["gradcheck", target, "--shape", "2,5,5,4", "--out-channels", "4", "--max-coords", "2",
                 "--backend", backend]) == 0
    assert capsys.readouterr().out.startswith(f"gradcheck {target} (backend: {backend})\n")
    assert ran and set(ran) == {backend}
