"""The fused SGD kernel equals the NumPy update bit for bit, on both kernel copies, for every option."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from kernel_settings import COPIES, NO_JIT, kernel_copy

import numpymnv2 as mn
from numpymnv2.kernels import optim as K
from numpymnv2.optim.sgd import SGD, sgd_update

MAX_SIZE = 40 if NO_JIT else 3 * K.BLOCK


@st.composite
def sgd_cases(draw):
    momentum = draw(st.sampled_from([0.0, 0.9, 0.5]))
    nesterov = momentum > 0 and draw(st.booleans())
    return dict(lr=draw(st.sampled_from([0.1, 0.01, 0.0])), momentum=momentum,
                dampening=0.0 if nesterov else draw(st.sampled_from([0.0, 0.1])), nesterov=nesterov,
                weight_decay=draw(st.sampled_from([0.0, 1e-4, 0.05])), first_step=draw(st.booleans()))


@given(sgd_cases(), st.integers(1, MAX_SIZE), st.sampled_from([np.float32, np.float64]), st.sampled_from(COPIES),
       st.integers(0, 2**32 - 1))
def test_sgd_kernel_equals_the_numpy_update(options, size, dtype, copy, seed):
    rng = np.random.default_rng(seed)
    param, grad, buf = (rng.standard_normal(size).astype(dtype) for _ in range(3))
    want_param, want_buf = param.copy(), buf.copy()
    sgd_update(want_param, grad, want_buf, **options)
    with kernel_copy(copy):
        K.sgd_update(param, grad, buf, **options)
    assert param.dtype == buf.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(param, want_param)
    np.testing.assert_array_equal(buf, want_buf)


def test_sgd_kernel_refuses_what_it_cannot_update_in_place():
    p = np.zeros((4, 6), np.float32)
    assert K.accepts(p, np.zeros_like(p), None)
    for grad, buf in [(np.zeros((6, 4), np.float32).T, None), (np.zeros((4, 6)), None),
                      (np.zeros_like(p), np.zeros((4, 6)))]:
        assert not K.accepts(p, grad, buf)
    with pytest.raises(ValueError, match="C-contiguous"):
        K.sgd_update(p, np.zeros((6, 4), np.float32).T, lr=0.1)


@pytest.mark.parametrize("options", [dict(momentum=0.9), dict(momentum=0.9, nesterov=True, weight_decay=1e-3),
                                     dict(momentum=0.5, dampening=0.2, weight_decay=1e-2), dict()])
def test_sgd_optimizer_is_bit_identical_on_both_backends(options):
    # three steps of a model's parameters, one of them non-contiguous (that one takes the NumPy update)
    results = []
    for backend in ("fast", "reference"):
        model = mn.MobileNetV2(num_classes=4, width_mult=0.35, seed=1)
        params = list(model.parameters())
        params[0].data = np.asfortranarray(params[0].data)
        opt = SGD(params, lr=0.05, **options)
        grads = np.random.default_rng(2)
        with mn.use_backend(backend):
            for _ in range(3):
                for p in params:
                    p.grad[...] = grads.standard_normal(p.grad.shape)
                opt.step()
        results.append([p.data.copy() for p in params])
    for fast, ref in zip(*results):
        np.testing.assert_array_equal(fast, ref)


@given(sgd_cases(), st.lists(st.integers(0, MAX_SIZE), min_size=1, max_size=6),
       st.sampled_from([np.float32, np.float64]), st.sampled_from(COPIES), st.integers(0, 2**32 - 1))
def test_sgd_kernel_over_many_arrays_equals_the_numpy_update_of_each(options, sizes, dtype, copy, seed):
    """One launch over arrays of any sizes (empty ones, several blocks, remainders), each with its own first-step
    flag: each array as if updated alone."""
    rng = np.random.default_rng(seed)
    first = [bool(f) for f in rng.integers(0, 2, len(sizes))]
    del options["first_step"]
    arrays = [[rng.standard_normal(n).astype(dtype) for _ in range(3)] for n in sizes]
    want = [(p.copy(), b.copy()) for p, _, b in arrays]
    for (p, b), (_, g, _), f in zip(want, arrays, first):
        sgd_update(p, g, b, first_step=f, **options)
    with kernel_copy(copy):
        K.sgd_update_many([a[0] for a in arrays], [a[1] for a in arrays], [a[2] for a in arrays], first,
                          keep=K.ManyArrays(), **options)
    for (p, _, b), (want_p, want_b) in zip(arrays, want):
        np.testing.assert_array_equal(p, want_p)
        if options["momentum"] != 0:
            np.testing.assert_array_equal(b, want_b)


def test_sgd_kernel_over_many_arrays_sees_a_replaced_array_and_new_sizes():
    """The Numba lists are kept between steps: a gradient array replaced (or a parameter of another size) since
    the last step must be the one read."""
    keep = K.ManyArrays()
    params = [np.zeros(3, np.float32), np.zeros(5, np.float32)]
    grads = [np.ones(3, np.float32), np.ones(5, np.float32)]
    K.sgd_update_many(params, grads, None, [True, True], lr=1.0, keep=keep)
    grads[1] = np.full(5, 2, np.float32)
    K.sgd_update_many(params, grads, None, [False, False], lr=1.0, keep=keep)
    assert params[0].tolist() == [-2.0] * 3 and params[1].tolist() == [-3.0] * 5
    params.append(np.zeros(K.BLOCK + 1, np.float32))
    grads.append(np.ones(K.BLOCK + 1, np.float32))
    K.sgd_update_many(params, grads, None, [False] * 3, lr=1.0, keep=keep)
    assert params[1].tolist() == [-5.0] * 5 and np.all(params[2] == -1)


def test_sgd_optimizer_groups_with_their_own_hyperparameters_and_dtypes():
    rng = np.random.default_rng(0)
    shapes = [(4, 3), (7,), (2, 2, 2)]
    results = []
    for backend in ("fast", "reference"):
        params = [mn.nn.Parameter(rng.standard_normal(s).astype(dt)) for s in shapes
                  for dt in (np.float32, np.float64)]
        opt = SGD([{"params": params[:3], "lr": 0.1, "momentum": 0.9},
                   {"params": params[3:], "lr": 0.01, "nesterov": True, "momentum": 0.5}], lr=0.5)
        with mn.use_backend(backend):
            for step in range(3):
                for k, p in enumerate(params):
                    p.grad[...] = np.sin(np.arange(p.grad.size) + 10 * step + k).reshape(p.shape)
                opt.step()
        results.append([p.data.copy() for p in params])
        rng = np.random.default_rng(0)
    for fast, ref in zip(*results):
        assert fast.dtype == ref.dtype
        np.testing.assert_array_equal(fast, ref)


@pytest.mark.parametrize("tie", ["same array", "transposed view"])
def test_tied_parameters_are_updated_one_after_the_other_on_both_backends(tie):
    """Two Parameters sharing one array (tied weights): the NumPy update runs them in turn, the second seeing the
    first's result; one launch over both would update the array twice at once, so the fast path must notice.
    A transposed view is not C-contiguous, so the NumPy update takes it: still after the first."""
    results = []
    for backend in ("fast", "reference"):
        shared = np.linspace(-1, 1, 3 * K.BLOCK, dtype=np.float32).reshape(3, K.BLOCK)
        a, b = mn.nn.Parameter(shared), mn.nn.Parameter(np.zeros(3, np.float32))
        b.data = a.data if tie == "same array" else a.data.T
        c = mn.nn.Parameter(np.ones(5, np.float32))
        opt = SGD([a, b, c], lr=0.1, momentum=0.9, weight_decay=0.01)
        with mn.use_backend(backend), kernel_copy("parallel"):
            for step in range(3):
                a.grad = np.full(a.shape, 0.5 + step, np.float32)
                b.grad = np.full(b.shape, -1.5, np.float32)
                c.grad[...] = 2.0
                opt.step()
        results.append((a.data.copy(), c.data.copy()))
    for fast, ref in zip(*results):
        np.testing.assert_array_equal(fast, ref)


def test_overlap_check_of_the_many_array_update():
    flat = np.zeros(20, np.float32)
    p1, p2 = flat[:10], flat[10:]                          # adjacent views: no overlap
    g1, g2 = np.ones(10, np.float32), np.ones(10, np.float32)
    assert not K._overlapping([p1, p2], [g1, g2], [np.zeros(10, np.float32), np.zeros(10, np.float32)])
    assert K._overlapping([flat[:10], flat[9:19]], [g1, g2], [g1.copy(), g2.copy()])
    assert K._overlapping([p1, p2], [g1, p1], [g1.copy(), g2.copy()])            # a gradient is another's value
    assert K._overlapping([p1, p2], [g1, g2], [p2, np.zeros(10, np.float32)])    # a buffer is another's value
    assert not K._overlapping([p1, p2], [p1, g2], [g1.copy(), g2.copy()])        # its own value as its gradient
    assert not K._overlapping([p1, p2], [g1, g1], [p1.copy(), p2.copy()])        # one gradient read twice
