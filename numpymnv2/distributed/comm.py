"""The communicator: the few collective operations data-parallel training needs, over mpi4py.

Only buffer-based MPI calls are used (``Allreduce``, ``Allgather``, ``Bcast`` on NumPy arrays), never
mpi4py's pickle-based lower-case methods. Every collective runs under a watchdog: a process that waits in one
for longer than ``timeout`` seconds (a peer died without the launcher ending the job, or hangs) prints which
operation it was waiting in and ends the whole job with ``MPI_Abort``, so a broken job never hangs. MPICH's
``mpiexec`` already ends the job as soon as a process dies; the watchdog covers the launchers that do not.
"""
from __future__ import annotations

import os
import socket
import sys
import threading
import time

import numpy as np

# Set by MPI launchers in every process they start: MPICH's and Intel MPI's Hydra (PMI_*), Open MPI
# (OMPI_COMM_WORLD_*), MVAPICH (MV2_*), SLURM's srun with PMI-2 (PMI_*) or PMIx (PMIX_RANK).
_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK", "PMIX_RANK")
DEFAULT_TIMEOUT_S = 60.0


class DistributedError(ValueError):
    """A data-parallel job cannot run as asked (MPI missing, a batch that cannot be split, ...)."""

    exit_status = 2


def launched_processes() -> int | None:
    """The number of processes an MPI launcher started this one among, read from the environment: 1 outside any
    launcher, None when a launcher started it without saying how many (then only MPI can tell)."""
    for name in _SIZE_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) >= 1:
            return int(value)
    if any(os.environ.get(name) for name in _RANK_VARIABLES) or os.environ.get("NUMPYMNV2_MPI") == "1":
        return None
    return 1


def require_one_process(command: str) -> None:
    """Raise :class:`DistributedError` when ``numpymnv2 <command>``, which runs on one process, was started by
    an MPI launcher as one of several (each would do the whole work and write the same files)."""
    size = launched_processes()
    if size != 1:
        raise DistributedError(f"{command} runs on one process, but an MPI launcher started {size or 'several'}; "
                               f"only `numpymnv2 train` is data-parallel. Run `numpymnv2 {command}` without "
                               f"mpiexec or srun")


def connect(timeout: float | None = None) -> "Communicator | None":
    """The communicator of this MPI job, or None for a single process (then MPI is not imported at all).

    Raises :class:`DistributedError` when a launcher started several processes but mpi4py is not installed.
    ``timeout`` defaults to ``$NUMPYMNV2_MPI_TIMEOUT`` or 60 s (see the module docstring).
    """
    size = launched_processes()
    if size == 1:
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        raise DistributedError(f"this process is one of {size or 'several'} started by an MPI launcher, but "
                               f"mpi4py is not installed: pip install mpi4py (with an MPI library: pip install "
                               f"'numpymnv2[mpi]', or a cluster's own MPI, see the README)") from None
    comm = Communicator(MPI.COMM_WORLD, timeout)
    return comm if comm.size > 1 else None


def _timeout_from_environment() -> float:
    value = os.environ.get("NUMPYMNV2_MPI_TIMEOUT", "").strip()
    if not value:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(f"NUMPYMNV2_MPI_TIMEOUT: expected a positive number of seconds, got {value!r}")
    return seconds


class Communicator:
    """The processes of a data-parallel job (an mpi4py communicator), with the operations training uses.

    Attributes
    ----------
    rank, size : int
        This process's number and the number of processes.
    local_rank, local_size : int
        The same among the processes on this machine (they share its cores).
    pids, hosts : list
        Every rank's process id and machine name (for messages about a process that died).
    """

    def __init__(self, mpi_comm, timeout: float | None = None):
        from mpi4py import MPI
        self._MPI = MPI
        self._comm = mpi_comm
        self.rank, self.size = mpi_comm.Get_rank(), mpi_comm.Get_size()
        node = mpi_comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()
        self.timeout = float(timeout) if timeout is not None else _timeout_from_environment()
        self._op: str | None = None       # the collective this process waits in, and since when
        self._since = 0.0
        self.seconds_in: dict[str, float] = {}  # time spent in each kind of collective (waits included)
        self._watchdog = threading.Thread(target=self._watch, name="numpymnv2-mpi-watchdog", daemon=True)
        self._watchdog.start()
        self.pids = [int(p) for p in self._allgather_int(os.getpid())]
        name = socket.gethostname().encode()[:64].ljust(64, b"\0")
        hosts = np.empty((self.size, 64), dtype=np.uint8)
        self._collective("Allgather (host names)", mpi_comm.Allgather, np.frombuffer(name, dtype=np.uint8), hosts)
        self.hosts = [bytes(h).rstrip(b"\0").decode(errors="replace") for h in hosts]

    def __repr__(self) -> str:
        return f"Communicator(rank {self.rank} of {self.size})"

    # -- collectives ----------------------------------------------------------------------------------------
    def allreduce(self, a: np.ndarray) -> np.ndarray:
        """The elementwise sum of ``a`` over all processes (a new array of ``a``'s dtype; every process gets
        the same bits)."""
        a = np.ascontiguousarray(a)
        out = np.empty_like(a)
        self._collective("Allreduce", self._comm.Allreduce, a, out)
        return out

    def allreduce_in_place(self, buffer: np.ndarray) -> None:
        """Replace the contiguous ``buffer`` by its elementwise sum over all processes (the gradients)."""
        self._collective("Allreduce (in place)", self._comm.Allreduce, self._MPI.IN_PLACE, buffer)

    def broadcast(self, buffer: np.ndarray, root: int = 0) -> np.ndarray:
        """``root``'s contiguous ``buffer``, copied into every process's ``buffer`` (in place); returned."""
        self._collective("Bcast", self._comm.Bcast, buffer, root)
        return buffer

    def barrier(self) -> None:
        self._collective("Barrier", self._comm.Barrier)

    def abort(self, status: int = 1) -> None:
        """End every process of the job now (``MPI_Abort``)."""
        sys.stdout.flush()
        sys.stderr.flush()
        self._comm.Abort(status)

    def _allgather_int(self, value: int) -> np.ndarray:
        out = np.empty(self.size, dtype=np.int64)
        self._collective("Allgather", self._comm.Allgather, np.array([value], dtype=np.int64), out)
        return out

    def _collective(self, op: str, call, *args):
        self._op, self._since = op, time.monotonic()
        try:
            return call(*args)
        finally:
            self._op = None
            self.seconds_in[op] = self.seconds_in.get(op, 0.0) + time.monotonic() - self._since

    # -- watchdog -------------------------------------------------------------------------------------------
    def describe(self, rank: int) -> str:
        """``rank 1 (pid 4242 on node7)``."""
        return f"rank {rank} (pid {self.pids[rank]} on {self.hosts[rank]})" if hasattr(self, "hosts") else \
            f"rank {rank}"

    def _watch(self) -> None:
        while True:
            time.sleep(min(1.0, self.timeout / 4))
            op = self._op
            if op is not None and time.monotonic() - self._since > self.timeout:
                print(f"numpymnv2: {self.describe(self.rank)} waited {self.timeout:g} s in {op} for the other "
                      f"processes: one of them died or hangs. Ending the job (the checkpoints on disk are the "
                      f"last complete ones; set NUMPYMNV2_MPI_TIMEOUT for longer waits).", file=sys.stderr)
                self.abort(1)
                return
