"""``numpymnv2 train | evaluate | predict`` end to end, on a tiny MobileNetV2 and a few dozen digits."""
import json
import os
import shlex
import signal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from numpymnv2.cli import main
from numpymnv2.data import load_dataset
from numpymnv2.train import trainer as trainer_module
from numpymnv2.train.checkpoint import load_checkpoint
from numpymnv2.train.inference import load_trained_model, predict_proba, read_images
from numpymnv2.train.metrics import without_timing

TINY = ["--width", "0.1", "--limit", "48", "--batch-size", "16", "--no-progress"]


def train(out, *extra):
    return main(["train", "--out", str(out), *TINY, *extra])


def _printed_command(stdout: str, prefix: str) -> list:
    """The arguments of the ``numpymnv2 ...`` command a line starting with ``prefix`` prints."""
    line = next(line for line in stdout.splitlines() if line.startswith(prefix))
    argv = shlex.split(line[len(prefix):])
    assert argv[0] == "numpymnv2"
    return argv[1:]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 1-epoch run; tests only read it."""
    out = tmp_path_factory.mktemp("run")
    assert train(out, "--epochs", "1") == 0
    return out


def test_train_writes_every_file_and_says_what_it_did(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out, "--epochs", "1") == 0
    stdout = capsys.readouterr().out
    assert {"last.npz", "best.npz", "metrics.csv", "metrics.json", "metrics.jsonl", "curves.png"} == \
        set(os.listdir(out))
    for text in ("MobileNetV2 width 0.1", "48 training / 48 validation images (0.1 of the train split, held out)",
                 "8x8x1 -> 32x32x3", "epoch 1/1:", "val loss=", "done: 1 epoch in", "files in",
                 "test accuracy of the final model (last.npz): ", "/48 test images; images the run never "):
        assert text in stdout
    ckpt = load_checkpoint(out / "last.npz")
    assert ckpt.config["train"]["width"] == 0.1 and ckpt.config["model"]["name"] == "MobileNetV2"
    assert ckpt.config["preprocess"]["resolution"] == 32 and ckpt.config["classes"] == [str(d) for d in range(10)]
    test = json.loads((out / "metrics.json").read_text())["test"]
    assert test["images"] == 48 and f"{100 * test['acc']:.2f}% ({test['correct']}/48" in stdout
    assert test["acc"] <= test["top5_acc"] and f"; top-5 accuracy {100 * test['top5_acc']:.2f}%" in stdout


def test_validation_is_held_out_of_the_train_split_and_the_test_split_is_read_only_at_the_end(
        tmp_path, monkeypatch, capsys):
    from numpymnv2.train import config as config_module
    from numpymnv2.train.trainer import Trainer
    calls = []
    real_load_split, real_fit = config_module.load_split, Trainer.fit
    monkeypatch.setattr(config_module, "load_split", lambda cfg, split: calls.append(split) or
                        real_load_split(cfg, split))
    monkeypatch.setattr(Trainer, "fit", lambda self, *a, **k: calls.append("trained") or real_fit(self, *a, **k))
    out = tmp_path / "run"
    assert train(out, "--epochs", "1", "--limit", "40", "--val-fraction", "0.2") == 0
    assert calls == ["train", "trained", "test"]
    stdout = capsys.readouterr().out
    assert "40 training / 40 validation images (0.2 of the train split, held out)" in stdout
    ckpt = load_checkpoint(out / "last.npz")
    train_rows, val_rows = ckpt.split["train_rows"], ckpt.split["val_rows"]
    assert len(np.intersect1d(train_rows, val_rows)) == 0 and max(train_rows.max(), val_rows.max()) < 1497
    assert ckpt.config["data"]["val_split"] == "train" and ckpt.config["data"]["split_sizes"] == {"train": 1497}

    # the printed command runs, and --split train / val score exactly the stored images
    monkeypatch.undo()
    argv = _printed_command(stdout, "evaluate: ")
    assert argv[-2:] == ["--split", "test"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "--split test: test split, 300 images" in printed
    report = json.loads((out / "last_test_evaluation.json").read_text())
    assert report["accuracy"] <= report["top5_accuracy"] <= 1
    assert f"top-5 accuracy: {100 * report['top5_accuracy']:.2f}%" in printed
    for split, n in (("train", 40), ("val", 40)):
        assert main(["evaluate", "--checkpoint", str(out / "last.npz"), "--split", split]) == 0
        report = json.loads((out / f"last_{split}_evaluation.json").read_text())
        assert report["images"] == n
    assert report["accuracy"] == pytest.approx(ckpt.history[-1]["val_acc"])      # val = what training saw


def test_val_fraction_0_validates_on_the_test_split_and_says_so(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out, "--epochs", "1", "--val-fraction", "0") == 0
    stdout = capsys.readouterr().out
    assert "48 training / 48 validation images (the test split, --val-fraction 0)" in stdout
    assert "the test split was also the validation set (--val-fraction 0), so this is optimistic" in stdout
    assert main(["evaluate", "--checkpoint", str(out), "--split", "val", "--out", str(tmp_path)]) == 0
    assert "--split val: the run's validation images (the test split, --val-fraction 0), 48 images" in \
        capsys.readouterr().out


def test_resume_alone_continues_the_run_in_out_bit_for_bit(tmp_path):
    """--epochs 1, then --resume --epochs 2, equals --epochs 2 (a schedule that does not depend on the length)."""
    same = ["--schedule", "constant", "--warmup-epochs", "0"]
    assert train(tmp_path / "straight", "--epochs", "2", *same) == 0
    assert train(tmp_path / "resumed", "--epochs", "1", *same) == 0
    assert main(["train", "--out", str(tmp_path / "resumed"), "--resume", "--epochs", "2", "--no-progress"]) == 0
    a, b = load_checkpoint(tmp_path / "straight" / "last.npz"), load_checkpoint(tmp_path / "resumed" / "last.npz")
    for group in ("model", "optimizer", "schedule"):
        x, y = getattr(a, group), getattr(b, group)
        assert sorted(x) == sorted(y)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=f"{group}/{k}", strict=True)
    assert a.rng == b.rng and a.progress["step"] == b.progress["step"]
    assert without_timing(a.history) == without_timing(b.history)
    rows = json.loads((tmp_path / "resumed" / "metrics.json").read_text())["history"]
    assert [r["epoch"] for r in rows] == [1, 2]


def test_resume_from_a_given_checkpoint_and_a_finished_run(finished_run, tmp_path, capsys):
    assert main(["train", "--resume", str(finished_run / "last.npz"), "--epochs", "1", "--no-progress"]) == 0
    assert "already done 1 epoch (--epochs 1)" in capsys.readouterr().out


def test_ctrl_c_in_the_command_saves_and_tells_how_to_continue(tmp_path, monkeypatch, capsys):
    real_step = trainer_module.Trainer.train_step
    calls = {"n": 0}

    def step_then_ctrl_c(self, x, y):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self, x, y)

    monkeypatch.setattr(trainer_module.Trainer, "train_step", step_then_ctrl_c)
    out = tmp_path / "run"
    assert train(out, "--epochs", "1") == 130
    stdout = capsys.readouterr().out
    assert "Interrupted at epoch 1, batch 2/3" in stdout
    assert f"continue with: numpymnv2 train --out {out} --resume" in stdout
    assert load_checkpoint(out / "last.npz").progress["batch"] == 2
    monkeypatch.undo()
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert len(load_checkpoint(out / "last.npz").history) == 1


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "1"], "already holds a run"),
    (["--resume", "--width", "0.5"], "these options differ from it: --width 0.5 (the run has --width 0.1)"),
    (["--resume", "--no-augment"], "--no-augment (the run has augmentation)"),
])
def test_train_refuses_to_mix_runs(finished_run, capsys, argv, message):
    assert main(["train", "--out", str(finished_run), *argv]) == 2
    assert message in capsys.readouterr().err


def test_overwrite_starts_afresh(tmp_path):
    out = tmp_path / "run"
    assert train(out, "--epochs", "2") == 0
    assert train(out, "--epochs", "1", "--seed", "1", "--overwrite") == 0
    for name in ("last.npz", "best.npz"):
        ckpt = load_checkpoint(out / name)
        assert ckpt.config["train"]["seed"] == 1 and len(ckpt.history) == 1
    assert len(json.loads((out / "metrics.json").read_text())["history"]) == 1


def test_train_option_errors(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "x"), "--width", "-1"]) == 2
    assert "--width must be a positive number, got -1.0" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_evaluate_prints_accuracy_per_class_and_the_confusion_matrix(finished_run, tmp_path, capsys):
    assert main(["evaluate", "--checkpoint", str(finished_run / "best.npz"), "--limit", "40",
                 "--out", str(tmp_path)]) == 0
    stdout = capsys.readouterr().out
    for text in ("accuracy:", "(after 1 epoch;", "test split, 40 images", "per-class accuracy:",
                 "confusion matrix (rows: true class, columns: predicted class):", "true \\ predicted"):
        assert text in stdout
    report = json.loads((tmp_path / "best_test_evaluation.json").read_text())
    cm = np.array(report["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == 40
    assert report["accuracy"] == pytest.approx(np.trace(cm) / 40)
    assert (tmp_path / "best_test_confusion.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_rejects_what_is_not_a_checkpoint(tmp_path, capsys):
    (tmp_path / "notes.npz").write_text("hello")
    assert main(["evaluate", "--checkpoint", str(tmp_path / "notes.npz")]) == 2
    assert "is not a readable numpymnv2 checkpoint" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(tmp_path / "missing.npz")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_predict_reads_images_as_training_did(finished_run, tmp_path, capsys):
    test = load_dataset("digits", split="test")
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"digit{i}.png")
        Image.fromarray(test.images[i, :, :, 0]).save(paths[-1])
    assert main(["predict", "--checkpoint", str(finished_run), "--top-k", "2", *map(str, paths)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(paths[0]) and lines[1].startswith("  1. ") and lines[2].startswith("  2. ")
    assert len(lines) == 9 and lines[1].endswith("%")

    model, ckpt = load_trained_model(finished_run)
    pre = ckpt.config["preprocess"]
    np.testing.assert_array_equal(read_images(paths, pre), test.images[:3])     # the same pixels
    probs = predict_proba(model, test.images[:3], pre)
    top = int(np.argmax(probs[0]))
    assert lines[1] == f"  1. {top}  {100 * probs[0, top]:6.2f}%"


def test_predict_resizes_and_converts_other_images(finished_run, tmp_path):
    path = tmp_path / "big.png"
    Image.fromarray(np.full((64, 48, 3), 200, np.uint8)).save(path)
    _, ckpt = load_trained_model(finished_run)
    x = read_images([path], ckpt.config["preprocess"])
    assert x.shape == (1, 8, 8, 1) and x.dtype == np.uint8 and (x == 200).all()
    assert (read_images([path], ckpt.config["preprocess"], invert=True) == 55).all()


def test_predict_errors(finished_run, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    assert main(["predict", "--checkpoint", str(finished_run), str(bad)]) == 1      # reported, the rest go on
    assert "bad.png: not an image file" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(finished_run), str(tmp_path / "none.png")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_image_folder_dataset_end_to_end(tmp_path, capsys):
    """Train on a folder of RGB PNGs of another size, then predict on an image of yet another size."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 4)):
        for name, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
            folder = tmp_path / "data" / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(np.array(colour) + rng.integers(-20, 20, (12, 10, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    out = tmp_path / "run"
    assert main(["train", "--dataset", "folder", "--data-dir", str(tmp_path / "data"), "--out", str(out),
                 "--epochs", "1", "--width", "0.1", "--batch-size", "8", "--no-progress", "--val-fraction", "0"]) == 0
    stdout = capsys.readouterr().out
    assert "16 training / 8 validation images (the test split, --val-fraction 0), 32x32x3 -> 32x32x3" in stdout
    assert "horizontal flip" in stdout
    ckpt = load_checkpoint(out / "last.npz")
    assert ckpt.config["classes"] == ["blue", "red"] and ckpt.config["preprocess"]["image_size"] == [32, 32]
    Image.fromarray(np.full((50, 70, 3), (220, 30, 30), np.uint8)).save(tmp_path / "red.png")
    assert main(["predict", "--checkpoint", str(out), str(tmp_path / "red.png"), "--top-k", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and {lines[1].split()[1], lines[2].split()[1]} == {"blue", "red"}
    assert lines[3] == "  note: 70x50, centre 50x50 kept (--resize crop)"


def test_divergence_exits_1_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert train(out, "--epochs", "1") == 0
    good = (out / "last.npz").read_bytes()

    def diverge(self, x, y):
        raise trainer_module.NonFiniteLossError("the loss became NaN or infinite (nan)")

    monkeypatch.setattr(trainer_module.Trainer, "train_step", diverge)
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "training diverged at epoch 2, batch 1/3" in err
    assert f"The last good checkpoint, {out / 'last.npz'}, is kept (1 epoch done)" in err
    assert (out / "last.npz").read_bytes() == good


def test_a_flat_image_folder_holds_out_validation_and_evaluate_scores_every_split(tmp_path, capsys):
    """A folder without test/: the default run holds out validation images, says there is no test split, and
    the evaluate command it prints runs; --split train scores only the images trained on."""
    rng = np.random.default_rng(0)
    for name, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(10):
            pixels = np.clip(np.array(colour) + rng.integers(-20, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "data" / name / f"{i}.png")
    out = tmp_path / "run"
    assert main(["train", "--dataset", "folder", "--data-dir", str(tmp_path / "data"), "--out", str(out),
                 "--epochs", "1", "--width", "0.1", "--batch-size", "6", "--no-progress"]) == 0
    stdout = capsys.readouterr().out
    assert "18 training / 2 validation images (0.1 of the train split, held out)" in stdout
    assert "test accuracy: none, the dataset has no test split" in stdout
    argv = _printed_command(stdout, "evaluate: ")
    assert argv[-2:] == ["--split", "val"] and main(argv) == 0
    assert "--split val: the run's validation images (0.1 of the train split, held out), 2 images" in \
        capsys.readouterr().out
    assert main(["evaluate", "--checkpoint", str(out), "--split", "train"]) == 0
    assert "--split train: the run's training images, 18 images" in capsys.readouterr().out
    assert main(["evaluate", "--checkpoint", str(out), "--split", "test"]) == 2
    assert "--split val scores the images the run held out" in capsys.readouterr().err
    # the stored rows name images by position: a changed folder is refused, not silently scored
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "data" / "blue" / "extra.png")
    assert main(["evaluate", "--checkpoint", str(out), "--split", "val"]) == 2
    assert "has 21 images now but had 20 when the run trained" in capsys.readouterr().err


def test_output_to_a_file_gets_one_line_per_epoch_not_progress_bars(tmp_path):
    """Redirected (not a terminal), the command writes the run's description, one line per epoch and the
    summary: no progress-bar frames."""
    import subprocess
    import sys
    log = tmp_path / "train.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[2]),
                                                                      os.environ.get("PYTHONPATH")]))}
    argv = [sys.executable, "-m", "numpymnv2", "train", "--out", str(tmp_path / "run"), "--epochs", "3",
            *[a for a in TINY if a != "--no-progress"]]
    with open(log, "w") as f:
        assert subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=600).returncode == 0
    text = log.read_text()
    lines = text.splitlines()
    assert "\r" not in text and "it/s" not in text and "batch/s" not in text
    assert [line.split(":")[0] for line in lines if line.startswith("epoch ")] == ["epoch 1/3", "epoch 2/3",
                                                                                   "epoch 3/3"]
    assert len(lines) <= 15 and len(text) < 3000
    assert any(line.startswith("test accuracy of the final model") for line in lines)
