"""Layers: each holds its parameters, its mode and its last cache; the math is in :mod:`numpymnv2.functional`.

Every layer looks up the active backend (:func:`numpymnv2.backend.ops`) when it runs forward and keeps that
backend for its backward, so ``use_backend("reference")`` switches the whole network to the readable code.
Initialisation follows torchvision's MobileNetV2: convolutions Kaiming-normal with ``mode="fan_out"``
(standard deviation ``sqrt(2 / fan_out)``), BatchNorm weight 1 and bias 0, the classifier ``N(0, 0.01)`` with a
zero bias, all drawn from the ``numpy.random.Generator`` the caller passes.
"""
from __future__ import annotations

import numpy as np

from numpymnv2._checks import check_array, check_hyperparameter, conv_output_size, resolve_dtype
from numpymnv2.backend import ops
from numpymnv2.nn.module import Module, Parameter


def _rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _check_spatial(x, kernel_size: int, stride: int, padding: int, where: str) -> None:
    """Raise a ``ValueError`` naming the layer when ``x`` is too small for the kernel (an empty output)."""
    conv_output_size(x.shape[1], kernel_size, stride, padding, where, "H")
    conv_output_size(x.shape[2], kernel_size, stride, padding, where, "W")


def _check_batch_statistics(x, where: str) -> None:
    """Training-mode BatchNorm needs at least two values per channel for a batch variance (as PyTorch)."""
    if x.shape[0] * x.shape[1] * x.shape[2] < 2:
        raise ValueError(f"{where}: training mode needs more than one value per channel (N*H*W >= 2) to "
                         f"compute batch statistics, got input shape {x.shape}; use eval() or a larger batch")


def kaiming_normal_fan_out(shape: tuple, fan_out: int, rng: np.random.Generator, dtype) -> np.ndarray:
    """``N(0, 2 / fan_out)``: He et al. 2015 for ReLU networks, scaled by the number of outputs a weight feeds."""
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_out)).astype(dtype)


class _Layer(Module):
    """A leaf layer: stores the cache and backend of its last forward pass."""

    ndim = 4

    def __init__(self):
        super().__init__()
        object.__setattr__(self, "_cache", None)
        object.__setattr__(self, "_ops", None)
        object.__setattr__(self, "_out_shape", None)
        object.__setattr__(self, "_out_dtype", None)

    def in_channels_expected(self):
        return None

    def check_input(self, x, finite: bool = True):
        return check_array(x, self.label, ndim=self.ndim, channels=self.in_channels_expected(),
                           dtype=self.param_dtype(), finite=finite)

    def _remember(self, out, cache, backend):
        object.__setattr__(self, "_cache", cache)
        object.__setattr__(self, "_ops", backend)
        object.__setattr__(self, "_out_shape", out.shape)
        object.__setattr__(self, "_out_dtype", out.dtype)
        return out

    def _recall(self, dout):
        cache = self._need_cache(self._cache)
        self._check_dout(dout, self._out_shape, self._out_dtype)
        return cache, self._ops


class Conv2d(_Layer):
    """Full convolution without bias, NHWC; weight ``(C_out, K, K, C_in)``. Used for the stem.

    See :func:`numpymnv2.functional.conv2d.conv2d_forward` for the equations.
    """

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

    def check_input(self, x, finite: bool = True):
        x = super().check_input(x, finite)
        _check_spatial(x, self.kernel_size, self.stride, self.padding, self.label)
        return x

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}")

    def forward(self, x):
        backend = ops()
        out, cache = backend.conv2d_forward(x, self.weight.data, self.stride, self.padding)
        return self._remember(out, cache, backend)

    def backward(self, dout):
        cache, backend = self._recall(dout)
        dx, dw = backend.conv2d_backward(dout, cache)
        self.weight.grad += dw
        return dx


class DepthwiseConv2d(_Layer):
    """Depthwise convolution without bias, NHWC; weight ``(K, K, C)``.

    See :func:`numpymnv2.functional.depthwise.depthwise_conv2d_forward` for the equations.
    """

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

    def in_channels_expected(self):
        return self.channels

    def check_input(self, x, finite: bool = True):
        x = super().check_input(x, finite)
        _check_spatial(x, self.kernel_size, self.stride, self.padding, self.label)
        return x

    def extra_repr(self):
        return f"{self.channels}, kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"

    def forward(self, x):
        backend = ops()
        out, cache = backend.depthwise_conv2d_forward(x, self.weight.data, self.stride, self.padding)
        return self._remember(out, cache, backend)

    def backward(self, dout):
        cache, backend = self._recall(dout)
        dx, dw = backend.depthwise_conv2d_backward(dout, cache)
        self.weight.grad += dw
        return dx


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
        backend = ops()
        out, cache = backend.pointwise_conv2d_forward(x, self.weight.data)
        return self._remember(out, cache, backend)

    def backward(self, dout):
        cache, backend = self._recall(dout)
        dx, dT = backend.pointwise_conv2d_backward(dout, cache)
        self.weight.grad += dT
        return dx


class BatchNorm2d(_Layer):
    """BatchNorm over ``(N, H, W)`` per channel with PyTorch's numerics and state.

    Parameters ``weight`` (gamma) and ``bias`` (beta); buffers ``running_mean``, ``running_var`` and
    ``num_batches_tracked``. See :func:`numpymnv2.functional.batchnorm.batchnorm_forward`.
    """

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

    def in_channels_expected(self):
        return self.num_features

    def check_input(self, x, finite: bool = True):
        x = super().check_input(x, finite)
        if self.training:
            _check_batch_statistics(x, self.label)
        return x

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"

    def forward(self, x):
        backend = ops()
        out, cache = backend.batchnorm_forward(x, self.weight.data, self.bias.data, self.running_mean,
                                               self.running_var, self.training, self.momentum, self.eps)
        if self.training:
            self.num_batches_tracked += 1
        return self._remember(out, cache, backend)

    def backward(self, dout):
        cache, backend = self._recall(dout)
        dx, dgamma, dbeta = backend.batchnorm_backward(dout, cache)
        self.weight.grad += dgamma
        self.bias.grad += dbeta
        return dx


class _Activation(_Layer):
    kind = ""

    def check_input(self, x, finite: bool = True):
        return check_array(x, self.label, finite=finite)

    def forward(self, x):
        backend = ops()
        out, cache = getattr(backend, f"{self.kind}_forward")(x)
        return self._remember(out, cache, backend)

    def backward(self, dout):
        cache, backend = self._recall(dout)
        return getattr(backend, f"{self.kind}_backward")(dout, cache)


class ReLU6(_Activation):
    """``min(max(x, 0), 6)`` elementwise; see :mod:`numpymnv2.functional.activation`."""
    kind = "relu6"


class ReLU(_Activation):
    """``max(x, 0)`` elementwise; see :mod:`numpymnv2.functional.activation`."""
    kind = "relu"


class GlobalAvgPool2d(_Layer):
    """``(N, H, W, C) -> (N, C)``, the mean of each channel; see :mod:`numpymnv2.functional.pooling`."""

    def check_input(self, x, finite: bool = True):
        return check_array(x, self.label, ndim=4, finite=finite)

    def forward(self, x):
        backend = ops()
        out, cache = backend.global_avg_pool_forward(x)
        return self._remember(out, cache, backend)

    def backward(self, dout):
        cache, backend = self._recall(dout)
        return backend.global_avg_pool_backward(dout, cache)


class Dropout(_Layer):
    """Inverted dropout with its own seeded generator (``self.generator``, saved by the trainer for exact resume).

    See :mod:`numpymnv2.functional.dropout`.
    """

    def __init__(self, p: float = 0.5, rng=None):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p}")
        self.p = float(p)
        object.__setattr__(self, "generator", _rng(rng))

    def extra_repr(self):
        return f"p={self.p}"

    def check_input(self, x, finite: bool = True):
        return check_array(x, self.label, finite=finite)

    def forward(self, x):
        backend = ops()
        out, cache = backend.dropout_forward(x, self.p, self.training, self.generator)
        return self._remember(out, cache, backend)

    def backward(self, dout):
        cache, backend = self._recall(dout)
        return backend.dropout_backward(dout, cache)


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
        backend = ops()
        out, cache = backend.linear_forward(x, self.weight.data, None if self.bias is None else self.bias.data)
        return self._remember(out, cache, backend)

    def backward(self, dout):
        cache, backend = self._recall(dout)
        dx, dw, db = backend.linear_backward(dout, cache)
        self.weight.grad += dw
        if self.bias is not None:
            self.bias.grad += db
        return dx


class ConvBNAct(Module):
    """Convolution, BatchNorm and an optional activation: torchvision's ``Conv2dNormActivation``.

    Children ``0`` (the convolution), ``1`` (the :class:`BatchNorm2d` whose parameters and statistics are used)
    and, when ``activation`` is set, ``2`` (the activation, kept for the structure and state-dict keys). The
    BatchNorm, the activation and an optional residual run as one operation,
    :func:`numpymnv2.functional.fused.batchnorm_act_forward`, which the fast backend fuses into a single pass.

    ``forward(x, residual=None)`` returns ``act(BN(conv(x))) + residual``; ``backward(dout)`` returns dL/dx.
    The gradient with respect to ``residual`` is ``dout`` itself, which the caller adds to its shortcut.

    ``dtype`` defaults to the convolution's parameter dtype; the BatchNorm must share it (a float32 BatchNorm
    after a float64 convolution would silently mix precisions), so a different explicit ``dtype`` is an error,
    as is an ``out_channels`` that differs from the convolution's output channels.
    """

    def __init__(self, conv: Module, out_channels: int, activation: str | None = "relu6", dtype=None):
        super().__init__()
        if activation not in (None, "relu6", "relu"):
            raise ValueError(f"ConvBNAct: activation must be 'relu6', 'relu' or None, got {activation!r}")
        if not isinstance(conv, Module):
            raise TypeError(f"ConvBNAct: conv must be a Module, got {type(conv).__name__}")
        conv_dtype = conv.param_dtype()
        dt = resolve_dtype(dtype if dtype is not None else (conv_dtype or "float32"))
        if conv_dtype is not None and conv_dtype != dt:
            raise TypeError(f"ConvBNAct: dtype={dt} but the convolution's parameters are {conv_dtype}")
        conv_out = getattr(conv, "out_channels", getattr(conv, "channels", None))
        if conv_out is not None and conv_out != out_channels:
            raise ValueError(f"ConvBNAct: out_channels={out_channels} but the convolution {conv!r} gives "
                             f"{conv_out} channels")
        self.activation = activation
        setattr(self, "0", conv)
        setattr(self, "1", BatchNorm2d(out_channels, dtype=dt))
        if activation is not None:
            setattr(self, "2", ReLU6() if activation == "relu6" else ReLU())
        object.__setattr__(self, "_cache", None)
        object.__setattr__(self, "_ops", None)
        object.__setattr__(self, "_out_shape", None)
        object.__setattr__(self, "_out_dtype", None)

    @property
    def conv(self) -> Module:
        return self._modules["0"]

    @property
    def bn(self) -> BatchNorm2d:
        return self._modules["1"]

    def check_input(self, x, finite: bool = True):
        return self.conv.check_input(x, finite=finite)

    def extra_repr(self):
        return f"activation={self.activation}"

    def forward(self, x, residual=None):
        h = self.conv(x)
        bn, backend = self.bn, ops()
        check_array(h, self.label, channels=bn.num_features, finite=False, what="convolution output")
        if bn.training:
            _check_batch_statistics(h, self.label)
        if residual is not None:
            check_array(residual, self.label, dtype=h.dtype, finite=False, what="residual")
            if residual.shape != h.shape:
                raise ValueError(f"{self.label}: expected a residual of shape {h.shape} (the output's shape), "
                                 f"got {residual.shape}")
        out, cache = backend.batchnorm_act_forward(h, bn.weight.data, bn.bias.data, bn.running_mean,
                                                   bn.running_var, bn.training, bn.momentum, bn.eps,
                                                   self.activation, residual)
        if bn.training:                      # the BatchNorm child's mode decides, as in torchvision
            bn.num_batches_tracked += 1
        object.__setattr__(self, "_cache", cache)
        object.__setattr__(self, "_ops", backend)
        object.__setattr__(self, "_out_shape", out.shape)
        object.__setattr__(self, "_out_dtype", out.dtype)
        return out

    def backward(self, dout):
        cache = self._need_cache(self._cache)
        self._check_dout(dout, self._out_shape, self._out_dtype)
        dh, dgamma, dbeta, _ = self._ops.batchnorm_act_backward(dout, cache)
        self.bn.weight.grad += dgamma
        self.bn.bias.grad += dbeta
        return self.conv.backward(dh)
