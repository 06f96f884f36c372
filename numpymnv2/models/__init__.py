"""MobileNetV2: the inverted residual block, the network, its summary, BatchNorm folding and weight files.

>>> from numpymnv2.models import MobileNetV2, summary
>>> model = MobileNetV2(num_classes=10, width_mult=0.35, seed=0)
>>> print(summary(model, resolution=224))
"""
from numpymnv2.models.fuse import FoldedMobileNetV2, fold_batchnorm
from numpymnv2.models.io import load_weights, read_weights, save_weights
from numpymnv2.models.mobilenetv2 import (CIFAR_SETTING, DEFAULT_SETTING, InvertedResidual, MobileNetV2,
                                          make_divisible)
from numpymnv2.models.summary import Summary, summary

__all__ = ["CIFAR_SETTING", "DEFAULT_SETTING", "FoldedMobileNetV2", "InvertedResidual", "MobileNetV2", "Summary",
           "fold_batchnorm", "load_weights", "make_divisible", "read_weights", "save_weights", "summary"]
