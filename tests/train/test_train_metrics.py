"""Figures treat class names and titles as plain text: matplotlib's mathtext must not parse (and fail on) them."""
import numpy as np
from PIL import Image

from numpymnv2.train.metrics import plot_confusion, plot_curves


def test_class_names_with_dollars_and_underscores_are_plain_text(tmp_path):
    names = ["$x$", r"$\notacommand$", "$x^$", "${$", "$$"]           # mathtext fails on all but the first
    path = plot_confusion(tmp_path / "cm.png", np.arange(25).reshape(5, 5), names, title="$bad$ {title}_")
    assert Image.open(path).size[0] > 100
    history = [{"epoch": 1, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 1.1, "val_acc": 0.4}]
    assert plot_curves(tmp_path / "curves.png", history, title="$x^$") is not None
