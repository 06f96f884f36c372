"""How much memory a MobileNetV2 needs, worked out from its configuration before anything is allocated.

``numpymnv2 train --width 1e9`` or ``--batch-size 100000`` should be refused at once with the figure it would
need, not after seconds of work end in a ``MemoryError`` (or, with the operating system's overcommit, in the
whole machine swapping). These counts follow the constructor in :mod:`numpymnv2.models.mobilenetv2` layer by
layer, without building it, so they cost nothing for any width:

* parameters: convolutions, BatchNorm weight and bias, the classifier (exactly ``model.num_parameters()``);
* buffers: BatchNorm running mean and variance (and one ``num_batches_tracked`` each);
* activations: every layer's output for one image (convolution, BatchNorm, ReLU6, pooling, classifier), the
  sum of the output sizes ``numpymnv2 summary --leaves`` lists. A training step keeps about that many values
  per image for its backward pass (measured with ``tracemalloc``: the peak of a forward and backward pass is
  0.8-0.9 times this count for widths 0.35-1.0 at 32-96 pixels), so it is the activation memory estimate.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from numpymnv2._memory import check_memory
from numpymnv2.models.mobilenetv2 import DEFAULT_SETTING, make_divisible


@dataclass(frozen=True)
class Footprint:
    """Counts of values (not bytes) of one MobileNetV2 configuration; ``itemsize`` bytes each."""
    parameters: int
    buffers: int
    activations_per_image: int      # 0 when no resolution was given
    itemsize: int

    @property
    def weight_bytes(self) -> int:
        """Parameters and buffers: the size of ``state_dict()``."""
        return (self.parameters + self.buffers) * self.itemsize

    def training_bytes(self, batch_size: int, optimizer_slots: int = 2) -> int:
        """A training step: weights, gradients, optimizer state (``optimizer_slots`` arrays per parameter, 2 for
        Adam) and the activations of ``batch_size`` images."""
        params = self.parameters * (2 + optimizer_slots)
        return (params + self.buffers + self.activations_per_image * batch_size) * self.itemsize

    def inference_bytes(self, batch_size: int) -> int:
        return (self.parameters + self.buffers + self.activations_per_image * batch_size) * self.itemsize


def mobilenetv2_footprint(num_classes: int = 1000, width_mult: float = 1.0, round_nearest: int = 8,
                          inverted_residual_setting=None, stem_stride: int = 2, dtype="float32",
                          resolution=None, **_ignored) -> Footprint:
    """The :class:`Footprint` of ``MobileNetV2(**config)`` (extra keys of a config, e.g. ``dropout``, ignored).

    Parameters
    ----------
    num_classes, width_mult, round_nearest, inverted_residual_setting, stem_stride, dtype
        As :class:`~numpymnv2.models.MobileNetV2` takes them (not validated here: build the model for that).
    resolution : int or (int, int), optional
        Input height and width, for the activation count.
    """
    setting = DEFAULT_SETTING if inverted_residual_setting is None else inverted_residual_setting
    H, W = _resolution(resolution)
    c = make_divisible(32 * width_mult, round_nearest)
    last = make_divisible(1280 * max(1.0, width_mult), round_nearest)
    params = 27 * c + 2 * c                        # stem 3x3x3 convolution and its BatchNorm
    buffers = 2 * c + 1
    H, W = _conv_out(H, stem_stride), _conv_out(W, stem_stride)
    acts = 3 * H * W * c                           # convolution, BatchNorm and ReLU6 outputs
    for t, out, n, s in setting:
        oup = make_divisible(out * width_mult, round_nearest)
        for i in range(int(n)):
            stride = int(s) if i == 0 else 1
            hidden = int(round(c * t))
            if t != 1:                             # pw expand + BN
                params += c * hidden + 2 * hidden
                buffers += 2 * hidden + 1
                acts += 3 * H * W * hidden
            H, W = _conv_out(H, stride), _conv_out(W, stride)
            params += 9 * hidden + 2 * hidden      # dw 3x3 + BN
            buffers += 2 * hidden + 1
            params += hidden * oup + 2 * oup       # pw-linear + BN
            buffers += 2 * oup + 1
            acts += 3 * H * W * hidden + 2 * H * W * oup    # dw (+BN+ReLU6), pw-linear (+BN)
            c = oup
    params += c * last + 2 * last                  # last 1x1 convolution + BN
    buffers += 2 * last + 1
    acts += 3 * H * W * last
    params += last * num_classes + num_classes     # classifier
    acts += 2 * last + num_classes                 # pooled features, dropout, logits
    itemsize = np.dtype(dtype).itemsize
    return Footprint(int(params), int(buffers), int(acts) if resolution is not None else 0, itemsize)


def _resolution(resolution) -> tuple[int, int]:
    if resolution is None:
        return 1, 1
    if isinstance(resolution, (int, np.integer)):
        return int(resolution), int(resolution)
    H, W = resolution
    return int(H), int(W)


def _conv_out(size: int, stride: int) -> int:
    """A 3x3 convolution with padding 1 (every strided layer of MobileNetV2)."""
    return max(1, (size - 1) // int(stride) + 1)


def check_model_fits(config: dict, what: str = "MobileNetV2") -> None:
    """Refuse to build a MobileNetV2 of this configuration (its constructor arguments) when its weights and
    their gradients alone would not fit in the memory available; raises ``InsufficientMemoryError``."""
    fp = mobilenetv2_footprint(**config)
    check_memory(2 * fp.weight_bytes, f"{what} with width_mult {config.get('width_mult', 1.0)} "
                 f"({fp.parameters:,} parameters and their gradients)", "choose a smaller width")


def check_batch_fits(model, batch_shape, training: bool,
                     advice: str = "use a smaller batch size (--batch-size) or resolution") -> None:
    """Refuse a forward (and backward) pass of ``model`` on a batch of ``batch_shape`` (N, H, W, C) before it
    starts, when its activations would not fit in the memory available; raises ``InsufficientMemoryError``
    ending with ``advice``.

    Only models that carry a MobileNetV2 ``config`` are estimated; others pass unchecked.
    """
    config = getattr(model, "config", None)
    if not isinstance(config, dict) or len(batch_shape) != 4:
        return
    N, H, W = (int(v) for v in batch_shape[:3])
    fp = mobilenetv2_footprint(**config, resolution=(H, W))
    step = "a training step" if training else "inference"
    check_memory(fp.activations_per_image * N * fp.itemsize,
                 f"{step} of MobileNetV2 width {config.get('width_mult')} on a batch of {N} images of {H}x{W}",
                 advice)
