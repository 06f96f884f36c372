"""Metrics of a run: the per-epoch table (CSV and JSON), the learning curves and the confusion matrix.

One row of the history is a dict with the keys of :data:`FIELDS`; ``lr`` is the learning rate of the epoch's
last step. Losses are means over the images of the
epoch (training: under the weights of the moment, with dropout and augmentation; validation: the final weights
in evaluation mode); accuracies are fractions in [0, 1]. The timing fields change from run to run; every
other field is a deterministic function of the configuration, which the resume tests rely on.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from numpymnv2._atomic import atomic_write_figure, atomic_write_text

FIELDS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "epoch_time_s", "images_per_s",
          "elapsed_s")
TIMING_FIELDS = ("epoch_time_s", "images_per_s", "elapsed_s")


def without_timing(history: Sequence[dict]) -> list[dict]:
    """The history without the wall-clock fields: what two equivalent runs must agree on exactly."""
    return [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in history]


def write_metrics(out_dir, history: Sequence[dict], best: dict | None = None, config: dict | None = None,
                  test: dict | None = None) -> None:
    """Write ``metrics.csv`` (one row per epoch) and ``metrics.json`` (history, best epoch, config and, once the
    run has ended, ``test``: the final model's test accuracy) atomically."""
    out_dir = Path(out_dir)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(FIELDS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: _csv_value(row.get(k)) for k in FIELDS})
    atomic_write_text(out_dir / "metrics.csv", buf.getvalue())
    doc = {"history": list(history), "best": best, "config": config}
    if test is not None:
        doc["test"] = test
    atomic_write_text(out_dir / "metrics.json", json.dumps(doc, indent=2) + "\n")


def write_jsonl(path, history: Sequence[dict]) -> None:
    """Write ``path`` afresh (atomically) with one JSON object per epoch of ``history``, one per line."""
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in history))


def append_jsonl(path, row: dict) -> None:
    """Append one epoch's row to the JSON-lines log and flush it to disk, so ``tail -f`` sees whole lines."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _csv_value(v):
    if v is None:
        return ""
    return repr(v) if isinstance(v, float) else v


def plot_curves(path, history: Sequence[dict], title: str = "", label_smoothing: float = 0.0) -> Path | None:
    """Loss and accuracy against epoch, training and validation, as a PNG; None when there is no history.

    With ``label_smoothing`` the training loss is the smoothed one (it cannot fall below the smoothing's
    entropy, so it stays above the plain validation cross-entropy) and its legend says so."""
    fig = curves_figure(history, title, label_smoothing)
    return None if fig is None else _save_figure(fig, path)


def curves_figure(history: Sequence[dict], title: str = "", label_smoothing: float = 0.0):
    """The figure of :func:`plot_curves` (a matplotlib ``Figure``, Agg); None when there is no history."""
    if not history:
        return None
    from matplotlib.ticker import MaxNLocator
    epochs = [row["epoch"] for row in history]
    fig = _figure((10, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.set_yscale("log")      # an early spike of the validation loss would flatten the rest
    losses = []
    for ax, key, label in ((ax_loss, "loss", "loss (cross-entropy, log scale)"), (ax_acc, "acc", "accuracy (%)")):
        scale = 100.0 if key == "acc" else 1.0
        for split, style in (("train", "-o"), ("val", "-s")):
            values = [row.get(f"{split}_{key}") for row in history]
            if all(v is None for v in values):
                continue
            ys = [math.nan if v is None else v * scale for v in values]
            if key == "loss":
                losses += ys
            name = "training" if split == "train" else "validation"
            if split == "train" and key == "loss" and label_smoothing:
                name = f"training (label smoothing {label_smoothing:g})"
            ax.plot(epochs, ys, style, markersize=3, label=name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    readable_log_ticks(ax_loss, np.asarray(losses, dtype=np.float64))
    if any(row.get("val_acc") is not None for row in history):
        ax_acc.set_ylim(max(0.0, min(100 * r["val_acc"] for r in history if r.get("val_acc") is not None) - 5),
                        100.5)
    if title:
        fig.suptitle(title, parse_math=False)
    fig.tight_layout()
    return fig


def readable_log_ticks(ax, values: np.ndarray) -> None:
    """Label the log-scale y axis of ``ax`` in plain numbers (``0.05``, not ``5x10^-2``): at 1, 2 and 5 times
    the powers of 10 when ``values`` span at most 4 decades, else at the powers of 10 only. A range of less than
    a decade would otherwise show a single label, or none."""
    from matplotlib.ticker import LogLocator, NullFormatter
    finite = values[np.isfinite(values) & (values > 0)]
    decades = np.log10(finite.max() / finite.min()) if finite.size else 0.0
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0,) if decades > 4 else (1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(lambda y, pos: f"{y:g}")
    ax.yaxis.set_minor_formatter(NullFormatter())


# -- classification results -------------------------------------------------------------------------------
def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """``cm[i, j]`` = number of images of true class ``i`` predicted as ``j``; int64, shape (K, K)."""
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    return np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes)


def per_class_accuracy(cm: np.ndarray) -> np.ndarray:
    """Recall of each class: the diagonal over the row sums (NaN for a class without images)."""
    totals = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(cm) / np.maximum(totals, 1), np.nan)


def format_confusion(cm: np.ndarray, classes: Sequence[str]) -> str:
    """The confusion matrix as an aligned text table: rows are true classes, columns predictions."""
    names = [str(c) for c in classes]
    width = max(max(len(n) for n in names), len(str(int(cm.max(initial=0)))), 3)
    head = " " * (width + 2) + " ".join(n[:width].rjust(width) for n in names)
    lines = ["true \\ predicted", head]
    for name, row in zip(names, cm):
        lines.append(name[:width].rjust(width) + "  " + " ".join(str(int(v)).rjust(width) for v in row))
    return "\n".join(lines)


def row_normalised(cm: np.ndarray) -> np.ndarray:
    """Each row of the confusion matrix over its sum: ``[i, j]`` is the fraction of class ``i``'s images predicted
    as ``j`` (the diagonal is each class's recall); a class without images gives a row of NaN."""
    totals = cm.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, cm / np.maximum(totals, 1), np.nan)


def confusion_figure(cm: np.ndarray, classes: Sequence[str], title: str = ""):
    """The confusion matrix as two heat maps side by side, as a matplotlib ``Figure`` (Agg, not shown).

    Left: the counts. Right: each row divided by its total (per true class, so the diagonal is each class's
    recall and a rare class is as visible as a frequent one), in %. Each has its colour bar; with at most 30
    classes the numbers are written in the cells.
    """
    k = len(classes)
    size = min(4 + 0.45 * k, 20)
    fig = _figure((2 * size + 1, size * 0.9))
    ax_count, ax_norm = fig.subplots(1, 2)
    norm = 100 * row_normalised(cm)
    for ax, values, cmap, vmax, label, fmt in (
            (ax_count, cm, "Blues", max(int(cm.max(initial=0)), 1), "images", lambda v: str(int(v))),
            (ax_norm, norm, "Greens", 100.0, "% of the true class (row)", lambda v: f"{v:.0f}")):
        im = ax.imshow(values, cmap=cmap, vmin=0, vmax=vmax)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=label)
        # class names are plain text: "$x$" or "a_b" must not be read as mathtext (parse_math=False)
        ax.set_xticks(range(k), [str(c) for c in classes], rotation=90 if k > 12 else 0, parse_math=False)
        ax.set_yticks(range(k), [str(c) for c in classes], parse_math=False)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        if k <= 30:
            for i in range(k):
                for j in range(k):
                    v = values[i, j]
                    if np.isnan(v):
                        continue
                    ax.text(j, i, fmt(v), ha="center", va="center", fontsize=8,
                            color="white" if v > vmax / 2 else "black")
    ax_count.set_title("counts")
    ax_norm.set_title("normalised per true class (recall on the diagonal)")
    if title:
        fig.suptitle(title, parse_math=False)
    fig.tight_layout()
    return fig


def plot_confusion(path, cm: np.ndarray, classes: Sequence[str], title: str = "") -> Path:
    """Write :func:`confusion_figure` (counts and row-normalised) to ``path`` as a PNG; return the path."""
    return _save_figure(confusion_figure(cm, classes, title), path)


def _figure(figsize):
    # A bare Figure renders with Agg and leaves pyplot's global state (and any GUI backend) alone.
    from matplotlib.figure import Figure
    return Figure(figsize=figsize)


def _save_figure(fig, path) -> Path:
    return atomic_write_figure(path, fig, dpi=100)
