"""Layers: each holds its parameters, its mode and its last cache; the math is in :mod:`numpymnv2.functional`.

A layer names its operation's row of :mod:`numpymnv2.ops` (``DEPTHWISE_CONV2D``, ``BATCHNORM_ACT``, ...), takes
the active backend's implementation when it runs forward and keeps that implementation with its cache for its
backward, so ``use_backend("reference")`` switches the whole network to the readable code.
Initialisation follows torchvision's MobileNetV2: convolutions Kaiming-normal with ``mode="fan_out"``
(standard deviation ``sqrt(2 / fan_out)``), BatchNorm weight 1 and bias 0, the classifier ``N(0, 0.01)`` with a
zero bias, all drawn from the ``numpy.random.Generator`` the caller passes.
"""
from __future__ import annotations

import math

import numpy as np

from numpymnv2._checks import (NonFiniteError, check_activation, check_array, check_batch_statistics,
                               check_hyperparameter, check_probability, conv_output_size, resolve_dtype)
from numpymnv2.nn.module import Module, Parameter, Sequential
from numpymnv2.ops import (BATCHNORM_ACT, CONV2D, DEPTHWISE_CONV2D, DROPOUT, GLOBAL_AVG_POOL, LINEAR,
                           POINTWISE_CONV2D, RELU, RELU6, Impl)


def _rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _check_spatial(x, kernel_size: int, stride: int, padding: int, where: str) -> None:
    """Raise a ``ValueError`` naming the layer when ``x`` is too small for the kernel (an empty output)."""
    conv_output_size(x.shape[1], kernel_size, stride, padding, where, "H")
    conv_output_size(x.shape[2], kernel_size, stride, padding, where, "W")


def kaiming_normal_fan_out(shape: tuple, fan_out: int, rng: np.random.Generator, dtype) -> np.ndarray:
    """``N(0, 2 / fan_out)``: He et al. 2015 for ReLU networks, scaled by the number of outputs a weight feeds."""
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_out)).astype(dtype)


class _Layer(Module):
    """A leaf layer: keeps the cache and the implementation (:class:`numpymnv2.ops.Impl`) of its last forward."""

    ndim = 4

    def __init__(self):
        super().__init__()
        self._drop_cache()

    def _drop_cache(self) -> None:
        object.__setattr__(self, "_last", None)

    def in_channels_expected(self):
        return None

    def check_input(self, x, finite: bool = True):
        return check_array(x, self.label, ndim=self.ndim, channels=self.in_channels_expected(),
                           dtype=self.param_dtype(), finite=finite)

    def _remember(self, out, cache, impl: Impl):
        """Keep what backward needs (the cache, the implementation that made it, the output's shape and dtype);
        return ``out``."""
        object.__setattr__(self, "_last", (cache, impl, out.shape, out.dtype))
        return out

    @property
    def _cache(self):
        """The cache of the last forward pass (None before the first)."""
        return self._last[0] if self._last is not None else None

    @property
    def _impl(self) -> Impl | None:
        """The implementation that ran the last forward pass (None before the first)."""
        return self._last[1] if self._last is not None else None

    def _recall(self, dout) -> tuple[object, Impl]:
        """Check ``dout`` against the last forward output; return that forward's cache and implementation."""
        cache, impl, shape, dtype = self._need_cache(self._last)
        self._check_dout(dout, shape, dtype)
        return cache, impl


class _WindowConv(_Layer):
    """A convolution with a ``K x K`` window, a stride and zero padding, without bias: the stem's full convolution
    and the depthwise one share their checks and their calls; ``op`` is their row of :mod:`numpymnv2.ops`."""

    op = None

    def check_input(self, x, finite: bool = True):
        x = super().check_input(x, finite)
        _check_spatial(x, self.kernel_size, self.stride, self.padding, self.label)
        return x

    def forward(self, x):
        impl = self.op.active()
        out, cache = impl.forward(x, self.weight.data, self.stride, self.padding)
        return self._remember(out, cache, impl)

    def backward(self, dout):
        cache, impl = self._recall(dout)
        dx, dw = impl.backward(dout, cache)
        self.weight.accumulate_grad(dw)
        return dx


class Conv2d(_WindowConv):
    """Full convolution without bias, NHWC; weight ``(C_out, K, K, C_in)``. Used for the stem.

    See :func:`numpymnv2.functional.conv2d.conv2d_forward` for the equations.
    """

    op = CONV2D

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 0, rng=None, dtype="float32"):
        super().__init__()
        dt = resolve_dtype(dtype)
        where = type(self).__name__
        self.in_channels = check_hyperparameter(in_channels, "in_channels", where)
        self.out_channels = check_hyperparameter(out_channels, "out_channels", where)
        self.kernel_size = check_hyperparameter(kernel_size, "kernel_size", where)
        self.stride = check_hyperparameter(stride, "stride", where)
        self.padding = check_hyperparameter(padding, "padding", where, minimum=0)
        fan_out = out_channels * kernel_size * kernel_size
        self.weight = Parameter(kaiming_normal_fan_out((out_channels, kernel_size, kernel_size, in_channels),
                                                       fan_out, _rng(rng), dt))

    def in_channels_expected(self):
        return self.in_channels

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}")


class DepthwiseConv2d(_WindowConv):
    """Depthwise convolution without bias, NHWC; weight ``(K, K, C)``.

    See :func:`numpymnv2.functional.depthwise.depthwise_conv2d_forward` for the equations.
    """

    op = DEPTHWISE_CONV2D

    def __init__(self, channels: int, kernel_size: int = 3, stride: int = 1, padding: int = 1, rng=None,
                 dtype="float32"):
        super().__init__()
        dt = resolve_dtype(dtype)
        where = type(self).__name__
        self.channels = check_hyperparameter(channels, "channels", where)
        self.kernel_size = check_hyperparameter(kernel_size, "kernel_size", where)
        self.stride = check_hyperparameter(stride, "stride", where)
        self.padding = check_hyperparameter(padding, "padding", where, minimum=0)
        # PyTorch's fan_out for a (C, 1, K, K) weight is C * K * K
        self.weight = Parameter(kaiming_normal_fan_out((kernel_size, kernel_size, channels),
                                                       channels * kernel_size * kernel_size, _rng(rng), dt))

    @property
    def out_channels(self) -> int:
        return self.channels

    def in_channels_expected(self):
        return self.channels

    def extra_repr(self):
        return f"{self.channels}, kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class PointwiseConv2d(_Layer):
    """1x1 convolution without bias, the paper's ``z = T a`` per pixel; weight ``T`` of shape ``(C_out, C_in)``.

    See :func:`numpymnv2.functional.pointwise.pointwise_conv2d_forward` for the equations.
    """

    def __init__(self, in_channels: int, out_channels: int, rng=None, dtype="float32"):
        super().__init__()
        dt = resolve_dtype(dtype)
        where = type(self).__name__
        self.in_channels = check_hyperparameter(in_channels, "in_channels", where)
        self.out_channels = check_hyperparameter(out_channels, "out_channels", where)
        self.weight = Parameter(kaiming_normal_fan_out((out_channels, in_channels), out_channels, _rng(rng), dt))

    def in_channels_expected(self):
        return self.in_channels

    def extra_repr(self):
        return f"{self.in_channels}, {self.out_channels}"

    def forward(self, x):
        impl = POINTWISE_CONV2D.active()
        out, cache = impl.forward(x, self.weight.data)
        return self._remember(out, cache, impl)

    def backward(self, dout):
        cache, impl = self._recall(dout)
        # straight into weight.grad after zero_grad: these weights are nearly all of MobileNetV2's parameters
        dx, dT = impl.backward(dout, cache, dT_out=self.weight.grad_target())
        self.weight.accumulate_grad(dT)
        return dx


class BatchNorm2d(_Layer):
    """BatchNorm over ``(N, H, W)`` per channel with PyTorch's numerics and state: ``out = BN(x) [+ residual]``.

    Parameters ``weight`` (gamma) and ``bias`` (beta); buffers ``running_mean``, ``running_var`` and
    ``num_batches_tracked``. ``forward(x, residual=None)`` adds ``residual`` (the shortcut of an inverted
    residual block) in the same pass; ``backward(dout)`` returns dL/dx, and the gradient with respect to the
    residual is ``dout`` itself, which the caller adds to its shortcut.

    The layer's own ``training`` flag decides between batch and running statistics, so ``bn.eval()`` on one layer
    freezes its statistics inside a model in training mode. A training-mode forward whose batch statistics are
    not finite raises :class:`~numpymnv2._checks.NonFiniteError` and leaves the running statistics unchanged.
    It runs :data:`numpymnv2.ops.BATCHNORM_ACT` with no activation; the equations are in
    :func:`numpymnv2.functional.batchnorm.batchnorm_forward` and :func:`numpymnv2.functional.fused.batchnorm_act_forward`.

    ``sync`` (None by default) makes it a SyncBatchNorm: a communicator of the processes that share each batch
    (anything with ``allreduce(a)``, the sum of an array over the processes, and ``size``; see
    :mod:`numpymnv2.distributed`). In training mode the batch statistics and the two sums of the input
    gradient are then those of the whole batch, every process's rows (the equations in
    :mod:`numpymnv2.functional.batchnorm`), and ``weight.grad``/``bias.grad`` receive this process's share.
    """

    activation = None

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, dtype="float32"):
        super().__init__()
        dt = resolve_dtype(dtype)
        self.num_features = check_hyperparameter(num_features, "num_features", type(self).__name__)
        self.eps, self.momentum = eps, momentum
        self.weight = Parameter(np.ones(num_features, dtype=dt))
        self.bias = Parameter(np.zeros(num_features, dtype=dt))
        self.register_buffer("running_mean", np.zeros(num_features, dtype=dt))
        self.register_buffer("running_var", np.ones(num_features, dtype=dt))
        self.register_buffer("num_batches_tracked", np.zeros((), dtype=np.int64))
        self.sync = None

    def _drop_cache(self) -> None:
        super()._drop_cache()
        object.__setattr__(self, "_allreduce", None)

    def in_channels_expected(self):
        return self.num_features

    def check_input(self, x, finite: bool = True):
        x = super().check_input(x, finite)
        if self.training and self.sync is None:     # synchronised: the op checks the whole batch's count
            check_batch_statistics(x.shape, self.label)
        return x

    def extra_repr(self):
        sync = "" if self.sync is None else f", sync={self.sync.size} processes"
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}{sync}"

    def forward(self, x, residual=None):
        if residual is not None and (type(residual) is not np.ndarray or residual.dtype != x.dtype
                                     or residual.shape != x.shape):
            check_array(residual, self.label, dtype=x.dtype, finite=False, what="residual")
            if residual.shape != x.shape:
                raise ValueError(f"{self.label}: expected a residual of shape {x.shape} (the output's shape), "
                                 f"got {residual.shape}")
        impl = BATCHNORM_ACT.active()
        saved = self.save_buffers() if self.training else None
        allreduce = self.sync.allreduce if self.sync is not None and self.training else None
        out, cache = impl.forward(x, self.weight.data, self.bias.data, self.running_mean, self.running_var,
                                  self.training, self.momentum, self.eps, self.activation, residual,
                                  allreduce=allreduce)
        object.__setattr__(self, "_allreduce", allreduce)
        if self.training:
            if not math.isfinite(float(self.running_mean.sum()) + float(self.running_var.sum())):
                self.restore_buffers(saved)
                raise NonFiniteError(f"{self.label}: the batch statistics of this input are not finite (largest "
                                     f"|x| {float(np.abs(x).max()):.3g}); the running statistics were left as "
                                     f"they were")
            np.add(self.num_batches_tracked, 1, out=self.num_batches_tracked)     # in place, the buffer itself
        return self._remember(out, cache, impl)

    def backward(self, dout):
        cache, impl = self._recall(dout)
        # the residual's gradient is dout: the caller's
        dx, dgamma, dbeta, _ = impl.backward(dout, cache, allreduce=self._allreduce)
        self.weight.accumulate_grad(dgamma)
        self.bias.accumulate_grad(dbeta)
        return dx


class BatchNormAct2d(BatchNorm2d):
    """BatchNorm, then an activation, in one pass: ``out = act(BN(x)) [+ residual]``.

    A :class:`BatchNorm2d` (the same parameters, buffers and state-dict keys, so ``isinstance(m, BatchNorm2d)``
    finds it when freezing BatchNorm) that also applies ``activation`` (``"relu6"``, ``"relu"`` or None) before
    the optional residual add; the fast backend does all three in one pass over memory. MobileNetV2 uses it
    after the expansion and the depthwise convolutions, where torchvision has BatchNorm2d followed by ReLU6.
    """

    def __init__(self, num_features: int, activation: str | None = "relu6", eps: float = 1e-5,
                 momentum: float = 0.1, dtype="float32"):
        super().__init__(num_features, eps=eps, momentum=momentum, dtype=dtype)
        self.activation = check_activation(activation, type(self).__name__)

    def extra_repr(self):
        return f"{super().extra_repr()}, activation={self.activation}"


class _ParameterFree(_Layer):
    """A layer without parameters whose operation takes only ``x``: ``op`` is its row of :mod:`numpymnv2.ops`."""

    op = None
    ndim = None        # any number of dimensions

    def check_input(self, x, finite: bool = True):
        return check_array(x, self.label, ndim=self.ndim, finite=finite)

    def forward(self, x):
        impl = self.op.active()
        out, cache = impl.forward(x)
        return self._remember(out, cache, impl)

    def backward(self, dout):
        cache, impl = self._recall(dout)
        return impl.backward(dout, cache)


class ReLU6(_ParameterFree):
    """``min(max(x, 0), 6)`` elementwise; see :mod:`numpymnv2.functional.activation`."""
    op = RELU6


class ReLU(_ParameterFree):
    """``max(x, 0)`` elementwise; see :mod:`numpymnv2.functional.activation`."""
    op = RELU


class GlobalAvgPool2d(_ParameterFree):
    """``(N, H, W, C) -> (N, C)``, the mean of each channel; see :mod:`numpymnv2.functional.pooling`."""
    op = GLOBAL_AVG_POOL
    ndim = 4


class Dropout(_Layer):
    """Inverted dropout with its own seeded generator (``self.generator``, saved by the trainer for exact resume).

    ``batch_rows`` (None by default) is set by data-parallel training to ``(start, total)``: the input is rows
    ``start ..`` of a batch of ``total`` rows, and the mask is drawn for the whole batch (see
    :func:`numpymnv2.functional.dropout.dropout_forward`). See :mod:`numpymnv2.functional.dropout`.
    """

    def __init__(self, p: float = 0.5, rng=None):
        super().__init__()
        self.p = check_probability(p, "p", "Dropout")
        object.__setattr__(self, "generator", _rng(rng))
        self.batch_rows = None

    def extra_repr(self):
        return f"p={self.p}"

    def check_input(self, x, finite: bool = True):
        return check_array(x, self.label, finite=finite)

    def forward(self, x):
        impl = DROPOUT.active()
        out, cache = impl.forward(x, self.p, self.training, self.generator, self.batch_rows)
        return self._remember(out, cache, impl)

    def backward(self, dout):
        cache, impl = self._recall(dout)
        return impl.backward(dout, cache)


class Linear(_Layer):
    """``y = x W^T + b`` with ``W`` of shape ``(out_features, in_features)`` (PyTorch's layout).

    Initialised as torchvision's MobileNetV2 classifier: ``W ~ N(0, 0.01^2)``, ``b = 0``.
    """

    ndim = 2

    def __init__(self, in_features: int, out_features: int, bias: bool = True, rng=None, dtype="float32"):
        super().__init__()
        dt = resolve_dtype(dtype)
        where = type(self).__name__
        self.in_features = check_hyperparameter(in_features, "in_features", where)
        self.out_features = check_hyperparameter(out_features, "out_features", where)
        self.weight = Parameter((_rng(rng).standard_normal((out_features, in_features)) * 0.01).astype(dt))
        self.bias = Parameter(np.zeros(out_features, dtype=dt)) if bias else None

    def in_channels_expected(self):
        return self.in_features

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"

    def forward(self, x):
        impl = LINEAR.active()
        out, cache = impl.forward(x, self.weight.data, None if self.bias is None else self.bias.data)
        return self._remember(out, cache, impl)

    def backward(self, dout):
        cache, impl = self._recall(dout)
        dx, dw, db = impl.backward(dout, cache)
        self.weight.accumulate_grad(dw)
        if self.bias is not None:
            self.bias.accumulate_grad(db)
        return dx


class ConvBNAct(Sequential):
    """A convolution, then BatchNorm and an optional activation: torchvision's ``Conv2dNormActivation``.

    A :class:`Sequential` of two children: ``0`` the convolution and ``1`` a :class:`BatchNormAct2d` applying
    ``activation`` (``"relu6"``, ``"relu"``), or a plain :class:`BatchNorm2d` when ``activation`` is None. The
    state-dict keys are torchvision's (``0.weight``, ``1.weight``, ``1.running_mean``, ...); torchvision's third
    child, the ReLU6, has no state and runs inside child ``1``. Forward and backward are Sequential's: what the
    tree prints is what runs, and each child's own mode is honoured.

    ``dtype`` defaults to the convolution's; an explicit different one is an error (a float32 BatchNorm after a
    float64 convolution would silently mix precisions), as is an ``out_channels`` that is not the convolution's.
    """

    def __init__(self, conv: Module, out_channels: int, activation: str | None = "relu6", dtype=None):
        where = "ConvBNAct"
        check_activation(activation, where)
        if not isinstance(conv, Module):
            raise TypeError(f"{where}: conv must be a Module, got {type(conv).__name__}")
        conv_dtype = conv.param_dtype()
        dt = resolve_dtype(dtype if dtype is not None else (conv_dtype or "float32"))
        if conv_dtype is not None and conv_dtype != dt:
            raise TypeError(f"{where}: dtype={dt} but the convolution's parameters are {conv_dtype}")
        conv_out = getattr(conv, "out_channels", None)
        if conv_out is not None and conv_out != out_channels:
            raise ValueError(f"{where}: out_channels={out_channels} but the convolution {conv!r} gives "
                             f"{conv_out} channels")
        norm = (BatchNorm2d(out_channels, dtype=dt) if activation is None
                else BatchNormAct2d(out_channels, activation, dtype=dt))
        super().__init__(conv, norm)

    @property
    def conv(self) -> Module:
        """Child ``0``."""
        return self[0]

    @property
    def bn(self) -> BatchNorm2d:
        """Child ``1``."""
        return self[1]

    @property
    def activation(self) -> str | None:
        """The activation child ``1`` applies (None for a plain BatchNorm or another module)."""
        return getattr(self[1], "activation", None)
