"""The fast backend: Numba kernels behind the same contract as :mod:`numpymnv2.functional`.

Every name of the reference backend is exported here; an operation without a faster kernel is the reference
one (the pointwise convolutions and the classifier are BLAS matrix products in both). Importing this package
configures the thread pools once (see :mod:`numpymnv2.kernels._threads`).
"""
from numpymnv2.kernels import _threads

_threads.configure()

from numpymnv2.functional import *  # noqa: E402,F401,F403  the reference wherever no kernel overrides it
from numpymnv2.functional import __all__  # noqa: E402,F401
from numpymnv2.kernels.activation import relu6_backward, relu6_forward  # noqa: E402,F401
from numpymnv2.kernels.batchnorm import batchnorm_backward, batchnorm_forward  # noqa: E402,F401
from numpymnv2.kernels.depthwise import depthwise_conv2d_backward, depthwise_conv2d_forward  # noqa: E402,F401
from numpymnv2.kernels.fused import batchnorm_act_backward, batchnorm_act_forward  # noqa: E402,F401
