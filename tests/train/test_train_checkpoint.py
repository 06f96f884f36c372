"""Checkpoint files: round trip without pickle, clear errors for bad files, atomic writes."""
import os
import zipfile

import numpy as np
import pytest

from numpymnv2 import nn
from numpymnv2 import _atomic as atomic
from numpymnv2.train.checkpoint import (Checkpoint, CheckpointError, FORMAT, load_checkpoint, load_model_state,
                                        save_checkpoint)


@pytest.fixture
def saved(make_trainer, tmp_path):
    """A trainer after one epoch and its last.npz."""
    trainer = make_trainer(tmp_path, epochs=1)
    trainer.fit()
    return trainer, tmp_path / "last.npz"


def test_round_trip_holds_everything_and_needs_no_pickle(saved):
    trainer, path = saved
    with np.load(path, allow_pickle=False) as f:
        assert str(f["meta/format"]) == FORMAT
        assert all(f[k].dtype.kind != "O" for k in f.files)
    ckpt = load_checkpoint(path)
    for k, v in trainer.model.state_dict().items():
        np.testing.assert_array_equal(ckpt.model[k], v, strict=True)
    for k, v in trainer.optimizer.state_dict().items():
        np.testing.assert_array_equal(ckpt.optimizer[k], v, strict=True)
    assert ckpt.rng == {"model.3": trainer.model[3].generator.bit_generator.state}
    assert ckpt.config == {"model": {"name": "tiny", "width": 8}}
    assert ckpt.history == trainer.history and ckpt.best == trainer.best
    assert ckpt.epochs_done == 1


def test_a_run_folder_means_its_last_checkpoint(saved):
    _, path = saved
    assert load_checkpoint(path.parent).path == path


def test_missing_file_and_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.npz")
    with pytest.raises(FileNotFoundError, match="without a last.npz"):
        load_checkpoint(tmp_path)


def test_checkpoint_of_another_architecture_names_both(saved, make_tiny_model):
    _, path = saved
    wider = make_tiny_model(width=16)
    with pytest.raises(CheckpointError) as info:
        load_model_state(wider, load_checkpoint(path), {"name": "tiny", "width": 16})
    message = str(info.value)
    assert "different architecture" in message
    assert "tiny(width=8)" in message and "tiny(width=16)" in message
    assert "expected shape (16, 3, 3, 3), got (8, 3, 3, 3)" in message


def test_restore_into_another_architecture_leaves_the_trainer_untouched(saved, make_trainer, tmp_path):
    _, path = saved
    other = make_trainer(tmp_path / "other", epochs=1)
    setattr(other.model, "4", nn.Linear(16, 5))          # 5 classes instead of 10
    before = {k: v.copy() for k, v in other.model.state_dict().items()}
    with pytest.raises(CheckpointError, match="different architecture"):
        other.restore(load_checkpoint(path))
    for k, v in other.model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_truncated_checkpoint(saved):
    _, path = saved
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)


def test_corrupted_bytes_inside_an_array(saved):
    _, path = saved
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("model/4.weight.npy")
    data = bytearray(path.read_bytes())
    at = info.header_offset + 30 + len(info.filename) + 200     # well inside the array's data
    data[at:at + 8] = bytes(255 - b for b in data[at:at + 8])
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)


@pytest.mark.parametrize("kind", ["text", "npz", "npy", "empty"])
def test_files_that_are_not_checkpoints(tmp_path, kind):
    path = tmp_path / f"thing.{kind}"
    if kind == "text":
        path.write_text("epoch,loss\n1,0.5\n")
    elif kind == "npz":
        np.savez(path, weight=np.ones(3))
    elif kind == "npy":
        np.save(path, np.ones(3))
    else:
        path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="not a (readable )?numpymnv2 checkpoint|not a numpymnv2"):
        load_checkpoint(path)


def test_a_text_file_is_named_for_what_it_is_without_pickle_advice(tmp_path):
    path = tmp_path / "last.npz"
    path.write_text("not an archive")
    with pytest.raises(CheckpointError, match="zip signature") as info:
        load_checkpoint(path)
    assert "pickle" not in str(info.value)


def test_plain_npz_error_lists_what_it_holds(tmp_path):
    path = tmp_path / "weights.npz"
    np.savez(path, **{"features.0.0.weight": np.ones(3)})
    with pytest.raises(CheckpointError, match=r"not a numpymnv2 checkpoint .*features\.0\.0\.weight"):
        load_checkpoint(path)


def test_object_arrays_are_refused_when_saving(tmp_path):
    ckpt = Checkpoint(model={"w": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(TypeError, match="without pickle"):
        save_checkpoint(tmp_path / "c.npz", ckpt)
    assert os.listdir(tmp_path) == []


def test_a_save_killed_half_way_leaves_the_previous_checkpoint(saved, monkeypatch):
    """The process dies after half the bytes are written: the old file is intact, no temporary file stays."""
    trainer, path = saved
    before = path.read_bytes()
    real_savez = np.savez

    def savez_then_die(f, **arrays):
        real_savez(f, **arrays)
        f.truncate(f.tell() // 2)
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", savez_then_die)
    with pytest.raises(KeyboardInterrupt):
        trainer.save(path)
    assert path.read_bytes() == before
    assert not [n for n in os.listdir(path.parent) if n.endswith(".tmp")]
    monkeypatch.undo()
    load_checkpoint(path)


def test_a_failed_rename_leaves_the_previous_checkpoint(saved, monkeypatch):
    trainer, path = saved
    before = path.read_bytes()
    trainer.model[4].weight.data += 1                   # the new checkpoint would differ

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        trainer.save(path)
    assert path.read_bytes() == before
    assert not [n for n in os.listdir(path.parent) if n.endswith(".tmp")]


def test_written_files_get_ordinary_permissions(saved):
    _, path = saved
    mask = os.umask(0)
    os.umask(mask)
    for name in ("last.npz", "metrics.json", "curves.png"):
        assert os.stat(path.parent / name).st_mode & 0o777 == 0o666 & ~mask


def test_a_figure_that_fails_halfway_leaves_the_old_png(tmp_path):
    # every figure numpymnv2 writes (curves, confusion matrix, experiments) goes through atomic_write_figure
    class Breaks:
        def savefig(self, f, format, dpi):
            assert format == "png" and dpi == 120
            f.write(b"\x89PNG half a figure")
            raise RuntimeError("renderer failed")

    path = tmp_path / "figure.png"
    path.write_bytes(b"the old figure")
    with pytest.raises(RuntimeError, match="renderer failed"):
        atomic.atomic_write_figure(path, Breaks(), dpi=120)
    assert path.read_bytes() == b"the old figure" and sorted(p.name for p in tmp_path.iterdir()) == ["figure.png"]
