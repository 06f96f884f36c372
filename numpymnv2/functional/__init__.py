"""The reference implementation: every operation of MobileNetV2 as readable NumPy, forward and backward.

Convention, the same for every operation in this package:

* ``out, cache = <op>_forward(x, <parameters>, <hyper-parameters>)`` computes the output and returns, in a small
  ``NamedTuple``, what the backward pass needs;
* ``dx, d<param>, ... = <op>_backward(dout, cache)`` returns the gradient of the loss with respect to each
  array input, given ``dout = dL/dout``.

Activations are NHWC ``(N, H, W, C)`` arrays: each pixel is a ``C``-dimensional vector, the paper's view of a
layer as ``h * w`` pixels of dimension ``d``. Every function preserves its input's dtype (float32 or float64).
The fast backend (:mod:`numpymnv2.kernels`) exports the same names with the same contract.
"""
from numpymnv2.functional.activation import relu6_backward, relu6_forward, relu_backward, relu_forward
from numpymnv2.functional.batchnorm import batchnorm_backward, batchnorm_forward
from numpymnv2.functional.conv2d import conv2d_backward, conv2d_forward
from numpymnv2.functional.depthwise import depthwise_conv2d_backward, depthwise_conv2d_forward
from numpymnv2.functional.dropout import dropout_backward, dropout_forward
from numpymnv2.functional.fused import batchnorm_act_backward, batchnorm_act_forward
from numpymnv2.functional.linear import linear_backward, linear_forward
from numpymnv2.functional.loss import softmax_cross_entropy
from numpymnv2.functional.pointwise import pointwise_conv2d_backward, pointwise_conv2d_forward
from numpymnv2.functional.pooling import global_avg_pool_backward, global_avg_pool_forward
from numpymnv2.functional.residual import residual_add_backward, residual_add_forward

__all__ = [
    "batchnorm_act_backward", "batchnorm_act_forward", "batchnorm_backward", "batchnorm_forward",
    "conv2d_backward", "conv2d_forward", "depthwise_conv2d_backward", "depthwise_conv2d_forward",
    "dropout_backward", "dropout_forward", "global_avg_pool_backward", "global_avg_pool_forward",
    "linear_backward", "linear_forward", "pointwise_conv2d_backward", "pointwise_conv2d_forward",
    "relu6_backward", "relu6_forward", "relu_backward", "relu_forward", "residual_add_backward",
    "residual_add_forward", "softmax_cross_entropy",
]
