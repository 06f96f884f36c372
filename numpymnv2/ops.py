"""The one table that says which code runs: every operation with its reference and its fast implementation.

Each row is an :class:`Op`: a name, the readable NumPy pair from :mod:`numpymnv2.functional` (``reference``) and
the pair the default backend runs (``fast``): a Numba kernel from :mod:`numpymnv2.kernels` where one exists, the
same NumPy function where the operation is already a BLAS call or too small to matter. Every pair has the same
contract (``out, cache = forward(...)``, ``grads = backward(dout, cache)``; see :mod:`numpymnv2.functional`).

A layer names its row directly, so "go to definition" leads here and then to the function::

    impl = DEPTHWISE_CONV2D.active()           # the pair of the backend chosen by mn.set_backend / use_backend
    out, cache = impl.forward(x, w, stride, padding)
    ...
    dx, dw = impl.backward(dout, cache)        # the same pair, kept by the layer with its cache

``softmax_cross_entropy`` is not a row: it returns the loss and its gradient in one call and runs on NumPy.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

from numpymnv2.backend import check_backend, get_backend
from numpymnv2.functional import activation as ref_activation
from numpymnv2.functional import batchnorm as ref_batchnorm
from numpymnv2.functional import conv2d as ref_conv2d
from numpymnv2.functional import depthwise as ref_depthwise
from numpymnv2.functional import dropout as ref_dropout
from numpymnv2.functional import fused as ref_fused
from numpymnv2.functional import linear as ref_linear
from numpymnv2.functional import pointwise as ref_pointwise
from numpymnv2.functional import pooling as ref_pooling
from numpymnv2.functional import residual as ref_residual
from numpymnv2.kernels import activation as fast_activation
from numpymnv2.kernels import batchnorm as fast_batchnorm
from numpymnv2.kernels import conv2d as fast_conv2d
from numpymnv2.kernels import depthwise as fast_depthwise
from numpymnv2.kernels import fused as fast_fused
from numpymnv2.kernels import linear as fast_linear
from numpymnv2.kernels import pointwise as fast_pointwise


class Impl(NamedTuple):
    """One implementation of an operation: its forward and its backward function."""
    forward: Callable
    backward: Callable


class Op(NamedTuple):
    """A row of the table: the operation's name and its implementation on each backend."""
    name: str
    reference: Impl
    fast: Impl

    def active(self) -> Impl:
        """The implementation of the active backend (:func:`numpymnv2.get_backend`)."""
        return self.fast if get_backend() == "fast" else self.reference

    def on(self, backend: str) -> Impl:
        """The implementation of ``backend`` (``"reference"`` or ``"fast"``)."""
        return getattr(self, check_backend(backend, f"ops.{self.name}"))


def _same(forward: Callable, backward: Callable) -> tuple[Impl, Impl]:
    """Both backends run the NumPy pair (a BLAS product, or an operation too cheap to deserve a kernel)."""
    return Impl(forward, backward), Impl(forward, backward)


CONV2D = Op(                                        # im2col + BLAS; the fast pair gathers the patches in Numba
    "conv2d",
    reference=Impl(ref_conv2d.conv2d_forward, ref_conv2d.conv2d_backward),
    fast=Impl(fast_conv2d.conv2d_forward, fast_conv2d.conv2d_backward))
DEPTHWISE_CONV2D = Op(
    "depthwise_conv2d",
    reference=Impl(ref_depthwise.depthwise_conv2d_forward, ref_depthwise.depthwise_conv2d_backward),
    fast=Impl(fast_depthwise.depthwise_conv2d_forward, fast_depthwise.depthwise_conv2d_backward))
POINTWISE_CONV2D = Op(                              # BLAS GEMMs; the fast pair may split them over Numba's threads
    "pointwise_conv2d",
    reference=Impl(ref_pointwise.pointwise_conv2d_forward, ref_pointwise.pointwise_conv2d_backward),
    fast=Impl(fast_pointwise.pointwise_conv2d_forward, fast_pointwise.pointwise_conv2d_backward))
BATCHNORM = Op(
    "batchnorm",
    reference=Impl(ref_batchnorm.batchnorm_forward, ref_batchnorm.batchnorm_backward),
    fast=Impl(fast_batchnorm.batchnorm_forward, fast_batchnorm.batchnorm_backward))
BATCHNORM_ACT = Op(                                 # BatchNorm, then an activation, then an optional residual add
    "batchnorm_act",
    reference=Impl(ref_fused.batchnorm_act_forward, ref_fused.batchnorm_act_backward),
    fast=Impl(fast_fused.batchnorm_act_forward, fast_fused.batchnorm_act_backward))
RELU6 = Op(
    "relu6",
    reference=Impl(ref_activation.relu6_forward, ref_activation.relu6_backward),
    fast=Impl(fast_activation.relu6_forward, fast_activation.relu6_backward))
RELU = Op("relu", *_same(ref_activation.relu_forward, ref_activation.relu_backward))
RESIDUAL_ADD = Op("residual_add", *_same(ref_residual.residual_add_forward, ref_residual.residual_add_backward))
GLOBAL_AVG_POOL = Op("global_avg_pool",
                     *_same(ref_pooling.global_avg_pool_forward, ref_pooling.global_avg_pool_backward))
DROPOUT = Op("dropout", *_same(ref_dropout.dropout_forward, ref_dropout.dropout_backward))
LINEAR = Op(
    "linear",
    reference=Impl(ref_linear.linear_forward, ref_linear.linear_backward),
    fast=Impl(fast_linear.linear_forward, fast_linear.linear_backward))

#: Every row, by name.
TABLE: dict[str, Op] = {op.name: op for op in (CONV2D, DEPTHWISE_CONV2D, POINTWISE_CONV2D, BATCHNORM,
                                               BATCHNORM_ACT, RELU6, RELU, RESIDUAL_ADD, GLOBAL_AVG_POOL,
                                               DROPOUT, LINEAR)}

__all__ = ["BATCHNORM", "BATCHNORM_ACT", "CONV2D", "DEPTHWISE_CONV2D", "DROPOUT", "GLOBAL_AVG_POOL", "Impl",
           "LINEAR", "Op", "POINTWISE_CONV2D", "RELU", "RELU6", "RESIDUAL_ADD", "TABLE"]
