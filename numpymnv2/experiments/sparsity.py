r"""Depthwise kernel sparsity: how many of a trained model's depthwise kernels are (nearly) zero.

The observation that motivated MobileNetV2 (Sandler et al. 2018, Section 1 and 3.2): after training, many
depthwise kernels of MobileNetV1 end up near zero. The explanation offered is the ReLU on a narrow layer. A
channel that ReLU zeroes for most inputs gets little gradient, and weight decay pulls its kernel to zero. This
module counts such kernels, layer by layer, so the claim can be checked on any model, and in particular on the
variants of ``numpymnv2 ablate``.

What is measured
----------------
A depthwise layer has weight ``w`` of shape ``(K, K, C)``, one ``K x K`` kernel per channel. For channel ``c``:

.. math::

    n_c = \| w[:, :, c] \|_2                    \quad\text{(the raw kernel norm)}

    f_c = n_c \, \frac{|\gamma_c|}{\sqrt{\mathrm{running\_var}_c + \epsilon}}
          \quad\text{(the kernel after folding in the BatchNorm that follows it)}

and a kernel counts as near zero when its norm is below a threshold ``tau``:

* ``mode="relative"`` (the default): ``n_c < tau * max_c' n_c'``, against the largest kernel of the same layer.
  It is scale-free, so layers of different widths and initial scales compare, and it needs no tuning per model.
  ``tau = 0.1`` is well below the spread of a fresh initialisation, where the smallest of 144 Kaiming-normal
  3x3 kernels has about a quarter of the norm of the largest.
* ``mode="absolute"``: ``n_c < tau``.

Why the folded norm too: in MobileNetV2 every depthwise convolution is followed by BatchNorm, which in training
mode divides each channel by its own batch standard deviation, so the network computes the same function
whatever the scale of a kernel. A small raw norm alone does not make a channel dead. Its scale can also
drift, because weight decay shrinks a scale-invariant weight. What the *evaluation-mode* network multiplies
channel ``c`` by is the folded kernel ``w[:, :, c] gamma_c / sqrt(running_var_c + eps)``. A channel with
``f_c`` near zero contributes nothing but its BatchNorm bias. Both fractions are reported. The folded one needs
the BatchNorm parameters, which every state dict of a :class:`~numpymnv2.models.MobileNetV2` holds.

Dead channels: a channel whose depthwise output was constant on the training data (for instance because the
ReLU6 before it never lets anything through) has a BatchNorm running variance of (almost) 0. Its kernel then
carries no information whatever its norm, and the folding formula divides by ``sqrt(eps)``, which would make it
the layer's largest folded kernel by orders of magnitude and every other kernel look near zero. Such a channel,
``running_var_c < 1e-6 x`` the layer's median running variance, is counted as **dead**, and its folded norm is
taken as 0: the evaluation-mode network outputs the constant ``beta_c`` there.

Command line: ``numpymnv2 sparsity --checkpoint runs/train/last.npz --threshold 0.1 --out runs/sparsity``.
"""
from __future__ import annotations

import argparse
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from numpymnv2._untrusted import npz_names

__all__ = ["MODES", "LayerSparsity", "SparsityReport", "depthwise_sparsity", "depthwise_kernels", "load_state",
           "format_table", "sparsity_figure", "plot_sparsity", "configure_parser", "run"]

MODES = ("relative", "absolute")
DEFAULT_THRESHOLD = 0.1
DEAD_VARIANCE = 1e-6        # running variance below this times the layer's median: a constant (dead) channel


@dataclass
class LayerSparsity:
    """The kernels of one depthwise layer and how many of them are near zero.

    Attributes
    ----------
    name : str
        The layer's state-dict prefix, e.g. ``"features.3.conv.1.0"``.
    kernel_size, channels : int
    norms : ndarray, shape (C,)
        Raw kernel norms ``n_c``.
    folded_norms : ndarray, shape (C,), or None
        BatchNorm-folded norms ``f_c`` (0 for dead channels); None when the state holds no BatchNorm for the layer.
    dead : ndarray of bool, shape (C,), or None
        Channels the BatchNorm saw as constant (running variance below 1e-6 x the layer's median).
    cutoff, folded_cutoff : float or None
        The absolute norm below which a kernel counts as near zero (``tau * max`` in relative mode).
    """
    name: str
    kernel_size: int
    channels: int
    norms: np.ndarray
    folded_norms: np.ndarray | None
    cutoff: float
    folded_cutoff: float | None
    dead: np.ndarray | None = None

    @property
    def near_zero(self) -> int:
        return int(np.sum(self.norms < self.cutoff))

    @property
    def fraction(self) -> float:
        return self.near_zero / self.channels

    @property
    def folded_near_zero(self) -> int | None:
        return None if self.folded_norms is None else int(np.sum(self.folded_norms < self.folded_cutoff))

    @property
    def folded_fraction(self) -> float | None:
        n = self.folded_near_zero
        return None if n is None else n / self.channels

    @property
    def dead_count(self) -> int | None:
        return None if self.dead is None else int(self.dead.sum())

    def to_dict(self) -> dict:
        return {"name": self.name, "kernel_size": self.kernel_size, "channels": self.channels,
                "near_zero": self.near_zero, "fraction": self.fraction, "cutoff": self.cutoff,
                "max_norm": float(self.norms.max()), "median_norm": float(np.median(self.norms)),
                "folded_near_zero": self.folded_near_zero, "folded_fraction": self.folded_fraction,
                "folded_cutoff": self.folded_cutoff, "dead": self.dead_count,
                "norms": self.norms.tolist(),
                "folded_norms": None if self.folded_norms is None else self.folded_norms.tolist()}


@dataclass
class SparsityReport:
    """What :func:`depthwise_sparsity` found: one :class:`LayerSparsity` per depthwise layer, in network order."""
    threshold: float
    mode: str
    layers: list = field(default_factory=list)
    source: str = ""

    @property
    def channels(self) -> int:
        return sum(layer.channels for layer in self.layers)

    @property
    def fraction(self) -> float:
        """Near-zero kernels over all depthwise kernels of the model."""
        return sum(layer.near_zero for layer in self.layers) / max(self.channels, 1)

    @property
    def folded_fraction(self) -> float | None:
        if any(layer.folded_norms is None for layer in self.layers) or not self.layers:
            return None
        return sum(layer.folded_near_zero for layer in self.layers) / self.channels

    @property
    def dead_fraction(self) -> float | None:
        """Dead channels (constant output, see the module docstring) over all depthwise channels."""
        if any(layer.dead is None for layer in self.layers) or not self.layers:
            return None
        return sum(layer.dead_count for layer in self.layers) / self.channels

    def to_dict(self) -> dict:
        return {
            "experiment": "depthwise-sparsity",
            "source": self.source,
            "threshold": self.threshold,
            "mode": self.mode,
            "definition": ("a kernel w[:, :, c] is near zero when its L2 norm is below "
                           + ("threshold * (largest kernel norm of its layer)" if self.mode == "relative"
                              else "threshold")
                           + "; folded: the same for w[:, :, c] * |gamma_c| / sqrt(running_var_c + eps), "
                             "the kernel after folding in the BatchNorm that follows it (0 for a dead channel); "
                             "dead: running_var_c < 1e-6 x the layer's median, a channel that was constant"),
            "channels": self.channels,
            "fraction": self.fraction,
            "folded_fraction": self.folded_fraction,
            "dead_fraction": self.dead_fraction,
            "layers": [layer.to_dict() for layer in self.layers],
        }

    def to_json(self, path=None) -> str:
        """The report as JSON; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            from numpymnv2._atomic import atomic_write_text
            atomic_write_text(path, text + "\n")
        return text


def _state_of(source) -> tuple[dict, str]:
    """``(state dict, description)`` from a Module, a mapping of arrays or a file path."""
    if hasattr(source, "state_dict") and callable(source.state_dict):
        return dict(source.state_dict()), type(source).__name__
    if isinstance(source, dict):
        return source, "state dict"
    if isinstance(source, (str, os.PathLike)):
        return load_state(source), os.fspath(source)
    raise TypeError(f"depthwise_sparsity: expected a model, a state dict or a path to a checkpoint or weights "
                    f"file, got {type(source).__name__}")


def load_state(path) -> dict:
    """The model's ``state_dict`` from a trainer checkpoint (file or run folder) or a ``.npz`` weights file.

    A checkpoint written by the trainer (``numpymnv2 train``) is read with
    :func:`numpymnv2.train.checkpoint.load_checkpoint`. A run folder means its ``last.npz``. Anything else is read
    as a weights file of :func:`numpymnv2.models.save_weights` or ``numpymnv2 convert``: one array per
    state-dict key.
    """
    p = Path(path).expanduser()
    if p.is_dir() or _is_checkpoint(p):
        from numpymnv2.train.checkpoint import load_checkpoint
        return dict(load_checkpoint(p).model)
    from numpymnv2.models import read_weights
    state, _ = read_weights(p)
    return state


def _is_checkpoint(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        return "meta/format" in npz_names(path)  # the archive's directory only: nothing is decompressed
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return False                             # read_weights gives the error that names the problem


def depthwise_kernels(state: dict) -> list[tuple[str, np.ndarray, dict | None]]:
    """The depthwise weights of a state dict, in key order, with the BatchNorm that follows each.

    A depthwise weight is a ``.weight`` array of shape ``(K, K, C)``, numpymnv2's layout: no other layer of
    MobileNetV2 has a 3-D weight. PyTorch's layout ``(C, 1, K, K)`` is accepted too and transposed. The
    BatchNorm after the layer ``P.0`` is ``P.1`` (torchvision's ``Conv2dNormActivation`` naming).

    Returns
    -------
    list of (name, w, bn)
        ``name`` the layer prefix, ``w`` of shape ``(K, K, C)`` as float64, ``bn`` a dict with ``weight`` and
        ``running_var`` (and ``eps``) or None.
    """
    found = []
    for key, value in state.items():
        if not key.endswith(".weight"):
            continue
        w = np.asarray(value)
        if w.ndim == 3 and w.shape[0] == w.shape[1]:
            pass
        elif w.ndim == 4 and w.shape[1] == 1 and w.shape[2] == w.shape[3] and w.shape[0] > 1:
            w = w[:, 0].transpose(1, 2, 0)       # PyTorch (C, 1, K, K) -> (K, K, C)
        else:
            continue
        name = key[:-len(".weight")]
        bn = None
        if name.endswith(".0"):
            bn_name = name[:-2] + ".1"
            gamma, var = state.get(bn_name + ".weight"), state.get(bn_name + ".running_var")
            if gamma is not None and var is not None and np.shape(gamma) == np.shape(var) == (w.shape[2],):
                bn = {"weight": np.asarray(gamma, dtype=np.float64),
                      "running_var": np.asarray(var, dtype=np.float64), "eps": 1e-5}
        found.append((name, w.astype(np.float64), bn))
    return found


def depthwise_sparsity(model, threshold: float = DEFAULT_THRESHOLD, mode: str = "relative") -> SparsityReport:
    r"""Per depthwise layer, the fraction of kernels whose norm is below ``threshold``.

    Parameters
    ----------
    model : Module, dict of str to ndarray, str or PathLike
        A model, its ``state_dict()``, or a path to a trainer checkpoint, a run folder or a ``.npz`` weights file.
    threshold : float
        ``tau`` > 0. In ``"relative"`` mode a fraction of the layer's largest kernel norm, below 1.
    mode : {"relative", "absolute"}
        See the module docstring.

    Returns
    -------
    SparsityReport
        ``.layers`` (one :class:`LayerSparsity` each, with the raw and the BatchNorm-folded fractions),
        ``.fraction`` and ``.folded_fraction`` over the whole model, ``.to_json()``.
    """
    if mode not in MODES:
        raise ValueError(f"depthwise_sparsity: mode (--mode) must be one of {', '.join(MODES)}, got {mode!r}")
    if not (np.isfinite(threshold) and threshold > 0):
        raise ValueError(f"depthwise_sparsity: threshold (--threshold) must be a number > 0, got {threshold}")
    if mode == "relative" and threshold >= 1:
        raise ValueError(f"depthwise_sparsity: a relative threshold (--threshold) is a fraction of the layer's "
                         f"largest kernel norm and must be below 1, got {threshold}; use --mode absolute for an "
                         f"absolute norm")
    state, source = _state_of(model)
    kernels = depthwise_kernels(state)
    if not kernels:
        raise ValueError(f"depthwise_sparsity: {source} holds no depthwise weights (no '.weight' of shape "
                         f"(K, K, C)); keys: {', '.join(list(state)[:6])}{', ...' if len(state) > 6 else ''}")
    report = SparsityReport(threshold=float(threshold), mode=mode, source=source)
    for name, w, bn in kernels:
        norms = np.sqrt(np.sum(w * w, axis=(0, 1)))
        folded = dead = None
        if bn is not None:
            var = bn["running_var"]
            dead = var < DEAD_VARIANCE * np.median(var) if np.median(var) > 0 else var <= 0
            folded = np.where(dead, 0.0, norms * np.abs(bn["weight"]) / np.sqrt(np.maximum(var, 0) + bn["eps"]))

        def cutoff(values):
            return float(threshold * values.max()) if mode == "relative" else float(threshold)

        report.layers.append(LayerSparsity(name=name, kernel_size=w.shape[0], channels=w.shape[2], norms=norms,
                                           folded_norms=folded, cutoff=cutoff(norms),
                                           folded_cutoff=None if folded is None else cutoff(folded), dead=dead))
    return report


def format_table(report: SparsityReport) -> str:
    """The per-layer table as text."""
    rule = (f"norm < {report.threshold:g} x largest in layer" if report.mode == "relative"
            else f"norm < {report.threshold:g}")
    lines = [f"Depthwise kernel sparsity of {report.source or 'the model'}: kernel near zero if {rule}",
             f"{'layer':<24} {'K':>2} {'C':>5} {'max norm':>9} {'median':>8} {'near 0':>7} {'fraction':>9} "
             f"{'BN-folded':>10} {'dead':>5}"]
    for layer in report.layers:
        folded = "-" if layer.folded_fraction is None else f"{layer.folded_fraction:.3f}"
        dead = "-" if layer.dead is None else str(layer.dead_count)
        lines.append(f"{layer.name:<24} {layer.kernel_size:>2} {layer.channels:>5} {layer.norms.max():>9.3g} "
                     f"{np.median(layer.norms):>8.3g} {layer.near_zero:>7} {layer.fraction:>9.3f} {folded:>10} "
                     f"{dead:>5}")
    folded = "-" if report.folded_fraction is None else f"{report.folded_fraction:.3f}"
    dead = "-" if report.dead_fraction is None else str(sum(layer.dead_count for layer in report.layers))
    lines.append(f"{'all depthwise layers':<24} {'':>2} {report.channels:>5} {'':>9} {'':>8} "
                 f"{sum(layer.near_zero for layer in report.layers):>7} {report.fraction:>9.3f} {folded:>10} "
                 f"{dead:>5}")
    lines.append("BN-folded: the same test on w[:, :, c] |gamma_c| / sqrt(running_var_c + eps), the kernel the "
                 "evaluation-mode network applies (0 for dead channels)")
    lines.append("dead: channels whose BatchNorm running variance is below 1e-6 x the layer's median (their output "
                 "was constant)")
    return "\n".join(lines)


def sparsity_figure(reports, title: str = "", colors: dict | None = None):
    """Per layer, the near-zero fraction (top) and every kernel's norm over its layer's max (bottom), as a
    matplotlib ``Figure`` (drawn with Agg, not shown). The layers are labelled with their full names in the
    model's state dict (``features.3.conv.1``).

    Parameters
    ----------
    reports : SparsityReport or dict of str to SparsityReport
        One report, or several by label (e.g. the ablation variants), drawn side by side.
    title : str
    colors : dict of str to colour, optional
        A matplotlib colour per label (default: the colour cycle).
    """
    import matplotlib as mpl
    from matplotlib.figure import Figure

    if isinstance(reports, SparsityReport):
        reports = {reports.source or "model": reports}
    first = next(iter(reports.values()))
    names = [layer.name for layer in first.layers]
    x = np.arange(len(names))
    fig = Figure(figsize=(max(7.0, 0.5 * len(names) + 3), 7.5))
    top, bottom = fig.subplots(2, 1, sharex=True)
    width = 0.8 / len(reports)
    colours = mpl.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (label, report) in enumerate(reports.items()):
        colour = (colors or {}).get(label, colours[k % len(colours)])
        offset = (k - (len(reports) - 1) / 2) * width
        top.bar(x + offset, [layer.fraction for layer in report.layers], width, color=colour,
                label=f"{label}: raw ({report.fraction:.3f} overall)")
        if report.folded_fraction is not None:
            top.plot(x + offset, [layer.folded_fraction for layer in report.layers], "v", color=colour, ms=5,
                     markeredgecolor="black", markeredgewidth=0.5,
                     label=f"{label}: BN-folded ({report.folded_fraction:.3f})")
        for i, layer in enumerate(report.layers):
            rel = layer.norms / layer.norms.max()
            jitter = np.linspace(-0.35, 0.35, rel.size) * width
            bottom.scatter(np.full(rel.size, i + offset) + jitter, np.maximum(rel, 1e-6), s=3, color=colour,
                           alpha=0.6, label=label if i == 0 else None)
    if first.mode == "relative":
        bottom.axhline(first.threshold, color="black", lw=0.8, ls="--", label=f"threshold {first.threshold:g}")
    bottom.set_yscale("log")
    bottom.set_ylabel("raw kernel norm / largest in layer\n(exact zeros drawn at 1e-6)", fontsize=8)
    top.set_ylabel("fraction near zero", fontsize=8)
    rule = (f"norm < {first.threshold:g} x layer max" if first.mode == "relative" else f"norm < {first.threshold:g}")
    top.set_title(title or f"Depthwise kernels near zero ({rule})", fontsize=10)
    top.legend(fontsize=7)
    bottom.legend(fontsize=7, markerscale=3)
    bottom.set_xticks(x, names, rotation=60, ha="right", fontsize=7)
    bottom.set_xlabel("depthwise layer", fontsize=8)
    for ax in (top, bottom):
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig


def plot_sparsity(reports, path, title: str = "", colors: dict | None = None) -> Path:
    """Write :func:`sparsity_figure` to ``path`` as a PNG (parent folders are created); return ``path``."""
    from numpymnv2._atomic import atomic_write_figure
    return atomic_write_figure(path, sparsity_figure(reports, title, colors), dpi=110)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``numpymnv2 sparsity`` options to ``parser``."""
    from numpymnv2._argtypes import path
    parser.add_argument("--checkpoint", required=True, metavar="PATH", type=path,
                        help="a trainer checkpoint (.npz), a run folder (its last.npz) or a weights .npz")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                        help=f"a kernel is near zero when its norm is below this (default: {DEFAULT_THRESHOLD}); "
                             "with --mode relative, a fraction of the layer's largest kernel norm")
    parser.add_argument("--mode", choices=MODES, default="relative",
                        help="relative: threshold x the layer's largest kernel norm; absolute: the norm itself "
                             "(default: relative)")
    parser.add_argument("--out", default="runs/sparsity", type=path,
                        help="folder for sparsity.json and sparsity.png (default: runs/sparsity)")


def run(args: argparse.Namespace) -> int:
    """Measure, print the table, write ``sparsity.json`` and ``sparsity.png`` into ``args.out``."""
    report = depthwise_sparsity(args.checkpoint, threshold=args.threshold, mode=args.mode)
    print(format_table(report))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "sparsity.json"
    report.to_json(json_path)
    png = plot_sparsity(report, out / "sparsity.png")
    print(f"wrote {json_path}")
    print(f"wrote {png}")
    return 0
