"""The run folder: one run at a time (a lock that dies with its process), writable and with room before training
starts, leftovers of killed saves removed; divergence never reaches a checkpoint on disk."""
import errno
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from numpymnv2.cli import main
from numpymnv2.train import runfolder, trainer as trainer_module
from numpymnv2._atomic import remove_temporary_files
from numpymnv2.train.checkpoint import (CheckpointError, NonFiniteStateError, load_checkpoint, save_checkpoint)
from numpymnv2.train.runfolder import LOCK_NAME, RunFolderLocked, check_output_folder, lock_run_folder
from numpymnv2.train.trainer import CheckpointWriteError, NonFiniteLossError


def hold_lock(folder):
    """Another process holding the folder's lock until it is killed; returns the Popen once it holds it."""
    code = textwrap.dedent(f"""
        import sys, time
        from numpymnv2.train.runfolder import lock_run_folder
        with lock_run_folder({str(folder)!r}):
            print("locked", flush=True)
            time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_run_is_refused_by_name_and_a_killed_holder_is_taken_over(tmp_path):
    holder = hold_lock(tmp_path)
    try:
        with pytest.raises(RunFolderLocked) as info:
            with lock_run_folder(tmp_path):
                pass
        assert f"pid {holder.pid} on {socket.gethostname()}, started" in str(info.value)
        assert "--out" in str(info.value)
        # the train command says the same and exits 2 without touching the folder
        before = sorted(os.listdir(tmp_path))
        assert main(["train", "--out", str(tmp_path), "--epochs", "1", "--limit", "8"]) == 2
        assert sorted(os.listdir(tmp_path)) == before
    finally:
        holder.kill()                                      # kill -9: the kernel drops the lock
        holder.wait()
    notes = []
    with lock_run_folder(tmp_path, log=notes.append):
        assert (tmp_path / LOCK_NAME).exists()
    assert len(notes) == 1 and "taking over" in notes[0] and f"pid {holder.pid}" in notes[0]
    assert not (tmp_path / LOCK_NAME).exists()             # released: nothing left


def test_the_lock_is_reentrant_in_one_process_and_refused_folders_are_not_left_behind(tmp_path):
    with lock_run_folder(tmp_path / "a" / "b") as folder:
        with lock_run_folder(folder):
            pass
        assert (folder / LOCK_NAME).exists()
    assert not (tmp_path / "a").exists()                  # created for a run that wrote nothing: removed
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is not a folder"):
        with lock_run_folder(tmp_path / "file"):
            pass
    with pytest.raises(NotADirectoryError, match="a parent of it is a file"):
        with lock_run_folder(tmp_path / "file" / "run"):
            pass


def test_the_output_folder_must_be_writable_and_have_room(tmp_path, monkeypatch):
    check_output_folder(tmp_path, 1000)
    with pytest.raises(OSError, match="not enough free space.*needed") as info:
        check_output_folder(tmp_path, 10 ** 18)
    assert info.value.errno == errno.ENOSPC

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(runfolder.tempfile, "mkstemp", denied)
    with pytest.raises(PermissionError, match="cannot write to the output folder"):
        check_output_folder(tmp_path, 1000)


def test_an_unwritable_out_is_found_before_training(tmp_path, monkeypatch, capsys):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(runfolder.tempfile, "mkstemp", denied)
    steps = []
    monkeypatch.setattr(trainer_module.Trainer, "train_step", lambda self, x, y: steps.append(1))
    assert main(["train", "--out", str(tmp_path / "run"), "--epochs", "1", "--limit", "8", "--width", "0.1",
                 "--no-progress"]) == 2
    assert "cannot write to the output folder" in capsys.readouterr().err
    assert steps == []


def test_temporary_files_of_killed_saves_are_removed_when_a_run_starts(make_trainer, tmp_path):
    for name in (".last.npz.k2j4h5x_.tmp", ".best.npz.abcdefgh.tmp", ".metrics.json.12345678.tmp"):
        (tmp_path / name).write_bytes(b"half a checkpoint")
    (tmp_path / ".notes.txt.abcdefgh.tmp").write_text("not ours")
    notes = []
    make_trainer(tmp_path, epochs=1, log=notes.append).fit()
    assert sorted(p for p in os.listdir(tmp_path) if p.endswith(".tmp")) == [".notes.txt.abcdefgh.tmp"]
    assert any("removed 3 temporary files" in n for n in notes)
    assert remove_temporary_files(tmp_path, ["last.npz"]) == []


def test_saving_a_non_finite_checkpoint_is_refused_and_the_old_file_kept(make_trainer, tmp_path):
    trainer = make_trainer(tmp_path, epochs=1)
    trainer.fit()
    good = (tmp_path / "last.npz").read_bytes()
    dict(trainer.model.named_buffers())["0.1.running_var"][0] = np.inf
    with pytest.raises(NonFiniteStateError, match="running_var"):
        trainer.save()
    assert (tmp_path / "last.npz").read_bytes() == good
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


@pytest.mark.parametrize("entry, message", [("0.1.running_var", "NaN or infinite"),
                                            ("4.weight", "NaN or infinite")])
def test_a_non_finite_checkpoint_is_named_as_such_on_load(make_trainer, tmp_path, entry, message):
    trainer = make_trainer(tmp_path, epochs=1)
    ckpt = trainer.checkpoint()
    ckpt.model[entry] = np.full_like(ckpt.model[entry], np.nan)
    with pytest.MonkeyPatch.context() as mp:          # as an older numpymnv2 would have written it
        mp.setattr("numpymnv2.train.checkpoint.nonfinite_entries", lambda ckpt: [])
        save_checkpoint(tmp_path / "bad.npz", ckpt)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "bad.npz")
    assert message in str(info.value) and entry in str(info.value)
    assert "architecture" not in str(info.value)


def test_a_negative_running_variance_is_refused_on_load(make_trainer, tmp_path):
    ckpt = make_trainer(tmp_path, epochs=1).checkpoint()
    ckpt.model["1.1.running_var"] = -np.abs(ckpt.model["1.1.running_var"]) - 1
    save_checkpoint(tmp_path / "neg.npz", ckpt)
    with pytest.raises(CheckpointError, match="1.1.running_var.*negative"):
        load_checkpoint(tmp_path / "neg.npz")


def test_batchnorm_statistics_overflowing_stop_the_run_before_any_checkpoint(make_trainer, tmp_path):
    """The loss and logits could stay finite while a running variance overflows: the run still stops."""
    trainer = make_trainer(tmp_path, epochs=3)
    trainer.fit(stop_after_epoch=1)
    good = {name: (tmp_path / name).read_bytes() for name in ("last.npz", "best.npz")}
    dict(trainer.model.named_buffers())["1.1.running_var"][:] = np.inf   # training mode uses batch statistics
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit()
    text = str(info.value)
    assert "training diverged at epoch 2, batch 1/" in text and "1.1" in text
    assert f"{tmp_path / 'last.npz'}, is kept (1 epoch done), and so is {tmp_path / 'best.npz'} (epoch 1)" in text
    for name, data in good.items():
        assert (tmp_path / name).read_bytes() == data
        load_checkpoint(tmp_path / name)


def test_a_huge_input_is_divergence_and_leaves_the_statistics_alone(make_trainer, digits_small):
    from numpymnv2.data import default_transform
    train, _ = digits_small
    trainer = make_trainer(epochs=1)
    x = default_transform(train, train=False)(train.images[:16], None)
    before = {k: v.copy() for k, v in trainer.model.named_buffers()}
    with pytest.raises(NonFiniteLossError, match="not finite|NaN or infinite"):
        trainer.train_step(x * np.float32(1e38), train.labels[:16])
    for k, v in trainer.model.named_buffers():
        np.testing.assert_array_equal(v, before[k], err_msg=k)


def test_a_non_finite_optimizer_state_at_the_end_of_an_epoch_is_divergence(make_trainer, tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, epochs=2)
    trainer.fit(stop_after_epoch=1)
    good = (tmp_path / "last.npz").read_bytes()
    state_dict = trainer.optimizer.state_dict

    def poisoned():
        state = state_dict()
        key = next(k for k, v in state.items() if np.asarray(v).dtype.kind == "f" and np.asarray(v).ndim)
        state[key] = np.full_like(state[key], np.inf)
        return state

    monkeypatch.setattr(trainer.optimizer, "state_dict", poisoned)
    with pytest.raises(NonFiniteLossError, match="optimizer/.*became NaN or infinite.*is kept"):
        trainer.fit()
    assert (tmp_path / "last.npz").read_bytes() == good


def test_a_full_disk_while_saving_names_the_kept_checkpoint(make_trainer, tmp_path, monkeypatch, capsys):
    trainer = make_trainer(tmp_path, epochs=2)
    trainer.fit(stop_after_epoch=1)
    good = (tmp_path / "last.npz").read_bytes()

    def full(f, **arrays):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    with pytest.raises(CheckpointWriteError, match="No space left on device.*previous last.npz is intact") as info:
        trainer.fit()
    assert info.value.errno == errno.ENOSPC
    assert (tmp_path / "last.npz").read_bytes() == good
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
