"""The whole MobileNetV2 on the fast backend agrees with the reference backend: outputs, every gradient, the
input gradient and the BatchNorm running statistics."""
import numpy as np
import pytest
from kernel_settings import NO_JIT
from hypothesis import given, settings
from hypothesis import strategies as st

import numpymnv2 as mn
from numpymnv2 import ops

models = pytest.importorskip("numpymnv2.models", reason="numpymnv2.models (MobileNetV2) is not available")


def _run(backend, build, x, labels, training):
    model = build()
    model.train() if training else model.eval()
    with mn.use_backend(backend):
        logits = model(x)
        loss, dlogits = mn.softmax_cross_entropy(logits, labels)
        dx = model.backward(dlogits)
    grads = {name: p.grad.copy() for name, p in model.named_parameters()}
    return logits, dx, grads, model.state_dict()


def _compare(build, x, labels, training, rtol):
    ref = _run("reference", build, x, labels, training)
    fast = _run("fast", build, x, labels, training)
    # a gradient that is zero in exact arithmetic (the bias of a BatchNorm followed by another one in training
    # mode) is rounding noise in both backends: compare it against the network's gradient scale instead
    floor = 1e-3 * max(float(np.abs(g).max(initial=0)) for g in ref[2].values())

    def close(a, b, what):
        assert a.dtype == b.dtype, what
        scale = max(floor if what.startswith("grad") else 1e-30, float(np.abs(b).max(initial=0)))
        err = float(np.abs(a - b).max(initial=0)) / scale
        assert err <= rtol, f"{what}: relative error {err:.3g} > {rtol:g}"
    close(fast[0], ref[0], "logits")
    close(fast[1], ref[1], "dL/dx")
    assert fast[2].keys() == ref[2].keys()
    for name in ref[2]:
        close(fast[2][name], ref[2][name], f"grad of {name}")
    state_floor = 1e-3 * max(float(np.abs(v).max(initial=0)) for v in ref[3].values() if v.dtype.kind == "f")
    for name, value in ref[3].items():
        if value.dtype.kind == "f":
            # a running mean of a zero-mean input (after a training-mode BatchNorm) is rounding noise too
            floor = state_floor if name.endswith("running_mean") else 1e-30
            err = float(np.abs(fast[3][name] - value).max(initial=0)) / max(floor, float(np.abs(value).max()))
            assert err <= rtol, f"{name}: relative error {err:.3g} > {rtol:g}"
        else:
            np.testing.assert_array_equal(fast[3][name], value)


def test_fast_backend_uses_kernels():
    from numpymnv2 import kernels
    assert ops.DEPTHWISE_CONV2D.on("fast").forward is kernels.depthwise.depthwise_conv2d_forward
    assert ops.BATCHNORM_ACT.on("fast").backward is kernels.fused.batchnorm_act_backward
    with mn.use_backend("fast"):
        assert ops.BATCHNORM_ACT.active() is ops.BATCHNORM_ACT.fast
    with mn.use_backend("reference"):
        assert ops.BATCHNORM_ACT.active() is ops.BATCHNORM_ACT.reference


@pytest.mark.skipif(NO_JIT, reason="the whole network in pure-Python kernels is slow; the ops are covered above")
@settings(max_examples=4)
@given(st.sampled_from([0.35, 0.5]), st.sampled_from([1, 2]), st.booleans(), st.integers(0, 2**31 - 1))
def test_network_float64_matches_reference(width_mult, stem_stride, training, seed):
    rng = np.random.default_rng(seed)
    # the last blocks must see more than 2 values per channel: at 1x1 with a batch of 2, training-mode
    # BatchNorm outputs +-1 whatever its input and its gradient is rounding noise
    N, side = 2, 32 * stem_stride
    x = rng.standard_normal((N, side, side, 3))
    labels = rng.integers(0, 10, N)
    def build():
        return models.MobileNetV2(num_classes=10, width_mult=width_mult, dropout=0.0, stem_stride=stem_stride,
                                  seed=seed, dtype="float64")
    _compare(build, x, labels, training, rtol=1e-9)


@pytest.mark.skipif(NO_JIT, reason="the whole network in pure-Python kernels is slow; the ops are covered above")
def test_network_float32_as_accurate_as_reference():
    # float32 rounding is amplified through a deep network, so both float32 backends are measured against the
    # float64 reference on the same weights, and the fast one must be about as close to it as the reference is
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 32, 32, 3))
    labels = rng.integers(0, 10, 4)
    def build(dtype):
        model = models.MobileNetV2(num_classes=10, width_mult=0.5, dropout=0.0, stem_stride=1, seed=3,
                                   dtype=dtype)
        weights = models.MobileNetV2(num_classes=10, width_mult=0.5, dropout=0.0, stem_stride=1, seed=3,
                                     dtype="float32").state_dict()
        model.load_state_dict({k: v.astype(dtype) if v.dtype.kind == "f" else v for k, v in weights.items()})
        return model
    truth = _run("reference", lambda: build("float64"), x, labels, True)
    ref = _run("reference", lambda: build("float32"), x.astype(np.float32), labels, True)
    fast = _run("fast", lambda: build("float32"), x.astype(np.float32), labels, True)
    pairs = [("logits", fast[0], ref[0], truth[0]), ("dL/dx", fast[1], ref[1], truth[1])]
    pairs += [(name, fast[2][name], ref[2][name], truth[2][name]) for name in truth[2]]
    floor = 1e-3 * max(float(np.abs(g).max()) for g in truth[2].values())
    for name, f, r, t in pairs:
        assert f.dtype == np.float32
        scale = max(floor if name in truth[2] else 1e-30, float(np.abs(t).max()))
        err_fast = float(np.abs(f - t).max()) / scale
        err_ref = float(np.abs(r - t).max()) / scale
        assert err_fast <= 4 * err_ref + 1e-5, f"{name}: fast error {err_fast:.3g}, reference error {err_ref:.3g}"


def test_small_network_matches_reference_without_jit():
    # one inverted residual block with a shortcut, small enough for NUMBA_DISABLE_JIT=1
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 5, 8))
    def build():
        return models.InvertedResidual(8, 8, 1, 6, rng=np.random.default_rng(0), dtype="float64")
    for training in (True, False):
        ref = _run_block("reference", build, x, training)
        fast = _run_block("fast", build, x, training)
        for a, b in zip(fast, ref):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def _run_block(backend, build, x, training):
    block = build()
    block.train() if training else block.eval()
    with mn.use_backend(backend):
        out = block(x)
        dx = block.backward(np.cos(out))
    return [out, dx] + [p.grad.copy() for _, p in block.named_parameters()]
