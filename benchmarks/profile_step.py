"""Where a numpymnv2 train step spends its time: wall time per operation of the active backend.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/profile_step.py [--batch 32] [--resolution 32]
        [--width 1.0] [--classes 10] [--cifar] [--steps 10] [--clock wall|cpu]

Every row of the operation table (:mod:`numpymnv2.ops`) is wrapped with a timer for the run, forward and
backward separately; what is left of the step ("outside the ops") is the layers' bookkeeping and input checks,
the loss and the optimizer. Also prints the minor page faults per step.

``--clock cpu`` measures the CPU time of the calling thread instead of wall time, and runs every kernel on its
serial copy so that all of its work is on that thread; with ``NUMPYMNV2_BLAS_THREADS=1`` (BLAS on the calling
thread too) it is the whole single-threaded cost of the step, far steadier on a shared machine than wall time.
"""
import argparse
import collections
import resource
import time

from numpymnv2 import bench, ops
from numpymnv2.kernels import _launch


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def _timed(fn, name, spent, clock):
    def timed(*args, **kw):
        t = clock()
        out = fn(*args, **kw)
        spent[name] += clock() - t
        return out
    return timed


def instrument(spent: dict, clock=time.perf_counter) -> None:
    """Make every :meth:`numpymnv2.ops.Op.active` return a copy of its pair that adds its time into ``spent``."""
    wrapped = {}
    active = ops.Op.active

    def timed_active(op):
        impl = active(op)
        key = (op.name, id(impl))
        if key not in wrapped:
            wrapped[key] = ops.Impl(_timed(impl.forward, f"{op.name}_forward", spent, clock),
                                    _timed(impl.backward, f"{op.name}_backward", spent, clock))
        return wrapped[key]
    ops.Op.active = timed_active


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--cifar", action="store_true")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    a = p.parse_args()
    clock = CLOCKS[a.clock]
    if a.clock == "cpu":
        _launch.PARALLEL_MIN_WORK = 1 << 62       # every kernel on its serial copy, in this thread
    spent = collections.defaultdict(float)
    instrument(spent, clock)
    row = ("profile", a.batch, a.resolution, a.width, a.classes, "cifar" if a.cifar else "imagenet", "train")
    step, _ = bench._np_step_fn(row)
    for _ in range(3):
        step()
    if bench._settle():                           # the parallel copies, compiled or loaded in the background
        for _ in range(3):
            step()
    spent.clear()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = clock()
    for _ in range(a.steps):
        step()
    total = (clock() - t) / a.steps * 1e3
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / a.steps
    print(f"train step {row[1:6]}: {total:.1f} ms ({a.clock} clock), {faults:.0f} minor page faults per step")
    for name, s in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"  {name:32s} {s / a.steps * 1e3:8.2f} ms")
    print(f"  {'outside the ops':32s} {total - sum(spent.values()) / a.steps * 1e3:8.2f} ms")


if __name__ == "__main__":
    main()
