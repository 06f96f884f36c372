"""numpymnv2: MobileNetV2 (Sandler et al. 2018, arXiv:1801.04381) from scratch in NumPy and Numba.

>>> import numpymnv2 as mn
>>> model = mn.MobileNetV2(num_classes=10, width_mult=0.35, seed=0)
>>> logits = model(x)                                        # x: (N, H, W, 3), H, W >= 32
>>> loss, dlogits = mn.softmax_cross_entropy(logits, labels)
>>> dx = model.backward(dlogits)                             # fills Parameter.grad, returns dL/dx

The readable NumPy operations are in :mod:`numpymnv2.functional`, the Numba ones in :mod:`numpymnv2.kernels`,
and :mod:`numpymnv2.ops` is the table of which one each backend runs; ``mn.set_backend("reference")`` runs the
whole network on the readable ones.
"""
import importlib

from numpymnv2.backend import get_backend, set_backend, use_backend
from numpymnv2.functional.loss import softmax_cross_entropy
from numpymnv2.gradcheck import GradcheckError, GradcheckResult, gradcheck
from numpymnv2.nn.module import Module, Parameter, Sequential

__version__ = "0.1.0"

# Imported on first use, so `import numpymnv2` stays light (the model table, Numba kernels, the trainer).
_LAZY = {
    "MobileNetV2": ("numpymnv2.models", "MobileNetV2"),
    "InvertedResidual": ("numpymnv2.models", "InvertedResidual"),
    "summary": ("numpymnv2.models", "summary"),
    "save_weights": ("numpymnv2.models", "save_weights"),
    "load_weights": ("numpymnv2.models", "load_weights"),
    "ops": ("numpymnv2.ops", None),
    "interop": ("numpymnv2.interop", None),
    "nn": ("numpymnv2.nn", None),
    "functional": ("numpymnv2.functional", None),
    "kernels": ("numpymnv2.kernels", None),
    "optim": ("numpymnv2.optim", None),
    "data": ("numpymnv2.data", None),
    "train": ("numpymnv2.train", None),
    "experiments": ("numpymnv2.experiments", None),
}

__all__ = ["GradcheckError", "GradcheckResult", "InvertedResidual", "MobileNetV2", "Module", "Parameter",
           "Sequential", "get_backend", "gradcheck", "load_weights", "save_weights", "set_backend",
           "softmax_cross_entropy", "summary", "use_backend"]


def __getattr__(name):
    if name in _LAZY:
        module_name, attr = _LAZY[name]
        module = importlib.import_module(module_name)
        return module if attr is None else getattr(module, attr)
    raise AttributeError(f"module 'numpymnv2' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
