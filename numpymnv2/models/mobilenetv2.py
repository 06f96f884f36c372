"""MobileNetV2 (Sandler et al. 2018, arXiv:1801.04381): the inverted residual block and the network.

The architecture, the channel rounding and the initialisation are torchvision's ``mobilenet_v2``, and so are the
names of the children, so ``model.state_dict()`` has exactly torchvision's keys (``features.3.conv.1.0.weight``)
and weights move both ways through :mod:`numpymnv2.interop` (only the array layouts differ: NHWC here).

Paper Table 2, one row per sequence of ``n`` identical blocks, the first with stride ``s``::

    input        operator         t     c     n   s
    224^2 x 3    conv2d 3x3       -     32    1   2
    112^2 x 32   bottleneck       1     16    1   1
    112^2 x 16   bottleneck       6     24    2   2
    56^2 x 24    bottleneck       6     32    3   2
    28^2 x 32    bottleneck       6     64    4   2
    14^2 x 64    bottleneck       6     96    3   1
    14^2 x 96    bottleneck       6     160   3   2
    7^2 x 160    bottleneck       6     320   1   1
    7^2 x 320    conv2d 1x1       -     1280  1   1
    7^2 x 1280   avgpool 7x7      -     -     1   -
    1 x 1 x 1280 conv2d 1x1       -     k     -   -      (here a Linear layer after dropout, as torchvision)
"""
from __future__ import annotations

import numpy as np

from numpymnv2._checks import check_array, check_hyperparameter, check_probability, resolve_dtype
from numpymnv2.nn.layers import (BatchNorm2d, BatchNormAct2d, Conv2d, ConvBNAct, DepthwiseConv2d, Dropout,
                                 GlobalAvgPool2d, Linear, PointwiseConv2d)
from numpymnv2.nn.module import Module, Sequential, backward_call

# t (expansion factor), c (output channels), n (repeats), s (stride of the first repeat): paper Table 2
DEFAULT_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)

# For 32x32 images (CIFAR): with the stem at stride 1 and the second row at stride 1 the network downsamples
# 8x instead of 32x, so the last feature map is 4x4 rather than 1x1.
CIFAR_SETTING = ((1, 16, 1, 1),) + ((6, 24, 2, 1),) + DEFAULT_SETTING[2:]

MIN_RESOLUTION = 32


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to the nearest multiple of ``divisor``, never going more than 10% below ``v``.

    The rule of the TensorFlow reference implementation, used by torchvision for the width multiplier:
    ``make_divisible(32 * 0.35) = 16``, ``make_divisible(1280 * 1.4) = 1792``.
    """
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:     # rounding down removed more than 10%: go one step up
        new_v += divisor
    return new_v


def _generator(seed, rng) -> np.random.Generator:
    if rng is not None:
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        return rng
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


class InvertedResidual(Module):
    """The MobileNetV2 bottleneck block (paper Section 3.3, Figure 3b and Table 1).

    Children, named as torchvision's so the state-dict keys agree::

        t != 1:  conv.0 = ConvBNAct(PointwiseConv2d(inp, hidden))   # pw: expand by t, BN, ReLU6
                 conv.1 = ConvBNAct(DepthwiseConv2d(hidden, 3, s))  # dw: 3x3 per channel, BN, ReLU6
                 conv.2 = PointwiseConv2d(hidden, oup)              # pw-linear: project back down
                 conv.3 = BatchNorm2d(oup)                          #   ... and normalise, no activation
        t == 1:  conv.0 = dw, conv.1 = pw-linear, conv.2 = BN       # no expansion layer

    with ``hidden = round(inp * t)``. The shortcut ``out = x + F(x)`` joins the two bottlenecks when the
    block keeps the shape (stride 1 and ``inp == oup``; ``use_res_connect``); the last BatchNorm adds it in its
    own pass over memory (``conv[-1](z, residual=x)``).

    Parameters
    ----------
    inp, oup : int
        Input and output channels.
    stride : int
        Stride of the depthwise convolution (1 or 2 in the paper).
    expand_ratio : int
        The expansion factor ``t``.
    linear_bottleneck : bool, keyword-only
        True (the paper): no activation after the projection. False makes ``conv[-1]`` a
        :class:`~numpymnv2.nn.BatchNormAct2d` with ReLU6, the "non-linear bottleneck" ablation of paper Figure 6a.
    use_shortcut : bool, keyword-only
        True (the paper): residual connection where shapes allow. False removes every shortcut, the ablation of
        paper Figure 6b.
    seed, rng : int or numpy.random.Generator, keyword-only
        Source of the initial weights (``rng`` wins when both are given).
    dtype : "float32" or "float64", keyword-only

    Notes
    -----
    Forward, with ``h`` the expanded (``hidden``-channel) tensor and ``z`` the projection::

        h   = relu6(BN(x T_expand^T))            (absent when t = 1: h = x)
        h   = relu6(BN(depthwise(h)))
        z   = h T_project^T
        out = BN(z) + x                          (+ x only when use_res_connect)

    Backward: the add copies ``dout`` to both of its inputs, so the gradient reaching ``x`` is the sum of what
    came back through the branch and ``dout`` itself, ``dL/dx = dL/dx|_branch + dL/dout``; the shortcut hands
    gradient to earlier layers undiminished, which is why the paper connects the bottlenecks (Section 3.3).
    """

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int, *, linear_bottleneck: bool = True,
                 use_shortcut: bool = True, seed=None, rng=None, dtype="float32"):
        super().__init__()
        where = "InvertedResidual"
        inp, oup = check_hyperparameter(inp, "inp", where), check_hyperparameter(oup, "oup", where)
        stride = check_hyperparameter(stride, "stride", where)
        expand_ratio = check_hyperparameter(expand_ratio, "expand_ratio", where)
        dt = resolve_dtype(dtype)
        rng = _generator(seed, rng)
        self.inp, self.oup, self.stride, self.expand_ratio = inp, oup, stride, expand_ratio
        self.linear_bottleneck, self.use_shortcut = bool(linear_bottleneck), bool(use_shortcut)
        self.use_res_connect = self.use_shortcut and stride == 1 and inp == oup
        hidden_dim = int(round(inp * expand_ratio))
        self.hidden_dim = hidden_dim

        layers = []
        if expand_ratio != 1:
            # pw
            layers.append(ConvBNAct(PointwiseConv2d(inp, hidden_dim, rng=rng, dtype=dt), hidden_dim, "relu6"))
        # dw
        layers.append(ConvBNAct(DepthwiseConv2d(hidden_dim, 3, stride, 1, rng=rng, dtype=dt), hidden_dim, "relu6"))
        # pw-linear: no activation after the projection (the linear bottleneck), unless the ablation asks for one
        layers.append(PointwiseConv2d(hidden_dim, oup, rng=rng, dtype=dt))
        layers.append(BatchNorm2d(oup, dtype=dt) if self.linear_bottleneck else BatchNormAct2d(oup, "relu6", dtype=dt))
        self.conv = Sequential(*layers)

    def extra_repr(self) -> str:
        text = (f"{self.inp}, {self.oup}, stride={self.stride}, expand_ratio={self.expand_ratio}, "
                f"use_res_connect={self.use_res_connect}")
        if not self.linear_bottleneck:
            text += ", linear_bottleneck=False"
        if not self.use_shortcut:
            text += ", use_shortcut=False"
        return text

    def check_input(self, x, finite: bool = True):
        return check_array(x, self.label, ndim=4, channels=self.inp, dtype=self.param_dtype(), finite=finite)

    def forward(self, x):
        *branch, norm = self.conv          # branch: [pw,] dw, pw-linear; norm: the projection's BatchNorm
        z = x
        for layer in branch:
            z = layer(z)
        if self.use_res_connect:
            return norm(z, residual=x)     # BN(z) + x, the add done in the BatchNorm's pass
        return norm(z)

    def backward(self, dout):
        *branch, norm = self.conv
        with backward_call(self, dout):
            # forward was: out = BN(z) [+ x]
            dz = norm.backward(dout)
            # forward was: z = pw-linear(dw(pw(x)))
            for layer in reversed(branch):
                dz = layer.backward(dz)
        if self.use_res_connect:
            # x fed both the branch and the add: dL/dx = dL/dx|_branch + dL/dout
            return dz + dout
        return dz


class MobileNetV2(Module):
    """MobileNetV2 for images ``(N, H, W, 3)``, the architecture of paper Table 2 as built by torchvision.

    Parameters
    ----------
    num_classes : int
        Outputs of the classifier.
    width_mult : float
        The width multiplier: every layer's channels are ``make_divisible(c * width_mult, round_nearest)``;
        the last layer's 1280 channels are scaled only when ``width_mult > 1`` (paper Section 6.1).
    round_nearest : int
        Channel counts are multiples of this (8).
    dropout : float
        Dropout probability before the classifier (0.2). Use 0 (or ``eval()``) for deterministic outputs.
    inverted_residual_setting : sequence of (t, c, n, s), optional
        Replaces :data:`DEFAULT_SETTING`; each row is ``n`` blocks with expansion ``t`` and ``c`` output channels,
        the first with stride ``s``.
    stem_stride : int
        Stride of the first 3x3 convolution (2; 1 for small images, see :meth:`cifar`).
    seed : int or numpy.random.Generator
        All initial weights are drawn from ``numpy.random.default_rng(seed)``, in module order.
    dtype : "float32" or "float64"
        Of every parameter and buffer; inputs must have the same dtype.
    linear_bottleneck, use_shortcut : bool
        Ablation switches of paper Figure 6 applied to every block (see :class:`InvertedResidual`).

    Attributes
    ----------
    features : Sequential
        ``features.0`` the stem (3x3 convolution, BN, ReLU6), ``features.1`` to ``features.17`` the
        :class:`InvertedResidual` blocks (for the default table), ``features.18`` the 1x1 convolution to
        ``last_channel``, BN, ReLU6.
    pool : GlobalAvgPool2d
    classifier : Sequential
        ``classifier.0`` :class:`~numpymnv2.nn.Dropout`, ``classifier.1`` :class:`~numpymnv2.nn.Linear`.
    config : dict
        The constructor arguments (without the seed), enough to rebuild the architecture.

    Notes
    -----
    For a training loop:

    * ``model(x)`` keeps what backward needs; ``model.backward(dlogits)`` adds into every ``Parameter.grad``
      and returns ``dL/dx`` of shape ``(N, H, W, 3)``. Call ``zero_grad()`` between steps.
    * ``state_dict()`` holds the parameters and the BatchNorm buffers under torchvision's keys. The dropout
      mask comes from ``model.classifier[0].generator`` (a ``numpy.random.Generator`` seeded from ``seed``);
      save ``generator.bit_generator.state`` with a checkpoint, and restore it, to resume a run exactly.
    * Training-mode BatchNorm needs more than one value per channel at the last layers: with the ImageNet
      strides a 32x32 input ends at 1x1, so each of those BatchNorms normalises just N values per channel.
      That works for N >= 2 but is badly conditioned for small batches; for small images prefer :meth:`cifar`
      (a 32x32 input then ends at 4x4).
    """

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, round_nearest: int = 8,
                 dropout: float = 0.2, inverted_residual_setting=None, stem_stride: int = 2, seed=0,
                 dtype="float32", linear_bottleneck: bool = True, use_shortcut: bool = True):
        super().__init__()
        where = "MobileNetV2"
        num_classes = check_hyperparameter(num_classes, "num_classes", where)
        round_nearest = check_hyperparameter(round_nearest, "round_nearest", where)
        stem_stride = check_hyperparameter(stem_stride, "stem_stride", where)
        if isinstance(width_mult, (bool, np.bool_)) or not isinstance(width_mult, (int, float, np.floating, np.integer)):
            raise TypeError(f"{where}: expected a number for width_mult, got {width_mult!r}")
        if not width_mult > 0 or not np.isfinite(width_mult):
            raise ValueError(f"{where}: expected a positive width_mult, got {width_mult!r}")
        dropout = check_probability(dropout, "dropout", where)
        setting = validate_setting(DEFAULT_SETTING if inverted_residual_setting is None
                                   else inverted_residual_setting)
        dt = resolve_dtype(dtype)
        rng = _generator(seed, None)
        object.__setattr__(self, "config", dict(
            num_classes=num_classes, width_mult=float(width_mult), round_nearest=round_nearest,
            dropout=float(dropout), inverted_residual_setting=[list(row) for row in setting],
            stem_stride=stem_stride, dtype=dt.name, linear_bottleneck=bool(linear_bottleneck),
            use_shortcut=bool(use_shortcut)))
        self.num_classes, self.width_mult = num_classes, float(width_mult)

        input_channel = make_divisible(32 * width_mult, round_nearest)
        self.last_channel = make_divisible(1280 * max(1.0, width_mult), round_nearest)
        layers = [ConvBNAct(Conv2d(3, input_channel, 3, stem_stride, 1, rng=rng, dtype=dt), input_channel, "relu6")]
        for t, c, n, s in setting:
            output_channel = make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                layers.append(InvertedResidual(input_channel, output_channel, s if i == 0 else 1, t,
                                               linear_bottleneck=linear_bottleneck, use_shortcut=use_shortcut,
                                               rng=rng, dtype=dt))
                input_channel = output_channel
        layers.append(ConvBNAct(PointwiseConv2d(input_channel, self.last_channel, rng=rng, dtype=dt),
                                self.last_channel, "relu6"))
        self.features = Sequential(*layers)
        self.pool = GlobalAvgPool2d()
        # dropout gets its own stream, so changing the dropout rate never changes the initial weights
        self.classifier = Sequential(Dropout(dropout, rng=rng.spawn(1)[0]),
                                     Linear(self.last_channel, num_classes, rng=rng, dtype=dt))
        self.set_names()

    @classmethod
    def cifar(cls, num_classes: int = 10, width_mult: float = 1.0, **kwargs) -> "MobileNetV2":
        """The common CIFAR variant for 32x32 images: stem stride 1 and the second row (24 channels) at stride 1.

        The network then downsamples by 8 instead of 32 (32x32 -> 4x4 before pooling); the weights have the same
        keys and shapes as the ImageNet network of the same width, only the strides differ.
        """
        kwargs.setdefault("stem_stride", 1)
        kwargs.setdefault("inverted_residual_setting", CIFAR_SETTING)
        return cls(num_classes=num_classes, width_mult=width_mult, **kwargs)

    def extra_repr(self) -> str:
        text = f"num_classes={self.num_classes}, width_mult={self.width_mult}, stem_stride={self.config['stem_stride']}"
        if self.config["inverted_residual_setting"] != [list(row) for row in DEFAULT_SETTING]:
            text += ", inverted_residual_setting=custom"
        return text

    def check_input(self, x, finite: bool = True):
        x = check_array(x, self.label, ndim=4, channels=3, dtype=self.param_dtype(), finite=finite)
        H, W = x.shape[1:3]
        if H < MIN_RESOLUTION or W < MIN_RESOLUTION:
            raise ValueError(f"{self.label}: expected images of at least {MIN_RESOLUTION}x{MIN_RESOLUTION} "
                             f"pixels, got H={H}, W={W} (input shape {x.shape}); upsample smaller images")
        return x

    def forward(self, x):
        x = self.features(x)
        x = self.pool(x)
        return self.classifier(x)

    def backward(self, dlogits):
        with backward_call(self, dlogits):
            dout = self.classifier.backward(dlogits)
            dout = self.pool.backward(dout)
            return self.features.backward(dout)

    def to(self, dtype) -> "MobileNetV2":
        """Convert parameters and buffers to ``dtype`` in place (see :meth:`Module.to`); the config follows."""
        super().to(dtype)
        self.config["dtype"] = resolve_dtype(dtype).name
        return self

    def fuse(self):
        """An inference copy with every BatchNorm folded into its convolution; see :func:`fold_batchnorm`."""
        from numpymnv2.models.fuse import fold_batchnorm
        return fold_batchnorm(self)


def validate_setting(setting) -> tuple:
    """Check an ``inverted_residual_setting`` table and return it as a tuple of ``(t, c, n, s)`` int tuples."""
    where = "MobileNetV2"
    try:
        rows = [tuple(row) for row in setting]
    except TypeError:
        raise ValueError(f"{where}: inverted_residual_setting must be a sequence of (t, c, n, s) rows, got "
                         f"{setting!r}") from None
    if not rows:
        raise ValueError(f"{where}: inverted_residual_setting is empty; it needs at least one (t, c, n, s) row")
    out = []
    for i, row in enumerate(rows):
        if len(row) != 4:
            raise ValueError(f"{where}: inverted_residual_setting row {i} must have 4 entries (t, c, n, s), got "
                             f"{row!r}")
        out.append(tuple(check_hyperparameter(v, f"entry {name!r} of inverted_residual_setting row {i}", where)
                         for v, name in zip(row, "tcns")))
    return tuple(out)


# The stride layouts every command offers as ``--arch`` (train, summary, gradcheck, ablate, export): one table,
# so the verbs cannot drift apart. name -> (stem_stride, inverted_residual_setting, what it is, for --help)
ARCHS = {
    "imagenet": (2, DEFAULT_SETTING, "the paper's and torchvision's strides (32x downsampling: a 224 px image ends "
                                     "at 7x7, a 32 px one at 1x1)"),
    "small": (1, DEFAULT_SETTING, "the stem at stride 1 (16x: a 32 px image ends at 2x2)"),
    "cifar": (1, CIFAR_SETTING, "the stem and the 24-channel stage at stride 1 (8x: a 32 px image ends at 4x4; "
                                "slowest)"),
}


def arch_kwargs(arch: str) -> dict:
    """The MobileNetV2 arguments of an ``--arch`` name: ``{"stem_stride": ..., "inverted_residual_setting": ...}``.

    >>> MobileNetV2(num_classes=10, width_mult=0.35, **arch_kwargs("small"))   # what `numpymnv2 train` builds
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHS)}")
    stem_stride, setting, _ = ARCHS[arch]
    return {"stem_stride": stem_stride, "inverted_residual_setting": [list(row) for row in setting]}


def arch_of(config: dict) -> str | None:
    """The ``--arch`` name whose strides a ``MobileNetV2.config`` (or checkpoint model record) has; None if custom."""
    rows = [list(r) for r in config.get("inverted_residual_setting") or DEFAULT_SETTING]
    for name, (stem_stride, setting, _) in ARCHS.items():
        if config.get("stem_stride", 2) == stem_stride and rows == [list(r) for r in setting]:
            return name
    return None
