"""Data-parallel shards simulated in one process: one thread per shard, and a communicator that sums over them.

``ThreadGroup(n).run(fn, args_per_shard)`` calls ``fn(comm, *args)`` in ``n`` threads at once, ``comm`` being
that thread's :class:`ThreadComm` (rank ``r`` of ``n``); ``comm.allreduce(a)`` returns the sum of every thread's
``a``, added in rank order, so all shards get the same bits (as MPI's Allreduce gives on two processes). The
SyncBatchNorm tests run a BatchNorm on N shards of a batch this way and compare it with the unsharded op.
"""
from __future__ import annotations

import threading

import numpy as np


class ThreadComm:
    """Rank ``rank`` of a :class:`ThreadGroup`: ``allreduce(a)`` sums ``a`` over the group's threads."""

    def __init__(self, group: "ThreadGroup", rank: int):
        self.group, self.rank, self.size = group, rank, group.size

    def allreduce(self, a: np.ndarray) -> np.ndarray:
        g = self.group
        g.slots[self.rank] = np.array(a, dtype=np.float64, copy=True)
        g.calls[self.rank] += 1
        g.barrier.wait()
        total = g.slots[0].copy()
        for other in g.slots[1:]:
            total += other
        g.barrier.wait()            # nobody overwrites a slot before every thread has read them all
        return total


class ThreadGroup:
    """``size`` threads standing in for processes."""

    def __init__(self, size: int):
        self.size = size
        self.slots = [None] * size
        self.calls = [0] * size
        self.barrier = threading.Barrier(size, timeout=60)

    def run(self, fn, args_per_shard) -> list:
        """``[fn(comm_r, *args_per_shard[r]) for r in range(size)]``, the calls made in parallel threads."""
        results, errors = [None] * self.size, []

        def body(r):
            try:
                results[r] = fn(ThreadComm(self, r), *args_per_shard[r])
            except BaseException as exc:        # reported below, in the test's thread
                errors.append(exc)
                self.barrier.abort()

        threads = [threading.Thread(target=body, args=(r,)) for r in range(self.size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return results

