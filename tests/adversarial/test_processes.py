"""Real processes: killed with SIGKILL in the middle of a save, two trainings on one folder, runs that diverge.

After each, every checkpoint left behind must load and evaluate, and the next run must start cleanly.
"""
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TINY_TRAIN, assert_clean_failure, examples, quick_curves, run_cli, scratch
from numpymnv2.train.checkpoint import load_checkpoint
from numpymnv2.train.runfolder import LOCK_NAME

# `numpymnv2 train` whose n-th checkpoint save stops half-way (after its bytes are written, before the rename)
# and waits: the test kills it there, or lets it go on by creating the file named by $RELEASE.
DRIVER = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    from numpymnv2.cli import main

    real_savez, calls = np.savez, [0]

    def savez(f, **arrays):
        real_savez(f, **arrays)
        calls[0] += 1
        if calls[0] == int(os.environ["STOP_AT_SAVE"]):
            f.flush()
            print("STOPPED IN SAVE", flush=True)
            while not os.path.exists(os.environ["RELEASE"]):
                time.sleep(0.05)

    np.savez = savez
    sys.exit(main(sys.argv[1:]))
""")


def start_train(out, stop_at_save: int, release, *extra):
    env = dict(os.environ, STOP_AT_SAVE=str(stop_at_save), RELEASE=str(release), NUMBA_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, "train", "--out", str(out), *TINY_TRAIN, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 300
    for line in proc.stdout:
        if line.startswith("STOPPED IN SAVE"):
            return proc
        assert time.monotonic() < deadline
    proc.wait()
    pytest.fail(f"the training never reached its save: exit {proc.returncode}\n{proc.stderr.read()}")


def test_kill_9_in_the_middle_of_a_save_costs_nothing(tmp_path):
    out = tmp_path / "run"
    # saves: epoch 1 writes last.npz (1) and best.npz (2); epoch 2 writes last.npz (3): killed there
    proc = start_train(out, 3, tmp_path / "never", "--epochs", "2")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = sorted(os.listdir(out))
    assert any(name.startswith(".last.npz.") and name.endswith(".tmp") for name in left), left
    assert LOCK_NAME in left                                   # the killed run could not release it
    assert load_checkpoint(out / "last.npz").epochs_done == 1   # the previous checkpoint, whole
    assert run_cli(["evaluate", "--checkpoint", out / "last.npz", "--split", "val"]).status == 0

    outcome = run_cli(["train", "--out", out, "--resume", "--epochs", "2", "--no-progress"])
    assert outcome.status == 0, str(outcome)
    assert "taking over the lock" in outcome.err and f"pid {proc.pid}" in outcome.err
    assert "removed 1 temporary file" in outcome.out
    assert not [n for n in os.listdir(out) if n.endswith(".tmp") or n == LOCK_NAME]
    assert load_checkpoint(out / "last.npz").epochs_done == 2


def test_a_second_training_on_the_same_folder_is_refused_and_the_first_is_unharmed(tmp_path):
    out, release = tmp_path / "run", tmp_path / "go"
    first = start_train(out, 1, release)                      # holds the lock, stopped in its first save
    try:
        for argv in (["train", "--out", out, *TINY_TRAIN],
                     ["train", "--out", out, *TINY_TRAIN, "--overwrite"],
                     ["train", "--out", out, "--resume", "--no-progress"]):
            outcome = run_cli(argv)
            assert outcome.status == 2, str(outcome)
            assert f"in use by another training run: pid {first.pid}" in outcome.err
            assert outcome.err.count("\n") == 1
    finally:
        release.touch()
        stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert "Traceback" not in stderr
    ckpt = load_checkpoint(out / "last.npz")
    assert ckpt.epochs_done == 1 and not (out / LOCK_NAME).exists()


@settings(max_examples=examples(2), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(lr=st.sampled_from(["1e4", "1e6", "1e12"]), optimizer=st.sampled_from(["sgd", "adam", "rmsprop"]))
def test_divergent_runs_stop_and_every_checkpoint_left_loads(lr, optimizer):
    with scratch() as cwd, quick_curves():
        outcome = run_cli(["train", "--out", "run", *TINY_TRAIN, "--epochs", "2", "--lr", lr,
                           "--optimizer", optimizer])
        assert_clean_failure(outcome, allowed=(0, 1))
        if outcome.status == 1:
            assert "training diverged" in outcome.err
            assert "is kept" in outcome.err or "No checkpoint had been written yet" in outcome.err
        for path in sorted((cwd / "run").glob("*.npz")) if (cwd / "run").exists() else []:
            ckpt = load_checkpoint(path)
            assert all(np.isfinite(v).all() for v in ckpt.model.values() if v.dtype.kind == "f")
            assert run_cli(["evaluate", "--checkpoint", path, "--split", "val"]).status == 0


def test_divergence_after_good_epochs_keeps_both_checkpoints(tmp_path, monkeypatch):
    from numpymnv2.train import trainer as trainer_module
    out = tmp_path / "run"
    assert run_cli(["train", "--out", out, *TINY_TRAIN]).status == 0
    good = {name: (out / name).read_bytes() for name in ("last.npz", "best.npz")}
    real_step = trainer_module.Trainer.train_step

    def poisoned_step(self, x, y):                  # as if an update had overflowed one weight
        next(p for _, p in self.model.named_parameters()).data[...] = np.inf
        return real_step(self, x, y)

    monkeypatch.setattr(trainer_module.Trainer, "train_step", poisoned_step)
    outcome = run_cli(["train", "--out", out, "--resume", "--epochs", "2", "--no-progress"])
    assert outcome.status == 1 and "Traceback" not in outcome.err
    assert f"{out / 'last.npz'}, is kept (1 epoch done), and so is {out / 'best.npz'} (epoch 1)" in outcome.err
    for name, data in good.items():
        assert (out / name).read_bytes() == data
        assert run_cli(["evaluate", "--checkpoint", out / name, "--split", "val"]).status == 0
