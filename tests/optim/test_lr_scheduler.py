"""Learning-rate schedules: closed forms, torch's sequences, resume from state_dict, errors."""
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import npz_round_trip

from numpymnv2 import optim
from numpymnv2.nn.module import Parameter

BASE_LRS = [0.1, 0.045]


def make_opt(lrs=BASE_LRS):
    return optim.SGD([{"params": [Parameter(np.zeros(2))], "lr": lr} for lr in lrs], lr=lrs[0], momentum=0.9)


def lrs_over(sched, steps):
    """[lr of every group at t = 0, 1, ..., steps], as the optimizer sees them."""
    out = [[g["lr"] for g in sched.optimizer.param_groups]]
    for _ in range(steps):
        sched.step()
        out.append([g["lr"] for g in sched.optimizer.param_groups])
        assert sched.get_last_lr() == out[-1]
    return np.array(out)


# -- closed forms ------------------------------------------------------------------------------------------
def test_paper_exponential_decay_per_epoch():
    opt = make_opt([0.045])
    lrs = lrs_over(optim.ExponentialLR(opt, gamma=0.98), 10)[:, 0]
    np.testing.assert_allclose(lrs, 0.045 * 0.98 ** np.arange(11), rtol=1e-15)


def test_step_lr_closed_form():
    lrs = lrs_over(optim.StepLR(make_opt(), step_size=3, gamma=0.5), 9)
    np.testing.assert_allclose(lrs, np.outer(0.5 ** (np.arange(10) // 3), BASE_LRS), rtol=1e-15)


def test_cosine_closed_form_endpoints():
    lrs = lrs_over(optim.CosineAnnealingLR(make_opt(), T_max=8, eta_min=0.001), 8)
    np.testing.assert_allclose(lrs[0], BASE_LRS)
    np.testing.assert_allclose(lrs[4], [(lr + 0.001) / 2 for lr in BASE_LRS], rtol=1e-14)
    np.testing.assert_allclose(lrs[8], [0.001, 0.001], rtol=1e-14)
    assert (np.diff(lrs, axis=0) <= 0).all()


def test_linear_warmup_then_holds():
    lrs = lrs_over(optim.LinearWarmup(make_opt([1.0]), warmup_steps=4, start_factor=0.2), 6)[:, 0]
    np.testing.assert_allclose(lrs, [0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0], rtol=1e-15)


def test_with_warmup_then_cosine():
    sched = optim.with_warmup(optim.CosineAnnealingLR(make_opt([1.0]), T_max=4), warmup_steps=2, start_factor=0.5)
    lrs = lrs_over(sched, 6)[:, 0]
    expected = [0.5, 0.75] + [(1 + math.cos(math.pi * t / 4)) / 2 for t in range(5)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-15, atol=1e-16)


def test_sequential_three_stages_and_lr_at():
    opt = make_opt([1.0])
    sched = optim.SequentialLR(opt, [optim.LinearWarmup(opt, 2, 0.0), optim.ExponentialLR(opt, 0.5),
                                     optim.StepLR(opt, 1, 0.1)], milestones=[2, 4])
    lrs = lrs_over(sched, 6)[:, 0]
    np.testing.assert_allclose(lrs, [0.0, 0.5, 1.0, 0.5, 1.0, 0.1, 0.01], rtol=1e-15)
    assert sched.lr_at(3) == [0.5] and sched.last_epoch == 6


def test_schedule_drives_the_optimizer():
    p = Parameter(np.zeros(1))
    opt = optim.SGD([p], lr=1.0)
    sched = optim.StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(3):
        p.grad[...] = 1.0
        opt.step()
        sched.step()
    np.testing.assert_array_equal(p.data, [-(1 + 0.5 + 0.25)])


# -- torch parity ------------------------------------------------------------------------------------------
def torch_lrs(make_sched, steps, lrs=BASE_LRS):
    torch = pytest.importorskip("torch")
    params = [torch.zeros(2, requires_grad=True) for _ in lrs]
    opt = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(params, lrs)], lr=lrs[0], momentum=0.9)
    sched = make_sched(torch.optim.lr_scheduler, opt)
    out = [[g["lr"] for g in opt.param_groups]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")         # torch warns when no optimizer.step() came first
        for _ in range(steps):
            opt.step()
            sched.step()
            out.append([g["lr"] for g in opt.param_groups])
    return np.array(out)


PAIRS = {
    "step": (lambda o: optim.StepLR(o, 3, 0.5), lambda m, o: m.StepLR(o, 3, 0.5)),
    "exponential": (lambda o: optim.ExponentialLR(o, 0.98), lambda m, o: m.ExponentialLR(o, 0.98)),
    "cosine": (lambda o: optim.CosineAnnealingLR(o, 10), lambda m, o: m.CosineAnnealingLR(o, 10)),
    "cosine-eta-min-past-T_max": (lambda o: optim.CosineAnnealingLR(o, 7, eta_min=0.01),
                                  lambda m, o: m.CosineAnnealingLR(o, 7, eta_min=0.01)),
    "warmup": (lambda o: optim.LinearWarmup(o, 5, 0.1),
               lambda m, o: m.LinearLR(o, start_factor=0.1, end_factor=1.0, total_iters=5)),
    "warmup-cosine": (
        lambda o: optim.with_warmup(optim.CosineAnnealingLR(o, 15), 5, 0.25),
        lambda m, o: m.SequentialLR(o, [m.LinearLR(o, 0.25, 1.0, 5), m.CosineAnnealingLR(o, 15)], [5])),
    "warmup-exponential-step": (
        lambda o: optim.SequentialLR(o, [optim.LinearWarmup(o, 3, 0.5), optim.ExponentialLR(o, 0.9),
                                         optim.StepLR(o, 2, 0.1)], [3, 8]),
        lambda m, o: m.SequentialLR(o, [m.LinearLR(o, 0.5, 1.0, 3), m.ExponentialLR(o, 0.9),
                                        m.StepLR(o, 2, 0.1)], [3, 8])),
}


@pytest.mark.parametrize("ours, theirs", PAIRS.values(), ids=PAIRS.keys())
def test_matches_torch_lr_sequence(ours, theirs):
    steps = 25
    expected = torch_lrs(theirs, steps)
    np.testing.assert_allclose(lrs_over(ours(make_opt()), steps), expected, rtol=1e-12, atol=1e-15)


# -- state_dict -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [p[0] for p in PAIRS.values()], ids=PAIRS.keys())
@settings(deadline=None, max_examples=10)
@given(stop=st.integers(0, 12))
def test_resume_gives_identical_lrs(make, stop):
    straight = lrs_over(make(make_opt()), 20)
    first = make(make_opt())
    for _ in range(stop):
        first.step()
    opt_state = npz_round_trip(first.optimizer.state_dict())
    sched_state = npz_round_trip(first.state_dict())
    opt2 = make_opt([1.0, 1.0])                  # different lrs: everything comes from the checkpoint
    opt2.load_state_dict(opt_state)
    resumed = make(opt2)
    resumed.load_state_dict(sched_state)
    assert resumed.get_last_lr() == list(straight[stop])
    np.testing.assert_array_equal(lrs_over(resumed, 20 - stop), straight[stop:])


def test_load_restores_hyperparameters_and_sets_lr():
    src = optim.CosineAnnealingLR(make_opt(), T_max=10, eta_min=0.001)
    for _ in range(4):
        src.step()
    dst = optim.CosineAnnealingLR(make_opt(), T_max=99)
    dst.load_state_dict(src.state_dict())
    assert (dst.T_max, dst.eta_min, dst.last_epoch) == (10, 0.001, 4)
    assert [g["lr"] for g in dst.optimizer.param_groups] == src.get_last_lr()


def test_state_dict_keys():
    opt = make_opt()
    d = optim.with_warmup(optim.StepLR(opt, 2), 3, 0.1).state_dict()
    assert d["last_epoch"].dtype == np.int64 and d["base_lrs"].shape == (2,)
    assert {"milestones", "schedulers.0.warmup_steps", "schedulers.1.step_size", "schedulers.1.gamma"} <= set(d)


def test_load_errors():
    sched = optim.StepLR(make_opt(), 2)
    good = sched.state_dict()
    with pytest.raises(ValueError, match=r"missing key gamma"):
        sched.load_state_dict({k: v for k, v in good.items() if k != "gamma"})
    with pytest.raises(ValueError, match=r"base_lrs: expected a number array of shape \(2,\), got dtype float64 "
                                         r"shape \(3,\)"):
        sched.load_state_dict(dict(good, base_lrs=np.ones(3)))
    with pytest.raises(ValueError, match=r"unexpected keys: T_max"):
        sched.load_state_dict(dict(good, T_max=np.array(3)))
    with pytest.raises(ValueError, match=r"StepLR: step_size must be a positive integer, got 0"):
        sched.load_state_dict(dict(good, step_size=np.array(0)))
    with pytest.raises(ValueError, match=r"step_size: expected an integer"):
        sched.load_state_dict(dict(good, step_size=np.array(2.5)))
    assert sched.step_size == 2
    seq = optim.with_warmup(optim.StepLR(make_opt(), 2), 3, 0.1)
    with pytest.raises(ValueError, match=r"schedulers\.0\.start_factor: expected a number"):
        seq.load_state_dict(dict(seq.state_dict(), **{"schedulers.0.start_factor": np.ones(2)}))


# -- errors ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make, message", [
    (lambda o: optim.StepLR(o, 0), r"StepLR: step_size must be a positive integer, got 0"),
    (lambda o: optim.StepLR(o, 2.5), r"StepLR: step_size must be a positive integer, got 2\.5"),
    (lambda o: optim.StepLR(o, 2, gamma=-0.1), r"StepLR: gamma must be > 0, got -0\.1"),
    (lambda o: optim.ExponentialLR(o, 0.0), r"ExponentialLR: gamma must be > 0, got 0\.0"),
    (lambda o: optim.CosineAnnealingLR(o, 0), r"CosineAnnealingLR: T_max must be a positive integer"),
    (lambda o: optim.CosineAnnealingLR(o, 5, eta_min=-1), r"CosineAnnealingLR: eta_min must be >= 0"),
    (lambda o: optim.LinearWarmup(o, 0, 0.1), r"LinearWarmup: warmup_steps must be a positive integer"),
    (lambda o: optim.LinearWarmup(o, 5, 1.5), r"LinearWarmup: start_factor must be in \[0, 1\], got 1\.5"),
    (lambda o: optim.SequentialLR(o, [optim.StepLR(o, 1), optim.StepLR(o, 1)], []),
     r"SequentialLR: expected 1 milestones for 2 schedules, got 0"),
    (lambda o: optim.SequentialLR(o, [optim.StepLR(o, 1), optim.StepLR(o, 1), optim.StepLR(o, 1)], [4, 2]),
     r"SequentialLR: milestones must be increasing positive integers, got \[4, 2\]"),
    (lambda o: optim.SequentialLR(o, [optim.StepLR(make_opt(), 1)], []),
     r"SequentialLR: schedulers\[0\] \(StepLR\) is attached to another optimizer"),
])
def test_bad_hyperparameters(make, message):
    with pytest.raises(ValueError, match=message):
        make(make_opt())


def test_not_an_optimizer():
    with pytest.raises(TypeError, match="StepLR: expected a numpymnv2 optimizer, got list"):
        optim.StepLR([], 1)
