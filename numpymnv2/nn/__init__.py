"""Modules: parameters, modes and caches around the operations of :mod:`numpymnv2.ops`."""
from numpymnv2.nn.layers import (BatchNorm2d, BatchNormAct2d, Conv2d, ConvBNAct, DepthwiseConv2d, Dropout,
                                 GlobalAvgPool2d, Linear, PointwiseConv2d, ReLU, ReLU6)
from numpymnv2.nn.module import Module, Parameter, Sequential

__all__ = ["BatchNorm2d", "BatchNormAct2d", "Conv2d", "ConvBNAct", "DepthwiseConv2d", "Dropout", "GlobalAvgPool2d",
           "Linear", "Module", "Parameter", "PointwiseConv2d", "ReLU", "ReLU6", "Sequential"]
