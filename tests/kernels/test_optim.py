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
