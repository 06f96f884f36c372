"""Run `numpymnv2 bench --suite onnx` (see numpymnv2/bench.py and benchmarks/README.md); extra arguments pass through.

onnxruntime on numpymnv2's ONNX export vs onnxruntime on PyTorch's export of the same network, and numpymnv2's
own model.fuse(). Needs onnx and onnxruntime (pip install "numpymnv2[onnx]"); PyTorch's side also needs torch
(and onnxscript for torch's default exporter; without it the TorchScript exporter is used).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/onnx.py [--rounds 3] [--reps 5] [--quick]
"""
import argparse
import sys

from numpymnv2 import bench

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python benchmarks/onnx.py")
    bench.configure_parser(parser)
    sys.exit(bench.run(parser.parse_args(["--suite", "onnx"] + sys.argv[1:])))
