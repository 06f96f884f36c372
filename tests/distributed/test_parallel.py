"""The data-parallel pieces without MPI: batch shares, dropout masks, the flat gradient buffer, sharded
evaluation, the launcher's command line, and one process never importing MPI."""
import subprocess
import sys

import numpy as np
import pytest

import numpymnv2 as mn
from numpymnv2.distributed import DataParallel, DistributedError, SingleProcess, connect, shard_rows
from numpymnv2.distributed.launch import command_line
from numpymnv2.functional import dropout_forward
from shards import ThreadGroup


@pytest.mark.parametrize("n,size", [(10, 1), (10, 2), (7, 3), (64, 4), (5, 5), (130, 7)])
def test_shares_cover_the_batch_once_and_differ_by_at_most_one(n, size):
    shares = [shard_rows(n, r, size) for r in range(size)]
    assert shares[0].start == 0 and shares[-1].stop == n
    assert all(a.stop == b.start for a, b in zip(shares, shares[1:]))
    lengths = [s.stop - s.start for s in shares]
    assert max(lengths) - min(lengths) <= 1 and lengths == sorted(lengths, reverse=True)
    assert [len(a) for a in np.array_split(np.arange(n), size)] == lengths


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dropout_masks_do_not_depend_on_the_split(dtype):
    x = np.random.default_rng(0).standard_normal((7, 5)).astype(dtype)
    whole, _ = dropout_forward(x, 0.3, True, np.random.default_rng(4))
    for size in (2, 3):
        parts = [dropout_forward(x[s], 0.3, True, np.random.default_rng(4), rows=(s.start, 7))[0]
                 for s in (shard_rows(7, r, size) for r in range(size))]
        assert np.array_equal(np.concatenate(parts), whole)
    with pytest.raises(ValueError, match="rows 5.. of a batch of 7"):
        dropout_forward(x[:4], 0.3, True, np.random.default_rng(4), rows=(5, 7))


def small_model():
    return mn.MobileNetV2(num_classes=4, width_mult=0.35, seed=0, dtype="float64", stem_stride=1)


def test_data_parallel_syncs_batchnorm_and_points_gradients_into_one_buffer():
    model = small_model()
    names = [n for n, _ in model.named_parameters()]
    group = ThreadGroup(1)
    parallel = group.run(lambda comm: DataParallel(model, _InPlace(comm)), [()])[0]
    bns = [m for m in model.modules() if isinstance(m, mn.nn.BatchNorm2d)]
    assert bns and all(m.sync is parallel.comm for m in bns)
    assert "sync=1 processes" in repr(bns[0])
    (flat,) = parallel._buffers
    assert flat.size == model.num_parameters()
    for p in model.parameters():
        assert np.shares_memory(p.grad, flat)
    assert [n for n, _ in model.named_parameters()] == names
    x = np.random.default_rng(1).standard_normal((4, 32, 32, 3))
    model.train()
    logits = model(x)
    model.backward(np.ones_like(logits))
    assert np.abs(flat).max() > 0


class _InPlace:
    """A ThreadComm with the in-place Allreduce DataParallel uses."""

    def __init__(self, comm):
        self.comm, self.rank, self.size = comm, comm.rank, comm.size

    def allreduce(self, a):
        return self.comm.allreduce(a).astype(np.asarray(a).dtype)

    def allreduce_in_place(self, buffer):
        buffer[...] = self.comm.allreduce(buffer)


def test_two_shards_step_like_the_whole_batch():
    # one forward and backward of the whole batch against two shards in threads (DataParallel's hooks),
    # with dropout active: the same logits, and gradients summed over the shards
    x = np.random.default_rng(2).standard_normal((6, 32, 32, 3))
    labels = np.arange(6) % 4
    whole = small_model().train()
    logits = whole(x)
    _, dlogits = mn.softmax_cross_entropy(logits, labels)
    whole.backward(dlogits)
    models = [small_model().train() for _ in range(2)]

    def step(comm, model):
        parallel = DataParallel(model, _InPlace(comm))
        rows = parallel.rows(len(labels))
        out = model(x[rows])
        _, d = mn.softmax_cross_entropy(out, labels[rows])
        model.backward(d * parallel.share)
        parallel.reduce_gradients()
        return out
    outs = ThreadGroup(2).run(step, [(m,) for m in models])
    np.testing.assert_allclose(np.concatenate(outs), logits, rtol=1e-9, atol=1e-12)
    for (name, p), q0, q1 in zip(whole.named_parameters(), models[0].parameters(), models[1].parameters()):
        assert np.array_equal(q0.grad, q1.grad), name           # every process holds the same sum
        np.testing.assert_allclose(q0.grad, p.grad, rtol=1e-7, atol=1e-12 * max(1, np.abs(p.grad).max()),
                                   err_msg=name)


def test_sharded_evaluation_sees_every_image_once():
    from numpymnv2.data import DataLoader, Dataset
    from numpymnv2.train.trainer import evaluate_model
    rng = np.random.default_rng(3)
    data = Dataset(rng.integers(0, 255, (11, 32, 32, 3), dtype=np.uint8), rng.integers(0, 4, 11),
                   classes=[str(c) for c in range(4)], name="toy")
    model = small_model()
    loader = DataLoader(data, 4, shuffle=False, dtype="float64")
    expected = evaluate_model(model, loader)
    copies = [small_model() for _ in range(3)]      # each process its own model (the modes are per model)
    results = ThreadGroup(3).run(lambda comm, m: evaluate_model(m, loader, DataParallel(m, _InPlace(comm))),
                                 [(m,) for m in copies])
    for loss, acc, predictions, labels in results:      # the last batch (3 images) leaves none to one process
        assert loss == pytest.approx(expected[0], rel=1e-12) and acc == expected[1]
        assert np.array_equal(predictions, expected[2]) and np.array_equal(labels, expected[3])


def test_a_batch_smaller_than_the_job_is_refused():
    parallel = ThreadGroup(1).run(lambda comm: DataParallel(small_model(), _InPlace(comm)), [()])[0]
    parallel.size = 3
    with pytest.raises(DistributedError, match="a batch of 2 images cannot be shared among 3 processes"):
        parallel.rows(2)


def test_single_process_hooks_change_nothing():
    one = SingleProcess()
    assert one.rows(5) == slice(0, 5) and one.sum([1.5, 2]) == [1.5, 2.0] and one.share == 1.0
    assert one.any(False) is False and one.any(True) is True
    values = np.arange(4)
    assert one.gather_rows(values) is values


def test_connect_outside_a_job_is_none(monkeypatch):
    for name in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "PMIX_RANK",
                 "MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK", "NUMPYMNV2_MPI"):
        monkeypatch.delenv(name, raising=False)
    assert connect() is None
    monkeypatch.setenv("PMI_SIZE", "1")
    assert connect() is None


BLOCK_MPI4PY = ("import sys\n"
                "class Block:\n"
                "    def find_spec(self, name, path=None, target=None):\n"
                "        if name.split('.')[0] == 'mpi4py': raise ImportError('no mpi4py here')\n"
                "sys.meta_path.insert(0, Block())\n")


def run_python(code, env_extra=None):
    import os
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)


def test_one_process_never_imports_mpi(tmp_path):
    code = ("import sys\n"
            "from numpymnv2.cli import main\n"
            f"status = main(['train', '--limit', '16', '--batch-size', '8', '--epochs', '1', '--width', '0.35', "
            f"'--no-progress', '--out', {str(tmp_path)!r}])\n"
            "print('status', status, 'mpi4py' in sys.modules)\n")
    done = run_python(BLOCK_MPI4PY + code)
    assert "status 0 False" in done.stdout, done.stdout + done.stderr


def test_missing_mpi4py_is_named(tmp_path):
    code = ("from numpymnv2.cli import main\n"
            f"print('status', main(['train', '--processes', '2', '--out', {str(tmp_path)!r}]))\n")
    done = run_python(BLOCK_MPI4PY.replace("import sys\n", "import sys, importlib.util\n") + code)
    assert "status 2" in done.stdout and "pip install 'numpymnv2[mpi]'" in done.stderr, done.stdout + done.stderr
    done = run_python(BLOCK_MPI4PY + "from numpymnv2.cli import main\nprint('status', main(['train']))\n",
                      {"PMI_SIZE": "2", "PMI_RANK": "0"})
    assert "status 2" in done.stdout and "mpi4py is not installed" in done.stderr, done.stdout + done.stderr


def test_processes_must_be_positive(capsys):
    from numpymnv2.cli import main
    assert main(["train", "--processes", "0"]) == 2
    assert "--processes must be a positive integer, got 0" in capsys.readouterr().err


def test_launcher_passes_every_other_option_on():
    import argparse
    from numpymnv2.train.cli import configure_parser
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    argv = ["--width", "0.5", "--no-augment", "--resume", "--epochs", "3", "--processes", "2", "--no-progress",
            "--out", "runs/x"]
    rebuilt = command_line(configure_parser, parser.parse_args(argv))
    assert "--processes" not in rebuilt
    assert vars(parser.parse_args(rebuilt)) == {**vars(parser.parse_args(argv)), "processes": None}
    assert command_line(configure_parser, parser.parse_args(["--resume", "a/last.npz"])) == ["--resume",
                                                                                           "a/last.npz"]


@pytest.mark.parametrize("command", [["evaluate", "--checkpoint", "x.npz"], ["ablate"], ["summary"]])
def test_other_commands_say_they_run_on_one_process(monkeypatch, capsys, command):
    from numpymnv2.cli import main
    monkeypatch.setenv("PMI_SIZE", "2")
    assert main(command) == 2
    assert f"{command[0]} runs on one process, but an MPI launcher started 2" in capsys.readouterr().err
