"""Data-parallel speed on one machine: 1 process x 2 threads against 2 processes x 1 thread (needs numpymnv2[mpi]).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/distributed.py [--rounds 5] [--steps 10]
        [--runs digits,cifar] [--json benchmarks/distributed.json]

Two runs, float32:

* ``digits``: the default ``numpymnv2 train`` (width 0.35, small strides, batch 64, the built-in digits with
  random crops);
* ``cifar``: the CIFAR-10-shaped run, 32x32x3 images, width 1.0, ``--arch cifar``, batch 128, random crops and
  flips. Random pixels stand in for CIFAR-10, which is not shipped (a step's time does not depend on them).

Each worker builds its run with the code ``numpymnv2 train`` uses (data, preprocessing, model, optimizer, the
Trainer and its data-parallel hooks), takes ``--warmup`` steps, then times ``--steps`` train steps
(``Trainer.train_step``, after a barrier): images/s is ``steps x batch / time``. On 2 processes it also reports
the time per step spent in the gradient Allreduce and in all collectives (the 2 per BatchNorm layer and the
step's metric sums included); both count waiting for the other process.

The two configurations run in fresh processes, alternately within each round, the order reversed every other
round; the table gives medians over the rounds and the ratio of the medians. On a shared machine only ratios
measured this way mean anything.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

RUNS = {
    "digits": {"dataset": "digits", "width": 0.35, "arch": "small", "batch_size": 64},
    "cifar": {"dataset": "synthetic-cifar", "width": 1.0, "arch": "cifar", "batch_size": 128},
}
CONFIGS = {"1x2": (1, 2), "2x1": (2, 1)}


def worker(run: str, steps: int, warmup: int) -> None:
    import numpy as np

    from numpymnv2.data import DataLoader, Dataset
    from numpymnv2.distributed import DataParallel, SingleProcess, connect
    from numpymnv2.train.config import (TrainConfig, build_model, build_optimizer, load_run_data, make_preprocess,
                                        make_transform, model_spec)
    from numpymnv2.train.trainer import Trainer

    spec = dict(RUNS[run])
    dataset = spec.pop("dataset")
    cfg = TrainConfig(**spec)
    n_images = cfg.batch_size * (steps + warmup)
    if dataset == "digits":
        train = load_run_data(cfg).train
    else:
        rng = np.random.default_rng(0)
        train = Dataset(rng.integers(0, 256, (n_images, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n_images),
                        classes=[str(c) for c in range(10)], name="cifar10")
    preprocess = make_preprocess(cfg, train)
    preprocess["flip"] = dataset != "digits"
    loader = DataLoader(train, cfg.batch_size, drop_last=True, transform=make_transform(preprocess, train=True))
    comm = connect()
    model = build_model(model_spec(cfg, train.num_classes))
    parallel = SingleProcess() if comm is None else DataParallel(model, comm)
    trainer = Trainer(model, build_optimizer(cfg, model), loader, epochs=1, progress=False, log=print,
                      parallel=parallel)
    batches = []
    while len(batches) < steps + warmup:
        batches += list(loader.epoch(len(batches)))
    for x, y in batches[:warmup]:
        trainer.train_step(x, y)
    if comm is not None:
        comm.barrier()
        comm.seconds_in.clear()
    t0 = time.perf_counter()
    for x, y in batches[warmup:steps + warmup]:
        trainer.train_step(x, y)
    if comm is not None:
        comm.barrier()
    seconds = time.perf_counter() - t0
    if comm is None or comm.rank == 0:
        spent = {} if comm is None else comm.seconds_in
        print("RESULT " + json.dumps({
            "images_per_s": steps * cfg.batch_size / seconds, "step_ms": 1e3 * seconds / steps,
            "grad_allreduce_ms": 1e3 * spent.get("Allreduce (in place)", 0.0) / steps,
            "collectives_ms": 1e3 * sum(spent.values()) / steps,
            "parameters": model.num_parameters()}), flush=True)


def run_config(run: str, config: str, steps: int, warmup: int) -> dict:
    from numpymnv2.distributed.launch import find_mpiexec
    processes, threads = CONFIGS[config]
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               OMP_NUM_THREADS=str(threads))
    command = [sys.executable, __file__, "--worker", run, "--steps", str(steps), "--warmup", str(warmup)]
    if processes > 1:
        command = [find_mpiexec(), "-n", str(processes)] + command
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{run} {config} failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(lines[0][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", default="digits,cifar")
    parser.add_argument("--json", default=None, help="write every measurement to this file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.steps, args.warmup)
    load = os.getloadavg()[0]
    results = {run: {config: [] for config in CONFIGS} for run in args.runs.split(",")}
    for r in range(args.rounds):
        for run in results:
            order = list(CONFIGS) if r % 2 == 0 else list(CONFIGS)[::-1]
            for config in order:
                results[run][config].append(run_config(run, config, args.steps, args.warmup))
                print(f"round {r + 1} {run} {config}: {results[run][config][-1]['images_per_s']:.1f} images/s",
                      file=sys.stderr, flush=True)
    print(f"load average at the start: {load:.2f}; {args.rounds} rounds of {args.steps} steps, medians\n")
    print("| run | 1 process x 2 threads, images/s | 2 processes x 1 thread, images/s | ratio 2x1 / 1x2 | "
          "gradient Allreduce per step (2x1) | all collectives per step (2x1) |")
    print("|---|---|---|---|---|---|")
    for run, by_config in results.items():
        med = {c: statistics.median(m["images_per_s"] for m in ms) for c, ms in by_config.items()}
        two = by_config["2x1"]
        grad = statistics.median(m["grad_allreduce_ms"] for m in two)
        coll = statistics.median(m["collectives_ms"] for m in two)
        step = statistics.median(m["step_ms"] for m in two)
        print(f"| {run} ({two[0]['parameters']:,} parameters) | {med['1x2']:.1f} | {med['2x1']:.1f} | "
              f"{med['2x1'] / med['1x2']:.2f} | {grad:.2f} ms | {coll:.1f} ms of {step:.0f} ms |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"load_average": load, "rounds": args.rounds, "steps": args.steps, "results": results}, f,
                      indent=1)


if __name__ == "__main__":
    main()
