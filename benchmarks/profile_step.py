"""Where a numpymnv2 train step spends its time: wall time per operation of the active backend.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/profile_step.py [--batch 32] [--resolution 32]
        [--width 1.0] [--classes 10] [--cifar] [--steps 10] [--clock wall|cpu] [--parts]

Every row of the operation table (:mod:`numpymnv2.ops`) is wrapped with a timer for the run, forward and
backward separately; what is left of the step ("outside the ops") is the layers' bookkeeping and input checks,
the loss and the optimizer. Also prints the minor page faults per step.

``--clock cpu`` measures the CPU time of the calling thread instead of wall time, and runs every kernel on its
serial copy so that all of its work is on that thread; with ``NUMPYMNV2_BLAS_THREADS=1`` (BLAS on the calling
thread too) it is the whole single-threaded cost of the step, far steadier on a shared machine than wall time.

``--parts`` times the step's parts instead, with no timer inside them: ``zero_grad``, forward, loss, backward and
the optimizer step, the median of each over ``--steps`` steps.
"""
import argparse
import collections
import resource
import statistics
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
    p.add_argument("--parts", action="store_true", help="median time of each part of the step, no op timers")
    a = p.parse_args()
    row = ("profile", a.batch, a.resolution, a.width, a.classes, "cifar" if a.cifar else "imagenet", "train")
    if a.parts:
        return time_parts(row, a.steps, CLOCKS[a.clock])
    clock = CLOCKS[a.clock]
    if a.clock == "cpu":
        _launch.PARALLEL_MIN_WORK = 1 << 62       # every kernel on its serial copy, in this thread
    spent = collections.defaultdict(float)
    instrument(spent, clock)
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


def time_parts(row, steps: int, clock) -> None:
    """The median time of each part of a train step (the step of ``bench._np_step_fn``, timed part by part)."""
    import numpymnv2 as mn
    model, x, labels = bench._np_model(row)
    model.train()
    opt_step, _ = bench._np_optimizer(model)
    names = ("zero_grad", "forward", "loss", "backward", "optimizer step")
    times = collections.defaultdict(list)
    for i in range(6 + steps):
        if i == 3:
            bench._settle()                       # the parallel copies, compiled or loaded in the background
        t = [clock()]
        model.zero_grad()
        t.append(clock())
        logits = model(x)
        t.append(clock())
        _, dlogits = mn.softmax_cross_entropy(logits, labels)
        t.append(clock())
        model.backward(dlogits)
        t.append(clock())
        opt_step()
        t.append(clock())
        if i >= 6:
            for k, name in enumerate(names):
                times[name].append((t[k + 1] - t[k]) * 1e3)
    medians = {name: statistics.median(times[name]) for name in names}
    print(f"train step {row[1:6]} by parts, medians of {steps} steps: {sum(medians.values()):.1f} ms")
    for name, ms in medians.items():
        print(f"  {name:32s} {ms:8.2f} ms")


if __name__ == "__main__":
    main()
