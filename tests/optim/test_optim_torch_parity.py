"""Each optimizer against torch.optim with the same hyperparameters, over several steps.

float64: rtol 1e-12 (the two differ only by rounding order, e.g. torch's fused multiply-adds);
float32: rtol 1e-5, atol 1e-6 (a few float32 ulps after the steps).
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numpymnv2 import optim
from numpymnv2.nn.module import Parameter

torch = pytest.importorskip("torch")

TOL = {np.float64: dict(rtol=1e-12, atol=1e-13), np.float32: dict(rtol=1e-5, atol=1e-6)}
SHAPES = [(6, 4), (4,), (3, 3, 5), (1,)]


def _run_both(ours, theirs, dtype, seed, steps=6, lr_changes=None, group_overrides=None):
    """Step both optimizers on identical params/grads; compare params (and lr changes) after every step."""
    rng = np.random.default_rng(seed)
    params = [Parameter(rng.standard_normal(s).astype(dtype)) for s in SHAPES]
    tparams = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    if group_overrides is None:
        opt, topt = ours(params), theirs(tparams)
    else:
        opt = ours([{"params": params[:2]}, {"params": params[2:], **group_overrides}])
        topt = theirs([{"params": tparams[:2]}, {"params": tparams[2:], **group_overrides}])
    for k in range(steps):
        if lr_changes and k in lr_changes:
            for g, tg in zip(opt.param_groups, topt.param_groups):
                g["lr"] = tg["lr"] = lr_changes[k]
        for p, t in zip(params, tparams):
            grad = rng.standard_normal(p.shape).astype(dtype)
            p.grad[...] = grad
            t.grad = torch.from_numpy(grad.copy())
        opt.step()
        topt.step()
        for p, t in zip(params, tparams):
            assert p.data.dtype == dtype
            np.testing.assert_allclose(p.data, t.detach().numpy(), **TOL[dtype], err_msg=f"step {k + 1}")


dtypes = pytest.mark.parametrize("dtype", [np.float64, np.float32])
hyper = settings(deadline=None)


@dtypes
@hyper
@given(seed=st.integers(0, 2**31), lr=st.floats(1e-3, 0.5), momentum=st.sampled_from([0.0, 0.5, 0.9]),
       dampening=st.sampled_from([0.0, 0.3]), nesterov=st.booleans(), wd=st.sampled_from([0.0, 1e-2, 0.1]))
def test_sgd_matches_torch(dtype, seed, lr, momentum, dampening, nesterov, wd):
    if nesterov and (momentum == 0 or dampening != 0):
        nesterov = False
    kw = dict(lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov, weight_decay=wd)
    _run_both(lambda p: optim.SGD(p, **kw), lambda p: torch.optim.SGD(p, **kw, foreach=False), dtype, seed)


@dtypes
@hyper
@given(seed=st.integers(0, 2**31), lr=st.floats(1e-4, 0.05), alpha=st.sampled_from([0.9, 0.99]),
       momentum=st.sampled_from([0.0, 0.9]), centered=st.booleans(), wd=st.sampled_from([0.0, 1e-2]),
       eps=st.sampled_from([1e-8, 1e-3]))
def test_rmsprop_torch_style_matches_torch(dtype, seed, lr, alpha, momentum, centered, wd, eps):
    kw = dict(lr=lr, alpha=alpha, eps=eps, momentum=momentum, centered=centered, weight_decay=wd)
    _run_both(lambda p: optim.RMSprop(p, **kw, eps_inside_sqrt=False),
              lambda p: torch.optim.RMSprop(p, **kw, foreach=False), dtype, seed)


@dtypes
@hyper
@given(seed=st.integers(0, 2**31), lr=st.floats(1e-4, 0.05), beta1=st.sampled_from([0.0, 0.9]),
       beta2=st.sampled_from([0.99, 0.999]), wd=st.sampled_from([0.0, 1e-2]), decoupled=st.booleans())
def test_adam_and_adamw_match_torch(dtype, seed, lr, beta1, beta2, wd, decoupled):
    kw = dict(lr=lr, betas=(beta1, beta2), eps=1e-8, weight_decay=wd)
    ours, theirs = (optim.AdamW, torch.optim.AdamW) if decoupled else (optim.Adam, torch.optim.Adam)
    _run_both(lambda p: ours(p, **kw), lambda p: theirs(p, **kw, foreach=False), dtype, seed)


@dtypes
@pytest.mark.parametrize("name", ["sgd", "rmsprop", "adam", "adamw"])
def test_defaults_match_torch(dtype, name):
    ours, theirs = {
        "sgd": (lambda p: optim.SGD(p, lr=0.1), lambda p: torch.optim.SGD(p, lr=0.1, foreach=False)),
        # torch's defaults for RMSprop are alpha 0.99, momentum 0, eps 1e-8
        "rmsprop": (lambda p: optim.RMSprop(p, lr=0.01, alpha=0.99, momentum=0.0, eps_inside_sqrt=False),
                    lambda p: torch.optim.RMSprop(p, lr=0.01, foreach=False)),
        "adam": (optim.Adam, lambda p: torch.optim.Adam(p, foreach=False)),
        "adamw": (optim.AdamW, lambda p: torch.optim.AdamW(p, foreach=False)),
    }[name]
    _run_both(ours, theirs, dtype, seed=3)


@dtypes
@pytest.mark.parametrize("name", ["sgd", "rmsprop", "adam"])
def test_lr_changed_between_steps_and_group_overrides_match_torch(dtype, name):
    """A schedule changes lr mid-run (torch's RMSprop applies the new lr to the whole buffer)."""
    ours, theirs, overrides = {
        "sgd": (lambda p: optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
                lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3, foreach=False),
                {"weight_decay": 0.0, "momentum": 0.5}),
        "rmsprop": (lambda p: optim.RMSprop(p, lr=0.01, momentum=0.9, eps_inside_sqrt=False, weight_decay=1e-3),
                    lambda p: torch.optim.RMSprop(p, lr=0.01, alpha=0.9, momentum=0.9, weight_decay=1e-3,
                                                  foreach=False),
                    {"weight_decay": 0.0, "centered": True}),
        "adam": (lambda p: optim.Adam(p, lr=0.01, weight_decay=1e-3),
                 lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=1e-3, foreach=False),
                 {"weight_decay": 0.0, "betas": (0.8, 0.99)}),
    }[name]
    _run_both(ours, theirs, dtype, seed=5, steps=8, lr_changes={3: 0.003, 6: 0.02}, group_overrides=overrides)
