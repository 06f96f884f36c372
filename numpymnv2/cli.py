"""The ``numpymnv2`` command.

Each sub-command lives beside the code it drives and exposes two functions: ``configure_parser(parser)`` adds
its arguments and ``run(args) -> int`` does the work and returns the exit code. This file only wires them up,
importing a sub-command's module when it is used so ``numpymnv2 --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module that implements it, one-line help)
COMMANDS = {
    "train": ("numpymnv2.train.cli", "train a MobileNetV2 (default: the built-in digits set, offline)"),
    "evaluate": ("numpymnv2.train.cli_evaluate", "accuracy, per-class accuracy and confusion matrix of a checkpoint"),
    "predict": ("numpymnv2.train.cli_predict", "top-k classes of image files under a checkpoint"),
    "summary": ("numpymnv2.models.summary", "per-layer table of output shapes, parameters and multiply-adds"),
    "gradcheck": ("numpymnv2.gradcheck", "finite-difference check of an op, a block or the whole network"),
    "relu-manifold": ("numpymnv2.experiments.relu_manifold", "the paper's ReLU manifold experiment (Figure 1)"),
    "ablate": ("numpymnv2.experiments.ablate", "linear vs ReLU6 bottleneck, shortcut vs none (Figure 6)"),
    "sparsity": ("numpymnv2.experiments.sparsity", "fraction of near-zero depthwise kernels in a checkpoint"),
    "convert": ("numpymnv2.interop.convert", "turn a torchvision state_dict (.pth) into numpymnv2 weights (.npz)"),
    "export": ("numpymnv2.interop.export", "write a checkpoint or weights file as ONNX, checked in onnxruntime"),
    "bench": ("numpymnv2.bench", "time train steps and ops (against PyTorch when it is installed)"),
}


def build_parser(argv) -> tuple[argparse.ArgumentParser, object]:
    parser = argparse.ArgumentParser(prog="numpymnv2", description="MobileNetV2 in NumPy: train, inspect, "
                                     "check gradients and run the paper's experiments.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = next((a for a in argv if not a.startswith("-")), None)
    module = None
    for name, (mod_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:
            module = importlib.import_module(mod_name)
            module.configure_parser(p)
    return parser, module


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, module = build_parser(argv)
    args = parser.parse_args(argv)
    if module is None:
        parser.print_help()
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    try:
        return int(module.run(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"numpymnv2 {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
