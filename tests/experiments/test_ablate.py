"""The ablation of paper Figure 6 runs end to end on a tiny budget and writes what it promises."""
import json

import numpy as np
import pytest

import numpymnv2 as mn
from numpymnv2.cli import main
from numpymnv2.experiments.ablate import (BASELINE, VARIANTS, AblationSettings, ablation_figure, at_chance,
                                          chance_warning, format_table, summarize, train_variant)

TINY = ["--limit", "16", "--batch-size", "8", "--epochs", "1", "--width", "0.1"]


def test_same_seed_same_initial_weights_in_every_variant():
    """What makes the comparison paired: only the switch under test differs between the variants."""
    states = [mn.MobileNetV2(num_classes=10, width_mult=0.35, seed=3, **switches).state_dict()
              for switches, _ in VARIANTS.values()]
    for state in states[1:]:
        assert state.keys() == states[0].keys()
        for key in state:
            np.testing.assert_array_equal(state[key], states[0][key])


def test_command_runs_every_variant_and_writes_its_outputs(tmp_path, capsys):
    out = tmp_path / "ablate"
    assert main(["ablate", *TINY, "--seeds", "0", "1", "--jobs", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| linear bottleneck + shortcut (paper) |" in printed

    result = json.loads((out / "ablation.json").read_text())
    assert [(r["variant"], r["seed"]) for r in result["runs"]] == [(v, s) for v in VARIANTS for s in (0, 1)]
    for r in result["runs"]:
        assert len(r["history"]) == 1 and 0.0 <= r["final_val_acc"] <= 1.0
        assert 0.0 <= r["sparsity"]["fraction"] <= 1.0 and r["sparsity"]["layers"]
        # an ordinary trainer checkpoint, whose recorded architecture rebuilds the ablated network
        ckpt = pytest.importorskip("numpymnv2.train.checkpoint").load_checkpoint(out / r["checkpoint"])
        switches, _ = VARIANTS[r["variant"]]
        model = mn.models.MobileNetV2(**{k: v for k, v in ckpt.config["model"].items() if k != "name"})
        assert model.config["linear_bottleneck"] == switches["linear_bottleneck"]
        assert model.config["use_shortcut"] == switches["use_shortcut"]
        model.load_state_dict(ckpt.model)
    summary = result["summary"]
    assert set(summary) == set(VARIANTS) and summary[BASELINE]["final_val_acc"]["n"] == 2
    assert "paired_diff_val_acc" in summary["relu6-bottleneck"] and "paired_diff_val_acc" not in summary[BASELINE]
    assert (out / "ablation.md").read_text().strip() == format_table(result)
    for name in ("ablation.png", "sparsity.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "runs" / "no-shortcut" / "seed1" / "last.npz").is_file()
    for r in result["runs"]:            # 16 validation images of 10 classes: the most frequent is 2 to 4 of them
        assert 1 / 16 < r["chance_acc"] <= 4 / 16
    if all(at_chance(r) for r in result["runs"]):       # one epoch of 16 images: most likely at chance
        assert "warning: every run ended at chance accuracy" in printed
        assert result["warnings"] and "--epochs 1" in result["warnings"][0]
        assert "**warning**" in (out / "ablation.md").read_text()
    else:
        assert "chance" not in printed and result["warnings"] == []


def test_a_run_is_reproducible():
    settings = AblationSettings(variants=["relu6-bottleneck"], seeds=[5], limit=16, batch_size=8, epochs=1,
                                width=0.1).validate()
    first, second = (train_variant("relu6-bottleneck", 5, settings) for _ in range(2))
    strip = [{k: v for k, v in row.items() if "time" not in k and k not in ("images_per_s", "elapsed_s")}
             for row in first["history"]]
    assert strip == [{k: v for k, v in row.items() if "time" not in k and k not in ("images_per_s", "elapsed_s")}
                     for row in second["history"]]
    assert first["sparsity"] == second["sparsity"]


def fake_run(variant, seed, acc):
    return {"variant": variant, "seed": seed, "final_val_acc": acc, "best_val_acc": acc, "final_train_loss": 0.1,
            "time_s": 1.0, "sparsity": {"fraction": 0.0, "folded_fraction": 0.0, "dead_fraction": 0.0}}


def test_summary_pairs_runs_by_seed():
    runs = [fake_run("paper", 0, 0.90), fake_run("paper", 1, 0.80), fake_run("paper", 2, 0.70),
            fake_run("no-shortcut", 0, 0.89), fake_run("no-shortcut", 1, 0.79), fake_run("no-shortcut", 2, 0.71)]
    summary = summarize(runs, ["paper", "no-shortcut"])
    assert summary["paper"]["final_val_acc"]["mean"] == pytest.approx(0.80)
    assert summary["paper"]["final_val_acc"]["std"] == pytest.approx(0.10)          # ddof=1
    diff = summary["no-shortcut"]["paired_diff_val_acc"]
    assert diff["mean"] == pytest.approx(-0.01 / 3) and diff["n"] == 3
    assert diff["std"] < 0.02 < summary["no-shortcut"]["final_val_acc"]["std"]      # pairing removes seed spread
    assert summary["no-shortcut"]["paired_wins_losses_ties"] == [1, 2, 0]


@pytest.mark.parametrize("kwargs,match", [
    (dict(variants=["paper", "relu"]), "--variants"),
    (dict(variants=[]), "--variants"),
    (dict(seeds=[0, 0]), "--seeds"),
    (dict(epochs=0), "--epochs"),
    (dict(width=-1.0), "--width"),
    (dict(backend="gpu"), "--backend"),
])
def test_bad_settings_name_the_option(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AblationSettings(**kwargs).validate()


def test_command_reports_bad_options(capsys):
    assert main(["ablate", "--epochs", "0", "--out", "unused"]) == 2
    assert "--epochs" in capsys.readouterr().err


def fake_history_run(variant, seed, accs, losses, chance=0.1):
    history = [{"epoch": e + 1, "val_acc": a, "train_loss": l} for e, (a, l) in enumerate(zip(accs, losses))]
    return {**fake_run(variant, seed, accs[-1]), "best_val_acc": max(accs), "history": history,
            "chance_acc": chance}


def test_warns_only_when_every_run_is_at_chance():
    settings = AblationSettings(epochs=3, limit=20)
    chance = [fake_history_run("paper", s, [0.1, 0.12, 0.15], [2.3, 2.3, 2.2]) for s in (0, 1)]
    warning = chance_warning(chance, settings)
    assert warning.startswith("every run ended at chance accuracy (best validation accuracy 15.0%")
    assert "--epochs 3, --limit 20" in warning
    learned = chance + [fake_history_run("no-shortcut", 0, [0.1, 0.4, 0.7], [2.3, 1.0, 0.5])]
    assert chance_warning(learned, settings) is None
    # two classes, 60% in the most frequent: 64% is still chance, 70% is not
    assert at_chance(fake_history_run("paper", 0, [0.64], [0.7], chance=0.6))
    assert not at_chance(fake_history_run("paper", 0, [0.70], [0.7], chance=0.6))


def test_figure_has_integer_epochs_and_plain_loss_ticks():
    runs = [fake_history_run(v, s, [0.2 + 0.05 * e + 0.01 * s for e in range(12)],
                             [2.0 * 0.8 ** e + 0.01 * s for e in range(12)])
            for v in VARIANTS for s in (0, 1)]
    result = {"runs": runs, "summary": summarize(runs, list(VARIANTS)),
              "settings": {"width": 0.35, "dataset": "digits", "epochs": 12, "seeds": [0, 1]}}
    fig = ablation_figure(result)
    fig.canvas.draw()
    loss_axes = [ax for ax in fig.axes if ax.get_yscale() == "log"]
    assert len(loss_axes) == 2 and len(fig.axes) == 4
    for ax in fig.axes:
        ax.set_xlim(0.5, 12.5)
        epochs = [t for t in ax.get_xticks() if 0.5 <= t <= 12.5]
        assert epochs and all(float(t).is_integer() for t in epochs)
        assert ax.get_xlabel() in ("", "epoch")
    for ax in loss_axes:
        assert ax.get_xlabel() == "epoch" and "loss" in ax.get_ylabel()
        lo, hi = ax.get_ylim()
        shown = [(t, ax.yaxis.get_major_formatter()(t)) for t in ax.get_yticks() if lo <= t <= hi]
        assert len(shown) >= 3                                      # 0.2 .. 2: 0.2, 0.5, 1, 2
        assert all(text and "10^" not in text and "$" not in text and float(text) == pytest.approx(t)
                   for t, text in shown)
