"""The dispatch table: one row per operation, each with a reference and a fast pair of the same contract."""
import inspect

import numpy as np
import pytest

import numpymnv2 as mn
from numpymnv2 import functional as F
from numpymnv2 import ops
from numpymnv2.nn import BatchNormAct2d, ConvBNAct, PointwiseConv2d


def test_rows_are_named_once_and_point_at_real_functions():
    assert len(ops.TABLE) == len({op.name for op in ops.TABLE.values()})
    for name, op in ops.TABLE.items():
        assert op.name == name and getattr(ops, name.upper()) is op
        for impl in (op.reference, op.fast):
            assert callable(impl.forward) and callable(impl.backward)
        # the reference pair is the readable one, exported by numpymnv2.functional under the op's name
        assert op.reference.forward is getattr(F, f"{name}_forward")
        assert op.reference.backward is getattr(F, f"{name}_backward")
        assert op.reference.forward.__module__.startswith("numpymnv2.functional.")
        # the fast pair takes the same arguments
        assert (list(inspect.signature(op.fast.forward).parameters)
                == list(inspect.signature(op.reference.forward).parameters)), name


def test_every_functional_pair_has_a_row():
    pairs = {n[:-len("_forward")] for n in F.__all__ if n.endswith("_forward")}
    assert pairs == set(ops.TABLE)


def test_kernels_are_the_fast_rows():
    from numpymnv2 import kernels
    fast_kernels = {ops.TABLE[n[:-len("_forward")]].fast.forward for n in kernels.__all__ if n.endswith("_forward")}
    assert fast_kernels == {getattr(kernels, n) for n in kernels.__all__ if n.endswith("_forward")}
    assert all(f.__module__.startswith("numpymnv2.kernels.") for f in fast_kernels)


def test_active_follows_the_backend():
    with mn.use_backend("reference"):
        assert ops.DEPTHWISE_CONV2D.active() is ops.DEPTHWISE_CONV2D.reference
        with mn.use_backend("fast"):
            assert ops.DEPTHWISE_CONV2D.active() is ops.DEPTHWISE_CONV2D.fast
    assert ops.DEPTHWISE_CONV2D.on("reference") is ops.DEPTHWISE_CONV2D.reference
    with pytest.raises(ValueError, match=r"ops\.depthwise_conv2d: backend must be one of 'reference', 'fast', "
                                         r"got 'gpu'"):
        ops.DEPTHWISE_CONV2D.on("gpu")
    with pytest.raises(ValueError, match="set_backend: backend must be one of 'reference', 'fast', got 'numba'"):
        mn.set_backend("numba")


def test_a_layer_backward_runs_on_the_backend_its_forward_ran_on():
    layer = BatchNormAct2d(3, "relu6", dtype="float64")
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 3, 3))
    with mn.use_backend("reference"):
        layer(x)
    assert layer._impl is ops.BATCHNORM_ACT.reference
    with mn.use_backend("fast"):
        layer.backward(np.ones((2, 3, 3, 3)))            # the reference pair's cache, read by the reference pair


@pytest.mark.parametrize("make", [
    lambda: BatchNormAct2d(3, "tanh"),
    lambda: ConvBNAct(PointwiseConv2d(3, 3), 3, "tanh"),
    lambda: F.batchnorm_act_forward(np.zeros((2, 1, 1, 3)), *[np.ones(3)] * 4, True, activation="tanh"),
])
def test_one_message_for_an_unknown_activation(make):
    with pytest.raises(ValueError, match=r": activation must be one of 'relu6', 'relu' or None, got 'tanh'$"):
        make()
