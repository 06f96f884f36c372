"""BatchNorm folding for inference: every BatchNorm merged into the convolution before it.

In evaluation mode BatchNorm is a fixed per-channel affine map of the convolution's output ``z = conv(x, w)``::

    BN(z) = gamma (z - running_mean) / sqrt(running_var + eps) + beta = scale z + (beta - scale running_mean)

with ``scale = gamma / sqrt(running_var + eps)``. A convolution is linear in its weight, so ``scale z`` is the
convolution with every output channel's filter multiplied by its ``scale``::

    w_folded = w * scale          (along the output-channel axis of each layout)
    b_folded = beta - scale * running_mean
    BN(conv(x, w)) = conv(x, w_folded) + b_folded

The design is deliberately small: :func:`fold_batchnorm` turns a trained :class:`MobileNetV2` into a
:class:`FoldedMobileNetV2`, a flat list of :class:`FoldedConv` steps (convolution, bias, optional ReLU6,
optional residual add) followed by pooling and the classifier. It is forward-only and has no modes; the original
model is not modified. Outputs equal the unfused model's evaluation-mode outputs up to float rounding.

How it runs: on the reference backend each step is the readable operation followed by NumPy's bias, clip and
add, as written in :meth:`FoldedMobileNetV2.forward_reference`. On the fast backend (the default) the
depthwise convolutions apply their bias and activation in their own kernel
(:func:`numpymnv2.kernels.inference.depthwise_bias_act`); after the stem's and each pointwise product, bias,
activation and shortcut add are one Numba pass in place (:func:`numpymnv2.kernels.inference.bias_act`), and
the last step's pass also pools. Every step writes into buffers allocated once per input shape and thread, and
the calls with their arguments are prepared then too (:class:`_Plan`), so a forward pass is a list of kernel
calls with little Python between them. This is the fastest inference numpymnv2 has; the exported ONNX graph
(:func:`numpymnv2.interop.to_onnx`) runs the same steps in onnxruntime.
"""
from __future__ import annotations

import threading
from typing import NamedTuple

import numpy as np

from numpymnv2.backend import get_backend
from numpymnv2.kernels import conv2d as fast_conv2d
from numpymnv2.kernels import gemm as fast_gemm
from numpymnv2.kernels import inference as fast_inference
from numpymnv2.nn.layers import BatchNorm2d, Conv2d, DepthwiseConv2d, PointwiseConv2d
from numpymnv2.ops import CONV2D, DEPTHWISE_CONV2D, POINTWISE_CONV2D


class FoldedConv(NamedTuple):
    """One convolution with its BatchNorm folded in: ``act(conv(x, weight) + bias) [+ shortcut]``."""
    name: str                 # the module it came from, e.g. "features.3.conv.1"
    kind: str                 # "conv2d" (weight (C_out, K, K, C_in)), "depthwise" ((K, K, C)), "pointwise"
    weight: np.ndarray        # in the layout of that kind, scaled by gamma / sqrt(running_var + eps)
    bias: np.ndarray          # (C_out,) beta - scale * running_mean
    stride: int
    padding: int
    activation: str | None    # "relu6", "relu" or None
    block_start: bool         # remember this step's input as the shortcut of a residual block
    add_residual: bool        # add the remembered shortcut after the activation


def _fold(name: str, conv, bn: BatchNorm2d, activation, block_start=False, add_residual=False) -> FoldedConv:
    dt = conv.weight.data.dtype
    scale = bn.weight.data.astype(np.float64) / np.sqrt(bn.running_var.astype(np.float64) + bn.eps)
    bias = (bn.bias.data - scale * bn.running_mean).astype(dt)
    w = conv.weight.data.astype(np.float64)
    if isinstance(conv, Conv2d):        # (C_out, K, K, C_in)
        kind, w, stride, padding = "conv2d", w * scale[:, None, None, None], conv.stride, conv.padding
    elif isinstance(conv, DepthwiseConv2d):   # (K, K, C): the channel axis is last
        kind, w, stride, padding = "depthwise", w * scale, conv.stride, conv.padding
    elif isinstance(conv, PointwiseConv2d):   # (C_out, C_in)
        kind, w, stride, padding = "pointwise", w * scale[:, None], 1, 0
    else:
        raise TypeError(f"fold_batchnorm: cannot fold a BatchNorm into {type(conv).__name__} ({name})")
    return FoldedConv(name, kind, np.ascontiguousarray(w.astype(dt)), bias, stride, padding, activation,
                      block_start, add_residual)


def _conv_bn_pairs(module, name: str) -> list[tuple[str, object, BatchNorm2d]]:
    """The (name, convolution, BatchNorm) pairs of ``module``'s leaves in the order they run; every convolution
    must be followed by a BatchNorm (as everywhere in MobileNetV2)."""
    leaves = [(f"{name}.{n}" if n else name, m) for n, m in module.named_modules() if not m._modules]
    pairs = []
    for (conv_name, conv), (bn_name, bn) in zip(leaves[::2], leaves[1::2]):
        if not isinstance(bn, BatchNorm2d):
            raise TypeError(f"fold_batchnorm: {conv_name} ({type(conv).__name__}) is followed by {bn_name} "
                            f"({type(bn).__name__}), not a BatchNorm2d to fold into it")
        pairs.append((conv_name, conv, bn))
    if len(leaves) % 2:
        raise TypeError(f"fold_batchnorm: {leaves[-1][0]} ({type(leaves[-1][1]).__name__}) has no BatchNorm2d after it")
    return pairs


def fold_batchnorm(model) -> "FoldedMobileNetV2":
    """Return an inference-only copy of a :class:`~numpymnv2.models.MobileNetV2` with its BatchNorms folded.

    Uses the running statistics (evaluation mode), whatever mode ``model`` is in; ``model`` is not changed.
    """
    from numpymnv2.models.mobilenetv2 import InvertedResidual, MobileNetV2

    if not isinstance(model, MobileNetV2):
        raise TypeError(f"fold_batchnorm: expected a MobileNetV2, got {type(model).__name__}")
    steps = []
    for i, unit in enumerate(model.features):
        res = isinstance(unit, InvertedResidual) and unit.use_res_connect
        pairs = _conv_bn_pairs(unit, f"features.{i}")
        for j, (name, conv, bn) in enumerate(pairs):
            steps.append(_fold(name, conv, bn, bn.activation, block_start=res and j == 0,
                               add_residual=res and j == len(pairs) - 1))
    linear = model.classifier[1]
    return FoldedMobileNetV2(steps, linear.weight.data.copy(), linear.bias.data.copy(), model)


def _output_shapes(steps, x_shape: tuple) -> list[tuple]:
    """The output shape ``(N, H_out, W_out, C_out)`` of every step for an input of shape ``x_shape``."""
    N, H, W, _ = x_shape
    shapes = []
    for step in steps:
        if step.kind != "pointwise":
            K = step.weight.shape[1] if step.kind == "conv2d" else step.weight.shape[0]
            H = (H + 2 * step.padding - K) // step.stride + 1
            W = (W + 2 * step.padding - K) // step.stride + 1
        shapes.append((N, H, W, step.bias.shape[0]))
    return shapes


def _slots(steps, shapes) -> tuple[list[int], list[int]]:
    """Which of three buffers each step writes, and how large each buffer must be (elements).

    A step writes a slot that holds neither its input (the previous step's output) nor the shortcut of the block
    it is in (both are read while it writes); three slots always suffice.
    """
    slot_of, sizes = [], [0, 0, 0]
    held_input = held_shortcut = None
    for step, shape in zip(steps, shapes):
        if step.block_start:
            held_shortcut = held_input
        slot = next(k for k in range(3) if k not in (held_input, held_shortcut))
        sizes[slot] = max(sizes[slot], int(np.prod(shape)))
        slot_of.append(slot)
        held_input = slot
        if step.add_residual:
            held_shortcut = None
    return slot_of, sizes


class _Plan:
    """The fast path of :class:`FoldedMobileNetV2` for one input shape and dtype, prepared once.

    Every step writes its output into one of three buffers (:func:`_slots`), so every array a kernel reads or
    writes is known before the first call: the plan is a list of calls ``(function, arguments)`` with their
    arguments bound, and a forward pass is the stem's patch gathering followed by those calls:

    - stem (conv2d): the product of the gathered patches with the folded weight into its buffer, then
      :func:`~numpymnv2.kernels.inference.bias_act` in place;
    - depthwise: :func:`~numpymnv2.kernels.inference.depthwise_bias_act` (convolution, bias and activation in
      one kernel) into its buffer;
    - pointwise: the BLAS product into its buffer, then bias, activation and the block's shortcut add in one
      pass in place (:func:`~numpymnv2.kernels.inference.bias_act`); the last one's pass also pools
      (:func:`~numpymnv2.kernels.inference.bias_act_pool`) into ``pooled`` and writes nothing else.

    The kernel calls come from the ``*_call`` functions of :mod:`numpymnv2.kernels.inference`, which check and
    bind the arguments the public functions would pass, once.
    """

    def __init__(self, model: "FoldedMobileNetV2", x_shape: tuple, dtype):
        steps = model.steps
        shapes = _output_shapes(steps, x_shape)
        slot_of, sizes = _slots(steps, shapes)
        slots = [np.empty(n, dtype=dtype) for n in sizes]
        outs = [slots[k][:int(np.prod(shape))].reshape(shape) for k, shape in zip(slot_of, shapes)]
        self.key = (tuple(x_shape), np.dtype(dtype))
        self.pooled = np.empty((x_shape[0], shapes[-1][-1]), dtype=dtype)
        stem = steps[0]
        if stem.kind != "conv2d":
            raise TypeError(f"FoldedMobileNetV2: expected the first step to be the stem conv2d, got {stem.kind}")
        self.stem_out = outs[0].reshape(-1, shapes[0][-1])
        self.calls = [fast_inference.bias_act_call(outs[0], stem.bias, stem.activation)]
        shortcut = None
        for i in range(1, len(steps)):
            step, x, out = steps[i], outs[i - 1], outs[i]
            if step.block_start:
                shortcut = x
            residual = shortcut if step.add_residual else None
            if step.kind == "depthwise":
                self.calls.append(fast_inference.depthwise_bias_act_call(
                    x, step.weight, step.stride, step.padding, step.bias, step.activation, out))
            elif step.kind == "pointwise":
                self.calls.append((fast_gemm.matmul, (x.reshape(-1, x.shape[-1]), model._pointwise_t[i],
                                               out.reshape(-1, out.shape[-1]), step.weight)))
                if i == len(steps) - 1:
                    self.calls.append(fast_inference.bias_act_pool_call(out, step.bias, step.activation,
                                                                        self.pooled))
                else:
                    self.calls.append(fast_inference.bias_act_call(out, step.bias, step.activation, residual))
            else:
                raise TypeError(f"FoldedMobileNetV2: unexpected {step.kind} step after the stem ({step.name})")
        if steps[-1].kind != "pointwise":
            raise TypeError("FoldedMobileNetV2: expected the last step to be a pointwise convolution")


class FoldedMobileNetV2:
    """MobileNetV2 for inference with BatchNorm folded into the convolutions (see :func:`fold_batchnorm`).

    ``folded(x)`` returns the logits ``(N, num_classes)`` of images ``x`` of shape ``(N, H, W, 3)``, validated
    as the original model validates them. Attributes: ``steps`` (list of :class:`FoldedConv`),
    ``classifier_weight`` ``(num_classes, last_channel)``, ``classifier_bias`` ``(num_classes,)``.

    On the fast backend (the default) it keeps, per thread, the plan and buffers of the last input shape it saw
    (:class:`_Plan`); the logits it returns are always a new array. The fast path reads the steps' weights
    when the model is built: after changing them in place, fold again.
    """

    def __init__(self, steps: list, classifier_weight: np.ndarray, classifier_bias: np.ndarray, source):
        self.steps = steps
        self.classifier_weight, self.classifier_bias = classifier_weight, classifier_bias
        self.config = dict(source.config)
        self._check = source.check_input     # the same input validation as the unfused model
        self._local = threading.local()      # .plan: the _Plan of this thread's last input shape
        # the fast path multiplies by each pointwise weight transposed, (C_in, C_out), stored contiguously:
        # OpenBLAS ran MobileNetV2's products 12-20% faster from it than from the transposed view T.T
        self._pointwise_t = [np.ascontiguousarray(s.weight.T) if s.kind == "pointwise" else None for s in steps]
        # and the stem's weight as the (K K C_in, C_out) matrix its gathered patches multiply
        self._stem_t = np.ascontiguousarray(steps[0].weight.reshape(steps[0].weight.shape[0], -1).T)

    def num_parameters(self) -> int:
        return int(sum(s.weight.size + s.bias.size for s in self.steps) + self.classifier_weight.size
                   + self.classifier_bias.size)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The logits of ``x``: :meth:`forward_fast` on the fast backend, :meth:`forward_reference` otherwise."""
        self._check(x)
        if get_backend() == "fast":
            return self.forward_fast(x)
        return self.forward_reference(x)

    def forward_reference(self, x: np.ndarray) -> np.ndarray:
        """Each step as the readable operation, then NumPy's bias, activation and residual add."""
        shortcut = None
        for step in self.steps:
            if step.block_start:
                shortcut = x
            if step.kind == "conv2d":
                y, _ = CONV2D.reference.forward(x, step.weight, step.stride, step.padding)
            elif step.kind == "depthwise":
                y, _ = DEPTHWISE_CONV2D.reference.forward(x, step.weight, step.stride, step.padding)
            else:
                y, _ = POINTWISE_CONV2D.reference.forward(x, step.weight)
            y += step.bias
            if step.activation == "relu6":
                np.clip(y, 0, 6, out=y)
            elif step.activation == "relu":
                np.maximum(y, 0, out=y)
            if step.add_residual:
                y += shortcut
            x = y
        pooled = x.mean(axis=(1, 2))
        return pooled @ self.classifier_weight.T + self.classifier_bias   # dropout is the identity at inference

    def forward_fast(self, x: np.ndarray) -> np.ndarray:
        """The same steps on the fast kernels, as prepared by this thread's :class:`_Plan` for ``x``'s shape:
        each convolution writes its buffer, with its bias, activation and residual add in the same kernel
        (depthwise) or in one pass in place after the product (stem, pointwise); the last pass pools."""
        plan = getattr(self._local, "plan", None)
        if plan is None or plan.key != (x.shape, x.dtype):
            plan = self._local.plan = _Plan(self, x.shape, x.dtype)
        stem = self.steps[0]
        cols = fast_conv2d.im2col(x, stem.weight.shape[1], stem.stride, stem.padding)
        fast_gemm.matmul(cols.reshape(plan.stem_out.shape[0], -1), self._stem_t, out=plan.stem_out)
        for function, args in plan.calls:
            function(*args)
        logits = fast_gemm.matmul(plan.pooled, self.classifier_weight.T, b_t=self.classifier_weight)
        logits += self.classifier_bias
        return logits

    def __repr__(self) -> str:
        return (f"FoldedMobileNetV2({len(self.steps)} folded convolutions, "
                f"num_classes={self.classifier_weight.shape[0]}, width_mult={self.config['width_mult']})")
