"""Interchange with PyTorch/torchvision (``from_torchvision``, ``to_torchvision``, ``numpymnv2 convert``) and ONNX
(``to_onnx``, ``numpymnv2 export``).

torch is imported only by :mod:`numpymnv2.interop.convert` (to read ``.pth`` files) and by
:mod:`numpymnv2.interop.torch_bench` (the PyTorch side of ``numpymnv2 bench``), and only when they run;
converting an in-memory state_dict of numpy arrays needs no torch at all. onnx and onnxruntime are imported by
:mod:`numpymnv2.interop.onnx` only when an export runs (``pip install "numpymnv2[onnx]"``).
"""
from numpymnv2.interop.onnx import to_onnx
from numpymnv2.interop.torchvision import from_torchvision, ours_to_torch, to_torchvision, torch_to_ours

__all__ = ["from_torchvision", "ours_to_torch", "to_onnx", "to_torchvision", "torch_to_ours"]
