"""The ``numpymnv2`` command.

Each sub-command lives beside the code it drives and exposes two functions: ``configure_parser(parser)`` adds
its arguments and ``run(args) -> int`` does the work and returns the exit code. This file only wires them up,
importing a sub-command's module when it is used so ``numpymnv2 --help`` stays fast.

Exit status, the same for every verb:

====  ===================================================================================================
0     success
1     the work failed: training diverged, a gradient check failed, the disk filled up, memory ran out, or
      another operating-system error stopped it
2     the command cannot run as asked: bad options, an input file that is missing, unreadable or invalid, an
      output path that cannot be used (a file, not writable, a run folder in use by another run), work that
      would need more memory than the machine has
130   interrupted (Ctrl-C)
141   the reader of the output went away (``numpymnv2 summary | head``): the rest is dropped quietly
====  ===================================================================================================

Every expected failure ends in one line, ``numpymnv2 VERB: error: ...``, on stderr. A traceback means a bug in
numpymnv2; ``numpymnv2 --debug VERB ...`` shows the traceback of any error.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import os
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
    "convert": ("numpymnv2.interop.convert",
                "turn a torchvision state_dict (.pth) into a numpymnv2 checkpoint (.npz) for every verb"),
    "export": ("numpymnv2.interop.export", "write a checkpoint or weights file as ONNX, checked in onnxruntime"),
    "bench": ("numpymnv2.bench", "time train steps and ops (against PyTorch when it is installed)"),
}


EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 1, 2, 130, 141
_DEBUG_HELP = "on an error, show the full traceback instead of one line"

# errors of the operating system that mean "this path cannot be used as given" rather than "the work failed"
_PATH_ERRNOS = {errno.ENOENT, errno.EEXIST, errno.EISDIR, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.EROFS,
                errno.ENAMETOOLONG, errno.ELOOP}


def build_parser(argv) -> tuple[argparse.ArgumentParser, object]:
    parser = argparse.ArgumentParser(prog="numpymnv2", description="MobileNetV2 in NumPy: train, inspect, "
                                     "check gradients and run the paper's experiments.",
                                     epilog="Exit status: 0 success, 1 the work failed (divergence, disk full, "
                                            "out of memory, ...), 2 bad options or input, 130 interrupted, 141 output "
                                            "pipe closed.")
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    parser.add_argument("--version", action="version", version=f"numpymnv2 {_version()}",
                        help="print the version of numpymnv2 and exit")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = next((a for a in argv if not a.startswith("-")), None)
    module = None
    for name, (mod_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
        if name == wanted:
            module = importlib.import_module(mod_name)
            module.configure_parser(p)
    return parser, module


def _version() -> str:
    """``numpymnv2.__version__``, the one place the version is written (setup.cfg reads it from there)."""
    import numpymnv2
    return numpymnv2.__version__


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, module = build_parser(argv)
    args = parser.parse_args(argv)
    if module is None:
        parser.print_help()
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    try:
        if args.command != "train":     # the one data-parallel command (numpymnv2.distributed)
            from numpymnv2.distributed import require_one_process
            require_one_process(args.command)
        status = int(module.run(args) or 0)
        sys.stdout.flush()      # inside the try: a closed pipe found by the last flush is handled below
        return status
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"numpymnv2 {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        if args.debug:
            raise
        # stdout's reader closed the pipe: point stdout at /dev/null so the flush at exit cannot fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as exc:        # MemoryError included
        status = exit_status(exc)
        if status is None or args.debug:
            raise
        print(f"numpymnv2 {args.command}: error: {describe_error(exc)}", file=sys.stderr)
        return status


def exit_status(exc: BaseException) -> int | None:
    """The exit status for an expected error (see the module docstring), None for a bug."""
    status = getattr(exc, "exit_status", None)     # errors of ours that know it (divergence, a locked folder)
    if isinstance(status, int):
        return status
    if isinstance(exc, OSError) and not _is_pillow_error(exc):
        return EXIT_USAGE if exc.errno in _PATH_ERRNOS or exc.errno is None else EXIT_FAILED
    if isinstance(exc, (ValueError, TypeError, EOFError)) or _is_pillow_error(exc):
        return EXIT_USAGE
    if isinstance(exc, MemoryError):
        return EXIT_FAILED
    return None


def describe_error(exc: BaseException) -> str:
    """One line for the user: the message without ``[Errno 28]``, the file an OS error is about."""
    if isinstance(exc, MemoryError) and not getattr(exc, "exit_status", None):
        detail = str(exc).strip()
        return (f"out of memory{f' ({detail})' if detail else ''}; try a smaller --batch-size, --width or "
                f"--resolution")
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
        if exc.errno == errno.ENOSPC and "space" not in text:
            text = f"no space left on device ({text})"
        files = [str(f) for f in (exc.filename, exc.filename2) if f is not None]
        return text + (f": {' -> '.join(files)}" if files else "")
    text = str(exc).strip() or type(exc).__name__
    return text if not isinstance(exc, KeyError) else f"{type(exc).__name__}: {text}"


def _is_pillow_error(exc: BaseException) -> bool:
    """An error of Pillow's about an image file (unidentified, a decompression bomb)."""
    PIL = sys.modules.get("PIL.Image")
    if PIL is None:
        return False
    return isinstance(exc, (PIL.UnidentifiedImageError, PIL.DecompressionBombError))


if __name__ == "__main__":
    sys.exit(main())
