"""What a training step does differently on N processes: shares of the batch, synchronised BatchNorm, the
gradient Allreduce and the sums of the step's metrics.

The training loop (:class:`numpymnv2.train.Trainer`) is written once, against the five methods below; with
:class:`SingleProcess` they do nothing, so one process runs exactly the code it always ran::

    rows = parallel.rows(len(y))               # this process's share of the batch: all of it on one process
    logits = model(x[rows])                    # BatchNorm sums its statistics over the processes
    loss_sum, correct, bad = parallel.sum(...)  # the whole batch's loss and accuracy (and whether any process
                                               # saw NaN): every process takes the same decision
    model.backward(dlogits * parallel.share)   # the whole batch's mean loss: n_p / n of this share's mean
    parallel.reduce_gradients()                # Parameter.grad: the sum over the processes

How the batch is split
----------------------
A batch of ``n`` images on ``P`` processes: process ``p`` takes rows ``[start_p, start_{p+1})`` with
``start_p = p (n // P) + min(p, n % P)``, so the first ``n % P`` processes take one image more (NumPy's
``array_split``). Shares of different sizes do not change the result: the loss is the whole batch's mean and
BatchNorm counts every process's values. Every process needs at least one image, so a batch (also the last,
shorter batch of an epoch) must hold at least ``P`` images.
"""
from __future__ import annotations

import numpy as np

from numpymnv2.distributed.comm import DistributedError


def shard_rows(n: int, rank: int, size: int) -> slice:
    """The rows of a batch of ``n`` that process ``rank`` of ``size`` takes (see the module docstring)."""
    base, extra = divmod(int(n), int(size))
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


class SingleProcess:
    """The data-parallel hooks of a one-process run: the whole batch, nothing to reduce."""

    rank, size = 0, 1
    comm = None
    share = 1.0

    def rows(self, n: int) -> slice:
        return slice(0, n)

    eval_rows = rows

    def sum(self, values):
        """``values`` (a sequence of numbers) summed over the processes: unchanged here."""
        return [float(v) for v in values]

    def any(self, flag: bool) -> bool:
        return bool(flag)

    def gather_rows(self, values: np.ndarray) -> np.ndarray:
        return values

    def reduce_gradients(self) -> None:
        return None

    def describe(self) -> str:
        return "1 process"


class DataParallel:
    """The data-parallel hooks of a process of an MPI job (see the module docstring).

    Building it makes every :class:`~numpymnv2.nn.BatchNorm2d` of ``model`` synchronised (``sync = comm``) and
    points every parameter's ``grad`` into one flat buffer per dtype, so the gradient Allreduce is one call on
    memory the backward pass already wrote (no copies).

    Parameters
    ----------
    model : Module
    comm : Communicator
        Anything with ``rank``, ``size``, ``allreduce(a)`` and ``allreduce_in_place(buffer)``.
    """

    def __init__(self, model, comm):
        from numpymnv2.nn import BatchNorm2d, Dropout
        self.model, self.comm = model, comm
        self.rank, self.size = comm.rank, comm.size
        self.share = 1.0
        self._dropouts = [m for m in model.modules() if isinstance(m, Dropout)]
        for m in model.modules():
            if isinstance(m, BatchNorm2d):
                m.sync = comm
        self._buffers = _flat_gradients(model)

    def rows(self, n: int) -> slice:
        """This process's rows of a batch of ``n``; also tells the dropout layers where they lie."""
        if n < self.size:
            raise DistributedError(f"a batch of {n} image{'s' if n != 1 else ''} cannot be shared among "
                                   f"{self.size} processes (each needs at least one); use a larger --batch-size or "
                                   f"fewer processes")
        rows = shard_rows(n, self.rank, self.size)
        self.share = (rows.stop - rows.start) / n
        for d in self._dropouts:
            d.batch_rows = (rows.start, n)
        return rows

    def eval_rows(self, n: int) -> slice:
        """This process's rows of an evaluation batch of ``n`` (possibly none: evaluation has no statistics to
        share)."""
        return shard_rows(n, self.rank, self.size)

    def sum(self, values) -> list[float]:
        """The sums of ``values`` (numbers) over the processes, in float64: one Allreduce."""
        return [float(v) for v in self.comm.allreduce(np.asarray(values, dtype=np.float64))]

    def any(self, flag: bool) -> bool:
        """True on every process when ``flag`` is true on any of them (a Ctrl-C that reached some processes
        sooner than others stops them all after the same step)."""
        return self.sum([bool(flag)])[0] > 0

    def gather_rows(self, values: np.ndarray) -> np.ndarray:
        """Non-negative integers of which each process filled its own rows (-1 elsewhere), completed with every
        other process's rows."""
        mine = values >= 0
        return self.comm.allreduce(np.where(mine, values + 1, 0).astype(np.int64)) - 1

    def reduce_gradients(self) -> None:
        """Replace every ``Parameter.grad`` by its sum over the processes (one Allreduce per dtype)."""
        for buffer in self._buffers:
            self.comm.allreduce_in_place(buffer)

    def describe(self) -> str:
        comm = self.comm
        where = sorted(set(getattr(comm, "hosts", [])))
        on = f" on {len(where)} machine{'s' if len(where) != 1 else ''}" if where else ""
        pids = getattr(comm, "pids", None)
        ranks = f" (pids {', '.join(str(p) for p in pids)} for ranks 0..{comm.size - 1})" if pids else ""
        return f"{comm.size} processes{on}{ranks}"


def _flat_gradients(model) -> list[np.ndarray]:
    """Point each parameter's ``grad`` at a slice of one contiguous buffer per dtype (keeping its values);
    return the buffers."""
    params = list(model.parameters())
    buffers = []
    for dt in sorted({p.grad.dtype for p in params}, key=str):
        group = [p for p in params if p.grad.dtype == dt]
        flat = np.empty(sum(p.grad.size for p in group), dtype=dt)
        offset = 0
        for p in group:
            view = flat[offset:offset + p.grad.size].reshape(p.grad.shape)
            view[...] = p.grad
            p.grad = view
            offset += p.grad.size
        buffers.append(flat)
    return buffers
