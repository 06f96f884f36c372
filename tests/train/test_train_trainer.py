"""The training loop: learning, exact resume (between epochs, mid-epoch, after Ctrl-C), divergence, files."""
import json
import os
import signal

import numpy as np
import pytest

from numpymnv2.data import default_transform
from numpymnv2.train.checkpoint import load_checkpoint
from numpymnv2.train.trainer import NonFiniteLossError


def test_a_few_steps_lower_the_loss(make_trainer, digits_small):
    train, _ = digits_small
    trainer = make_trainer(epochs=1, lr=0.5)
    x = default_transform(train, train=False)(train.images[:64], None)
    y = train.labels[:64]
    losses = [trainer.train_step(x, y)[0] for _ in range(30)]
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])


def test_fit_writes_checkpoints_metrics_and_curves(make_trainer, tmp_path):
    result = make_trainer(tmp_path, epochs=2).fit()
    assert result.status == "finished" and result.epochs_done == 2
    assert {"last.npz", "best.npz", "metrics.csv", "metrics.json", "curves.png"} <= set(os.listdir(tmp_path))
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0].split(",")[:6] == ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc"]
    assert len(rows) == 3
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert [r["epoch"] for r in doc["history"]] == [1, 2]
    assert doc["best"]["val_acc"] == max(r["val_acc"] for r in doc["history"])
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ckpt = load_checkpoint(tmp_path / "last.npz")
    assert ckpt.progress["epoch"] == 2 and ckpt.progress["batch"] == 0 and len(ckpt.history) == 2
    assert load_checkpoint(tmp_path / "best.npz").best == doc["best"]


def test_two_epochs_equal_one_then_resume_then_one_more(make_trainer, assert_same_run, tmp_path):
    """A run of 2 epochs, and a run of 1 epoch resumed with epochs=2 in a fresh Trainer, agree bit for bit."""
    straight = make_trainer(tmp_path / "a", epochs=2)
    straight.fit()

    first = make_trainer(tmp_path / "b", epochs=1)
    first.fit()
    resumed = make_trainer(tmp_path / "b", epochs=2)
    resumed.restore(load_checkpoint(tmp_path / "b" / "last.npz"))
    assert resumed.position["epoch"] == 1
    resumed.fit()
    assert_same_run(straight, resumed)
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())["history"]
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())["history"]
    assert [r["val_acc"] for r in a] == [r["val_acc"] for r in b]
    assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]


def test_resume_with_a_cosine_schedule_stopped_after_one_epoch(make_trainer, assert_same_run, tmp_path):
    straight = make_trainer(tmp_path / "a", epochs=2, schedule="cosine")
    straight.fit()
    first = make_trainer(tmp_path / "b", epochs=2, schedule="cosine")
    assert first.fit(stop_after_epoch=1).epochs_done == 1
    resumed = make_trainer(tmp_path / "b", epochs=2, schedule="cosine")
    resumed.restore(load_checkpoint(tmp_path / "b" / "last.npz"))
    resumed.fit()
    assert_same_run(straight, resumed)


def _interrupt_at(trainer, step: int, how):
    """Make global step ``step`` (0-based) of ``trainer`` interrupt itself: by a real SIGINT after the forward
    pass (the handler defers it), or by raising KeyboardInterrupt from inside the backward pass."""
    model = trainer.model
    forward, backward = model.forward, model.backward
    calls = {"n": 0}

    def forward_hook(x):
        out = forward(x)
        if model.training:
            calls["n"] += 1
            if calls["n"] == step + 1 and how == "sigint":
                os.kill(os.getpid(), signal.SIGINT)
        return out

    def backward_hook(dout):
        if calls["n"] == step + 1 and how == "raise":
            raise KeyboardInterrupt
        return backward(dout)

    model.forward, model.backward = forward_hook, backward_hook


@pytest.mark.parametrize("how", ["sigint", "raise"])
def test_ctrl_c_saves_and_the_resumed_run_is_identical(make_trainer, assert_same_run, tmp_path, how):
    """Ctrl-C in the middle of epoch 2 saves last.npz at a step boundary; resuming from it reproduces the run.

    With a real SIGINT the step in flight completes first. A KeyboardInterrupt raised inside the backward pass
    (after the forward pass moved the BatchNorm statistics and the dropout generator) is rolled back.
    """
    handler_before = signal.getsignal(signal.SIGINT)   # SIG_IGN where the suite runs as a background job
    straight = make_trainer(tmp_path / "a", epochs=2, schedule="cosine")
    straight.fit()

    interrupted = make_trainer(tmp_path / "b", epochs=2, schedule="cosine")
    steps_per_epoch = len(interrupted.train_loader)
    _interrupt_at(interrupted, steps_per_epoch + 2, how)
    result = interrupted.fit()
    assert result.status == "interrupted" and result.epochs_done == 1
    ckpt = load_checkpoint(tmp_path / "b" / "last.npz")
    done = 3 if how == "sigint" else 2          # the rolled-back step is redone on resume
    assert (ckpt.progress["epoch"], ckpt.progress["batch"]) == (1, done)
    assert ckpt.progress["step"] == steps_per_epoch + done
    assert signal.getsignal(signal.SIGINT) is handler_before      # the trainer put back what it found

    resumed = make_trainer(tmp_path / "b", epochs=2, schedule="cosine")
    resumed.restore(ckpt)
    resumed.fit()
    assert_same_run(straight, resumed)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(make_trainer, tmp_path):
    trainer = make_trainer(tmp_path, epochs=3)
    trainer.fit(stop_after_epoch=1)
    good = (tmp_path / "last.npz").read_bytes()
    good_metrics = (tmp_path / "metrics.json").read_text()

    linear = trainer.model[4]
    linear.weight.data[0, 0] = np.nan                   # as if an update had overflowed
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit()
    message = str(info.value)
    assert "NaN or infinite" in message and "epoch 2, batch 1/" in message
    assert str(tmp_path / "last.npz") in message and "--lr" in message
    assert (tmp_path / "last.npz").read_bytes() == good
    assert (tmp_path / "metrics.json").read_text() == good_metrics
    assert load_checkpoint(tmp_path / "last.npz").progress["epoch"] == 1


def test_divergence_in_the_first_epoch_says_no_checkpoint_was_written(make_trainer, tmp_path):
    trainer = make_trainer(tmp_path, epochs=1)
    trainer.model[4].bias.data[:] = np.inf
    with pytest.raises(NonFiniteLossError, match="No checkpoint had been written yet"):
        trainer.fit()
    assert not (tmp_path / "last.npz").exists()


def test_fit_without_an_output_folder_writes_nothing(make_trainer, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = make_trainer(None, epochs=1).fit()
    assert result.last_checkpoint is None and os.listdir(tmp_path) == []
    assert len(result.history) == 1


def test_progress_bar_shows_loss_accuracy_lr_and_speed(make_trainer, tmp_path, capsys):
    make_trainer(tmp_path, epochs=1, progress=True).fit()
    err = capsys.readouterr().err
    for text in ("epoch 1/1", "loss=", "acc=", "lr=", "img/s=", "val loss="):
        assert text in err


def test_resuming_with_more_epochs_stretches_the_cosine_schedule(make_trainer, tmp_path):
    messages = []
    make_trainer(tmp_path, epochs=1, schedule="cosine").fit()
    longer = make_trainer(tmp_path, epochs=2, schedule="cosine", log=messages.append)
    longer.restore(load_checkpoint(tmp_path / "last.npz"))
    steps = len(longer.train_loader)
    assert longer.schedule.last_epoch == steps
    assert longer.lr == pytest.approx(0.05 / 2)             # half-way down the cosine over 2 epochs
    assert any("now spans 2 epochs" in m for m in messages)
    assert longer.fit().epochs_done == 2


def test_early_stopping_ends_the_run_after_patience_epochs_without_improvement(make_trainer, tmp_path):
    trainer = make_trainer(tmp_path, epochs=6, patience=2)
    accuracies = iter([0.5, 0.6, 0.6, 0.55, 0.9, 0.9])
    trainer.evaluate = lambda loader=None: {"loss": 1.0, "acc": next(accuracies)}
    result = trainer.fit()
    assert result.status == "stopped early" and result.epochs_done == 4     # best at 2, none better in 3 and 4
    assert result.best["epoch"] == 2 and trainer.stopped_early
    assert load_checkpoint(tmp_path / "best.npz").best["epoch"] == 2
    assert make_trainer(tmp_path, epochs=6, patience=2).restore(load_checkpoint(tmp_path / "last.npz")).fit() \
        .status == "stopped early"           # resuming with the same patience trains no further
    with pytest.raises(ValueError, match="patience must be a non-negative integer"):
        make_trainer(epochs=2, patience=-1)


def test_metrics_jsonl_has_one_line_per_epoch_and_restarts_from_the_checkpoint(make_trainer, tmp_path):
    make_trainer(tmp_path, epochs=2).fit()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    history = json.loads((tmp_path / "metrics.json").read_text())["history"]
    assert [json.loads(line) for line in lines] == history
    # a run resumed from an older checkpoint drops the epochs logged after it
    ckpt = load_checkpoint(tmp_path / "last.npz")
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines + ['{"epoch": 3}']) + "\n")
    resumed = make_trainer(tmp_path, epochs=3).restore(ckpt)
    resumed.fit()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[:2] == history


def test_says_once_that_numba_is_compiling_and_nothing_on_a_warm_cache(make_trainer, tmp_path):
    """A real compilation (a fresh, uncached function) inside the run prints the notice once; a run whose
    kernels are all compiled already prints no such line."""
    from numba import njit

    from numpymnv2.train.trainer import COMPILING_MESSAGE

    messages = []
    trainer = make_trainer(tmp_path / "a", epochs=1, log=messages.append)
    step = trainer.train_step
    fresh = [njit(lambda x: x + 1), njit(lambda x: x * 2)]        # compiled on first call, never cached

    def compiling_step(x, y):
        if fresh:
            fresh.pop()(1.0)
        return step(x, y)

    trainer.train_step = compiling_step
    trainer.fit()
    assert messages.count(COMPILING_MESSAGE) == 1
    assert messages.index(COMPILING_MESSAGE) < next(i for i, m in enumerate(messages) if m.startswith("epoch 1/1"))

    quiet = []
    make_trainer(tmp_path / "b", epochs=1, log=quiet.append).fit()
    assert COMPILING_MESSAGE not in quiet


def test_precise_bn_averages_the_batch_statistics_at_the_final_weights_and_changes_no_step(make_trainer):
    from numpymnv2.nn.layers import BatchNorm2d

    plain, precise = make_trainer(epochs=2), make_trainer(epochs=2, precise_bn=3)
    plain.fit()
    precise.fit()
    # training never reads the running statistics, and the recalibration leaves the dropout generators alone
    for (name, a), (_, b) in zip(plain.model.named_parameters(), precise.model.named_parameters()):
        np.testing.assert_array_equal(a.data, b.data, err_msg=name)
    layers = [m for _, m in precise.model.named_modules() if isinstance(m, BatchNorm2d)]
    assert layers and all(m.momentum == 0.1 for m in layers)
    # the statistics are the plain mean over the first 3 batches of the last epoch, at the final weights
    recalibrated = [(m.running_mean.copy(), m.running_var.copy()) for m in layers]
    per_batch = []
    for k, (x, _) in enumerate(precise.train_loader.epoch(1)):
        if k == 3:
            break
        for m in layers:
            m.momentum = 1.0
        precise.model.train()
        precise.model(x)
        per_batch.append([(m.running_mean.copy(), m.running_var.copy()) for m in layers])
    for i, (mean, var) in enumerate(recalibrated):
        np.testing.assert_allclose(mean, np.mean([b[i][0] for b in per_batch], axis=0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(var, np.mean([b[i][1] for b in per_batch], axis=0), rtol=1e-5, atol=1e-6)
    plain_stats = [m.running_mean for _, m in plain.model.named_modules() if isinstance(m, BatchNorm2d)]
    assert not np.allclose(plain_stats[0], recalibrated[0][0])
    with pytest.raises(ValueError, match="precise_bn must be a non-negative integer"):
        make_trainer(epochs=1, precise_bn=-1)


def test_a_batchnorm_frozen_with_eval_stays_frozen_through_fit_validation_and_precise_bn(make_trainer):
    # the torchvision way to freeze BatchNorm for fine-tuning: the model in training mode, its BatchNorms in eval
    from numpymnv2.nn.layers import BatchNorm2d

    trainer = make_trainer(epochs=2, precise_bn=2)
    bns = [m for _, m in trainer.model.named_modules() if isinstance(m, BatchNorm2d)]
    frozen, free = bns[::2], bns[1::2]
    for m in frozen:
        m.eval()
    frozen_before = [(m.running_mean.copy(), m.running_var.copy()) for m in frozen]
    free_before = [m.running_mean.copy() for m in free]
    weights_before = [p.data.copy() for p in trainer.model.parameters()]
    trainer.fit()                                   # trains, validates (model.eval()) and recalibrates each epoch
    for m, (mean, var) in zip(frozen, frozen_before):
        assert not m.training
        np.testing.assert_array_equal(m.running_mean, mean)
        np.testing.assert_array_equal(m.running_var, var)
    assert all(m.training for m in free) and trainer.model.training
    assert any(not np.array_equal(m.running_mean, b) for m, b in zip(free, free_before))
    assert any(not np.array_equal(p.data, b) for p, b in zip(trainer.model.parameters(), weights_before))

