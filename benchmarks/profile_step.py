"""Where a numpymnv2 train step spends its time: wall time per operation of the fast backend.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/profile_step.py [--batch 32] [--resolution 32]
        [--width 1.0] [--classes 10] [--cifar] [--steps 10]

Every public operation of :mod:`numpymnv2.kernels` is wrapped with a timer for the run; what is left of the
step ("outside the ops") is the layers' bookkeeping and input checks, the loss and the optimizer. Also prints
the minor page faults per step.
"""
import argparse
import collections
import resource
import time

import numpymnv2.kernels as kernels
from numpymnv2 import bench


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--cifar", action="store_true")
    p.add_argument("--steps", type=int, default=10)
    a = p.parse_args()
    spent = collections.defaultdict(float)
    for name in kernels.__all__:
        fn = getattr(kernels, name)

        def timed(*args, _fn=fn, _name=name, **kw):
            t = time.perf_counter()
            out = _fn(*args, **kw)
            spent[_name] += time.perf_counter() - t
            return out
        setattr(kernels, name, timed)
    row = ("profile", a.batch, a.resolution, a.width, a.classes, "cifar" if a.cifar else "imagenet", "train")
    step, _ = bench._np_step_fn(row)
    for _ in range(3):
        step()
    spent.clear()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = time.perf_counter()
    for _ in range(a.steps):
        step()
    total = (time.perf_counter() - t) / a.steps * 1e3
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / a.steps
    print(f"train step {row[1:6]}: {total:.1f} ms, {faults:.0f} minor page faults per step")
    for name, s in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"  {name:28s} {s / a.steps * 1e3:8.2f} ms")
    print(f"  {'outside the ops':28s} {total - sum(spent.values()) / a.steps * 1e3:8.2f} ms")


if __name__ == "__main__":
    main()
