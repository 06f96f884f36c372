"""The fast backend: Numba kernels with the same contract as the reference operations in
:mod:`numpymnv2.functional`.

Only the memory-bound operations have kernels here: the depthwise convolution (:mod:`.depthwise`), BatchNorm
(:mod:`.batchnorm`), BatchNorm + activation + residual in one pass (:mod:`.fused`), ReLU6 (:mod:`.activation`)
and the patch gathering around the stem's product (:mod:`.conv2d`). Every product (the pointwise convolutions,
:mod:`.pointwise`; the stem; the classifier, :mod:`.linear`) goes through :mod:`.gemm`, which splits it over
Numba's threads with the OpenMP layer (the default) and is NumPy's ``matmul`` under
``NUMPYMNV2_THREADING=workqueue``. :mod:`numpymnv2.ops` is the
table of which function each backend runs. :mod:`.optim` holds the SGD update in one pass.
Importing this package configures the thread pools once (see :mod:`numpymnv2.kernels._threads`) and lets glibc
keep freed big arrays for the next step (see :mod:`numpymnv2.kernels._memory`).
"""
from numpymnv2.kernels import _memory, _threads

_threads.configure()
_memory.configure()

from numpymnv2.kernels.activation import relu6_backward, relu6_forward  # noqa: E402
from numpymnv2.kernels.batchnorm import batchnorm_backward, batchnorm_forward  # noqa: E402
from numpymnv2.kernels.conv2d import conv2d_backward, conv2d_forward  # noqa: E402
from numpymnv2.kernels.depthwise import depthwise_conv2d_backward, depthwise_conv2d_forward  # noqa: E402
from numpymnv2.kernels.fused import batchnorm_act_backward, batchnorm_act_forward  # noqa: E402

__all__ = ["batchnorm_act_backward", "batchnorm_act_forward", "batchnorm_backward", "batchnorm_forward",
           "conv2d_backward", "conv2d_forward", "depthwise_conv2d_backward", "depthwise_conv2d_forward",
           "relu6_backward", "relu6_forward"]
