"""Data-parallel training on MPI: the number of processes changes the speed, not the result.

``mpiexec -n 4 numpymnv2 train [...]`` (or ``numpymnv2 train --processes 4`` on one machine) runs one copy of
the training loop per process. Every step, each process takes its share of the global batch (``--batch-size``
stays the global batch), and the processes then act as one:

* **BatchNorm is synchronised** (:attr:`numpymnv2.nn.BatchNorm2d.sync`): the per-channel sums of the forward
  statistics and of the input gradient are summed over the processes (equations in
  :mod:`numpymnv2.functional.batchnorm`), so every process normalises with the whole batch's statistics.
* **The loss is the whole batch's mean**: each process scales its share's gradient by ``n_p / n`` and the
  parameter gradients are summed over the processes (one Allreduce of one flat buffer per step).
* **Every random draw is the one a single process makes.** All processes keep the same generator states and
  draw the randomness of the whole batch (the data order, every image's augmentation, the dropout mask of every
  row), then use their own rows. One process therefore draws exactly what it always drew, and N processes
  draw the same numbers.

What differs between process counts is only the order in which floating-point sums are added: a float64 run
on 2 processes ends with the weights of the 1-process run to about 2e-12 relative after a few hundred images
(tests/distributed), a float32 run to rounding; over a long run such differences grow, as training amplifies
any rounding difference (docs/distributed.md).

One process imports no MPI at all: :func:`connect` looks at the environment ``mpiexec`` (MPICH, Open MPI,
Intel MPI, SLURM's ``srun``) gives the processes it starts, and imports :mod:`mpi4py` only inside such a job.

The pieces: :mod:`~numpymnv2.distributed.comm` (the communicator over mpi4py), :mod:`~numpymnv2.distributed.
parallel` (what a training step does differently on N processes), :mod:`~numpymnv2.distributed.launch` (the
``--processes`` shortcut and the thread counts). ``docs/distributed.md`` has the performance model.
"""
from numpymnv2.distributed.comm import (Communicator, DistributedError, connect, launched_processes,
                                       require_one_process)
from numpymnv2.distributed.parallel import DataParallel, SingleProcess, shard_rows

__all__ = ["Communicator", "DataParallel", "DistributedError", "SingleProcess", "connect", "launched_processes",
           "require_one_process", "shard_rows"]
