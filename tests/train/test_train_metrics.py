"""Figures treat class names and titles as plain text: matplotlib's mathtext must not parse (and fail on) them."""
import numpy as np
import pytest
from PIL import Image

from numpymnv2.train.metrics import plot_confusion, plot_curves


def test_class_names_with_dollars_and_underscores_are_plain_text(tmp_path):
    names = ["$x$", r"$\notacommand$", "$x^$", "${$", "$$"]           # mathtext fails on all but the first
    path = plot_confusion(tmp_path / "cm.png", np.arange(25).reshape(5, 5), names, title="$bad$ {title}_")
    assert Image.open(path).size[0] > 100
    history = [{"epoch": 1, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 1.1, "val_acc": 0.4}]
    assert plot_curves(tmp_path / "curves.png", history, title="$x^$") is not None


def test_confusion_figure_shows_counts_and_the_row_normalised_matrix_with_colour_bars():
    from numpymnv2.train.metrics import confusion_figure, row_normalised
    cm = np.array([[90, 10, 0], [1, 3, 0], [0, 0, 0]])          # a frequent class, a rare one, an absent one
    norm = row_normalised(cm)
    np.testing.assert_allclose(norm[:2], [[0.9, 0.1, 0.0], [0.25, 0.75, 0.0]])
    assert np.isnan(norm[2]).all()
    fig = confusion_figure(cm, ["a", "b", "c"], title="t")
    images = [ax for ax in fig.axes if ax.images]
    bars = [ax for ax in fig.axes if not ax.images]
    assert len(images) == 2 and len(bars) == 2                  # two heat maps, each with its colour bar
    counts, normalised = images
    np.testing.assert_array_equal(counts.images[0].get_array(), cm)
    np.testing.assert_allclose(normalised.images[0].get_array()[:2], 100 * norm[:2])
    assert normalised.images[0].get_clim() == (0, 100)
    assert "normalised" in normalised.get_title() and counts.get_title() == "counts"
    assert {t.get_text() for t in normalised.texts} >= {"90", "10", "25", "75"}
    assert bars[1].get_ylabel().startswith("%")
    for ax in images:
        assert ax.get_xlabel() == "predicted class" and ax.get_ylabel() == "true class"
        assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]


def test_evaluate_model_ranks_the_top_k_classes():
    from numpymnv2.train.trainer import _ranked_classes, top_k_accuracy
    logits = np.array([[0.1, 3.0, 2.0, -1.0], [5.0, 5.0, 1.0, 0.0]])
    np.testing.assert_array_equal(_ranked_classes(logits, 1)[:, 0], logits.argmax(axis=1))
    np.testing.assert_array_equal(_ranked_classes(logits, 3), [[1, 2, 0], [0, 1, 2]])
    np.testing.assert_array_equal(_ranked_classes(logits, 6)[:, 4:], -1)
    ranked = _ranked_classes(logits, 2)
    assert top_k_accuracy(ranked, np.array([2, 1])) == 1.0 and top_k_accuracy(ranked, np.array([3, 2])) == 0.0


def test_curves_name_the_smoothed_training_loss_and_label_the_log_axis_in_plain_numbers():
    from numpymnv2.train.metrics import curves_figure
    history = [{"epoch": e + 1, "train_loss": 2.3 * 0.85 ** e + 0.5, "train_acc": 0.1 + 0.04 * e,
                "val_loss": 2.4 * 0.7 ** e, "val_acc": 0.1 + 0.045 * e} for e in range(20)]
    fig = curves_figure(history, label_smoothing=0.1)
    ax_loss, ax_acc = fig.axes
    assert [t.get_text() for t in ax_loss.get_legend().get_texts()] == ["training (label smoothing 0.1)",
                                                                        "validation"]
    assert [t.get_text() for t in ax_acc.get_legend().get_texts()] == ["training", "validation"]
    fig.canvas.draw()
    lo, hi = ax_loss.get_ylim()
    shown = [(t, ax_loss.yaxis.get_major_formatter()(t)) for t in ax_loss.get_yticks() if lo <= t <= hi]
    assert len(shown) >= 4 and all(float(text) == pytest.approx(t) and "10^" not in text for t, text in shown)
    assert all(float(t).is_integer() for t in ax_loss.get_xticks())
    assert [t.get_text() for t in curves_figure(history).axes[0].get_legend().get_texts()][0] == "training"
