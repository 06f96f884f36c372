"""Memory estimates from a configuration: exact parameter and buffer counts, activations near the measured peak,
and work that cannot fit refused before it starts."""
import tracemalloc

import numpy as np
import pytest

import numpymnv2 as mn
from numpymnv2._memory import InsufficientMemoryError, check_memory, format_bytes
from numpymnv2.models.footprint import check_batch_fits, check_model_fits, mobilenetv2_footprint
from numpymnv2.models.mobilenetv2 import CIFAR_SETTING


@pytest.mark.parametrize("width", [0.35, 1.0, 1.4])
@pytest.mark.parametrize("cifar", [False, True])
def test_counts_are_those_of_the_built_model(width, cifar):
    kwargs = dict(stem_stride=1, inverted_residual_setting=CIFAR_SETTING) if cifar else {}
    model = mn.MobileNetV2(num_classes=7, width_mult=width, **kwargs)
    fp = mobilenetv2_footprint(**model.config, resolution=40)
    assert fp.parameters == model.num_parameters()
    assert fp.buffers == sum(b.size for _, b in model.named_buffers())
    assert fp.itemsize == 4 and fp.weight_bytes == 4 * (fp.parameters + fp.buffers)


def test_activation_estimate_is_near_the_measured_peak_of_a_training_step():
    model = mn.MobileNetV2(num_classes=10, width_mult=0.35).train()
    x = np.random.default_rng(0).standard_normal((8, 48, 48, 3)).astype(np.float32)
    # one whole step first: the caches of a previous pass exist, as in training, and Numba has compiled the
    # kernels (compiling on a cold cache allocates far more Python memory than the step, and tracemalloc sees it)
    model.backward(mn.softmax_cross_entropy(model(x), np.arange(8))[1])
    model.zero_grad()
    model(x)
    tracemalloc.start()
    loss, dlogits = mn.softmax_cross_entropy(model(x), np.arange(8))
    model.backward(dlogits)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    estimate = mobilenetv2_footprint(**model.config, resolution=48).activations_per_image * 8 * 4
    assert 0.5 < peak / estimate < 1.5


def test_too_wide_or_too_large_batches_are_refused_before_any_allocation():
    with pytest.raises(InsufficientMemoryError, match=r"width_mult 1000000000.0 .* parameters.*smaller width"):
        check_model_fits(dict(num_classes=10, width_mult=1e9))
    model = mn.MobileNetV2(num_classes=10, width_mult=0.35)
    with pytest.raises(InsufficientMemoryError, match=r"batch of 10000000 images of 224x224.*--batch-size"):
        check_batch_fits(model, (10 ** 7, 224, 224, 3), training=True)
    check_batch_fits(model, (2, 32, 32, 3), training=True)
    check_batch_fits(mn.nn.Sequential(), (10 ** 9, 224, 224, 3), training=True)   # no config: not estimated
    with pytest.raises(InsufficientMemoryError, match="needs about 1.0e\\+30 bytes"):
        check_memory(10 ** 30, "this", "less")
    assert format_bytes(1500) == "1.5 kB" and format_bytes(12) == "12 bytes"
