"""Starting a job on this machine (``numpymnv2 train --processes N``) and the thread counts of its processes.

``--processes N`` runs ``mpiexec -n N python -m numpymnv2 train [the other options]`` and waits for it. The
job's processes get a new session, so a Ctrl-C at the terminal reaches only this launcher, which passes each one
on to ``mpiexec`` once (``mpiexec`` hands the first to every process, which save and stop after the same step;
a second one ends the job at once). The job's output passes through the launcher line by line: when MPICH's
``mpiexec`` reports that a process died (``PID 4242 RUNNING AT node ... EXIT CODE: 9``) and ended the others,
the launcher says which rank that was (rank 0 tells it every rank's process id through the file
``$NUMPYMNV2_RANKS_FILE``).

Threads: N processes on a machine of C cores each default to ``C // N`` Numba threads and ``C // N`` BLAS
threads (at least 1), so ``mpiexec -n 2`` on 2 cores does not run 4 busy threads on 2 cores. The user keeps
the last word: ``NUMBA_NUM_THREADS`` and ``NUMPYMNV2_BLAS_THREADS`` (or ``OPENBLAS_NUM_THREADS``,
``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``) set in the environment are left as they are.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from numpymnv2.distributed.comm import DistributedError

_BLAS_VARIABLES = ("NUMPYMNV2_BLAS_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def machine_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:          # not on Linux
        return os.cpu_count() or 1


def threads_per_process(processes_here: int) -> int:
    return max(1, machine_cores() // max(1, int(processes_here)))


def apply_thread_defaults(processes_here: int) -> dict:
    """Give this process its share of the machine's cores (module docstring); return what was set."""
    n = threads_per_process(processes_here)
    decided = {}
    if not os.environ.get("NUMBA_NUM_THREADS"):
        import numba
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
        decided["numba"] = numba.get_num_threads()
    else:
        decided["numba"] = f"{os.environ['NUMBA_NUM_THREADS']} (NUMBA_NUM_THREADS)"
    if any(os.environ.get(v) for v in _BLAS_VARIABLES):
        decided["blas"] = "as the environment sets"
    else:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            decided["blas"] = "unchanged (threadpoolctl is not installed)"
        else:
            threadpool_limits(limits=n, user_api="blas")
            decided["blas"] = n
    return decided


def find_mpiexec() -> str | None:
    """``mpiexec`` beside this Python (a virtual environment's, from the mpich wheel), else on the PATH."""
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.exists():
        return str(beside)
    return shutil.which("mpiexec")


def launch(processes: int, argv: list[str]) -> int:
    """Run ``numpymnv2 <argv>`` on ``processes`` processes of this machine through ``mpiexec``; return its exit
    status."""
    try:
        import mpi4py  # noqa: F401  (the package only: MPI itself starts in the job's processes)
    except ImportError:
        raise DistributedError("--processes needs mpi4py and an MPI library: pip install 'numpymnv2[mpi]' (or "
                               "pip install mpi4py mpich)") from None
    mpiexec = find_mpiexec()
    if mpiexec is None:
        raise DistributedError("--processes needs MPI's mpiexec, which is not on the PATH: pip install mpich (or "
                               "load your cluster's MPI module)")
    env = dict(os.environ)
    n = str(threads_per_process(processes))
    env.setdefault("NUMBA_NUM_THREADS", n)
    if not any(env.get(v) for v in _BLAS_VARIABLES):
        env["OPENBLAS_NUM_THREADS"] = env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = n
    command = [mpiexec, "-n", str(processes), sys.executable, "-m", "numpymnv2", *argv]
    with tempfile.TemporaryDirectory(prefix="numpymnv2-job-") as folder:
        env["NUMPYMNV2_RANKS_FILE"] = ranks_file = os.path.join(folder, "ranks")
        job = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE, text=True,
                               bufsize=1, errors="replace")
        previous = signal.signal(signal.SIGINT, lambda signum, frame: job.send_signal(signal.SIGINT))
        died = None
        try:
            for line in job.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                found = re.search(r"PID (\d+) RUNNING AT (\S+)", line)
                died = int(found.group(1)) if found else died
            status = job.wait()
        finally:
            signal.signal(signal.SIGINT, previous)
        if died is not None:
            print(f"numpymnv2 train: {_rank_of(died, ranks_file)} ended abnormally, so mpiexec ended the whole job "
                  f"(exit status {status}); the checkpoints on disk are the last complete ones", file=sys.stderr)
        return status


def write_ranks_file(comm) -> None:
    """Rank 0 of a job started by :func:`launch`: write every rank's process id and machine, for its messages."""
    path = os.environ.get("NUMPYMNV2_RANKS_FILE")
    if path and comm.rank == 0:
        Path(path).write_text("".join(f"{r} {pid} {host}\n" for r, (pid, host) in enumerate(zip(comm.pids,
                                                                                              comm.hosts))))


def _rank_of(pid: int, ranks_file: str) -> str:
    try:
        for line in Path(ranks_file).read_text().splitlines():
            rank, rank_pid, host = line.split(maxsplit=2)
            if int(rank_pid) == pid:
                return f"rank {rank} (pid {pid} on {host})"
    except (OSError, ValueError):
        pass
    return f"the process with pid {pid}"


def command_line(parser_setup, args, skip=("processes",)) -> list[str]:
    """The options of ``args`` (parsed by a parser that ``parser_setup(parser)`` configures) as a command line,
    without the ``skip`` ones: what the launcher hands the job's processes."""
    import argparse
    parser = argparse.ArgumentParser(add_help=False)
    parser_setup(parser)
    out = []
    for action in parser._actions:
        if not action.option_strings or action.dest in skip:
            continue
        value = getattr(args, action.dest, action.default)
        if value == action.default:
            continue
        flag = action.option_strings[-1] if action.option_strings[-1].startswith("--") else action.option_strings[0]
        if action.nargs == 0:
            out.append(flag)
        elif action.nargs == "?" and value == action.const:
            out.append(flag)
        else:
            out += [flag, str(value)]
    return out
