"""Argument types for the command line: each converts a string or rejects it with argparse's usage error (exit 2).

``argparse`` calls ``type(text)``; an ``argparse.ArgumentTypeError`` becomes ``error: argument --x: <message>``.
Floats must be finite: ``float("nan")`` and ``float("inf")`` parse, but no option of ours means them.
"""
from __future__ import annotations

import argparse
import math
import sys


def _number(text: str, kind):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") \
            from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _at_least(kind, minimum, strict: bool, expected: str):
    """A type accepting numbers of ``kind`` >= ``minimum`` (> when ``strict``)."""
    def convert(text: str):
        value = _number(text, kind)
        if value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    return convert


positive_int = _at_least(int, 1, False, "an integer >= 1")
nonnegative_int = _at_least(int, 0, False, "an integer >= 0")
positive_float = _at_least(float, 0.0, True, "a number > 0")
nonnegative_float = _at_least(float, 0.0, False, "a number >= 0")


def path(text: str) -> str:
    """A file or folder name: any string but an empty (or blank) one, which a caller would otherwise read as "not
    given" and quietly replace by a default folder, or as the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a file or folder name, got {text!r}")
    return text


def fraction(text: str) -> float:
    """A probability-like number in [0, 1)."""
    value = _number(text, float)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def resolution(text: str) -> int:
    """An input size MobileNetV2 accepts (at least 32 pixels)."""
    from numpymnv2.models.mobilenetv2 import MIN_RESOLUTION
    value = _number(text, int)
    if value < MIN_RESOLUTION:
        raise argparse.ArgumentTypeError(f"expected at least {MIN_RESOLUTION} (MobileNetV2's smallest input), "
                                         f"got {text!r}")
    return value


def add_arch_argument(parser, default: str | None, default_text: str | None = None) -> None:
    """``--arch {imagenet,small,cifar}``, the same choices and help text in every verb that builds a network.

    ``default`` is the verb's default (None: decided later, described by ``default_text``).
    """
    from numpymnv2.models.mobilenetv2 import ARCHS
    layouts = "; ".join(f"{name}, {what}" for name, (_, _, what) in ARCHS.items())
    parser.add_argument("--arch", choices=tuple(ARCHS), default=default,
                        help=f"stride layout: {layouts} (default: {default_text or default})")


class _DeprecatedPreset(argparse.Action):
    """``--preset`` of numpymnv2 0.1, now ``--arch`` (the same word in every verb); still accepted, with a note."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"numpymnv2: note: {option_string} is deprecated, use --arch {values}", file=sys.stderr)
        namespace.arch = values


def add_deprecated_preset_argument(parser) -> None:
    """The hidden ``--preset {imagenet,cifar}`` of the verbs that had it (summary, gradcheck), setting ``arch``."""
    parser.add_argument("--preset", choices=("imagenet", "cifar"), action=_DeprecatedPreset, help=argparse.SUPPRESS)


def check_distinct_output(output, *sources) -> None:
    """Refuse to write ``output`` when it is one of the ``sources`` a command reads (``convert w.pth w.pth``
    would replace the file it converts). Raises ``ValueError``."""
    import os
    if not os.path.exists(output):
        return
    for source in sources:
        if os.path.exists(source) and os.path.samefile(output, source):
            raise ValueError(f"the output {output} is the source file itself; write to another file")
