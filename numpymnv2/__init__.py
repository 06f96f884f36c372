"""numpymnv2: MobileNetV2 (Sandler et al. 2018, arXiv:1801.04381) from scratch in NumPy and Numba."""
from numpymnv2.backend import get_backend, set_backend, use_backend
from numpymnv2.nn.module import Module, Parameter, Sequential

__version__ = "0.1.0"
