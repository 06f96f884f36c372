"""``numpymnv2 train``: train a MobileNetV2, by default on the built-in digits, offline.

Everything the run writes goes to ``--out`` (default ``runs/<dataset>``): ``last.npz`` after every epoch,
``best.npz`` at the best validation accuracy, ``metrics.csv``/``metrics.json``/``metrics.jsonl`` and
``curves.png``. ``--epochs`` is the total length of the run, so ``--resume --epochs 40`` extends a finished
30-epoch run by 10.

Validation is a stratified tenth of the training split (``--val-fraction``); the test split is read only once
the run has ended, to report the final model's test accuracy on a line of its own.
"""
from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from numpymnv2.train.config import (OPTIMIZERS, SCHEDULES, TrainConfig, build_model, build_optimizer,
                                    build_schedule, default_out_dir, load_run_data, load_test_data,
                                    make_loaders, make_preprocess, model_spec, run_record, set_bn_momentum,
                                    split_record)

_FROM_OUT = "<out>/last.npz"
EXIT_INTERRUPTED = 130


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from numpymnv2._argtypes import add_arch_argument, path
    from numpymnv2.data.dataset import DATASET_NAMES
    d = TrainConfig()
    parser.description = (
        "Train a MobileNetV2 and write checkpoints, metrics and learning curves to --out. Without options it "
        "trains on the built-in hand-written digits (offline) and reaches 99-100% validation and 96-98% test "
        "accuracy in about a minute on two cores. Ctrl-C saves a checkpoint; --resume continues bit for bit.")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASET_NAMES, default=None,
                      help=f"what to train on (default: {d.dataset}, built in)")
    data.add_argument("--data-dir", default=None, metavar="DIR", type=path,
                      help="folder holding the dataset's files (for folder: one sub-folder per class, or train/ "
                           "and test/ holding those); default $NUMPYMNV2_DATA or ~/.cache/numpymnv2")
    data.add_argument("--resolution", type=int, default=None, metavar="PX",
                      help=f"images are resized to PX x PX (default: {d.resolution})")
    data.add_argument("--no-augment", dest="augment", action="store_false", default=None,
                      help="no random crops (and flips) during training")
    data.add_argument("--val-fraction", type=float, default=None, metavar="F",
                      help=f"hold out this fraction of the training split, stratified by class, to validate on "
                           f"(chooses best.npz, --patience); the test split is only read at the end, for the "
                           f"final model's test accuracy (default: {d.val_fraction}). 0 validates on the test "
                           f"split, the behaviour before numpymnv2 0.2, which makes that test accuracy optimistic")
    data.add_argument("--limit", type=int, default=None, metavar="N",
                      help="use at most N training and N validation images, for a quick trial")
    model = parser.add_argument_group("model")
    model.add_argument("--width", type=float, default=None, metavar="W",
                       help=f"width multiplier (default: {d.width})")
    add_arch_argument(model, None, d.arch)
    model.add_argument("--dropout", type=float, default=None, help=f"before the classifier (default: {d.dropout})")
    model.add_argument("--dtype", choices=("float32", "float64"), default=None,
                       help=f"of the weights and the computation; float64 is slower, for checks (default: {d.dtype})")
    opt = parser.add_argument_group("optimization")
    opt.add_argument("--epochs", type=int, default=None,
                     help=f"total epochs of the run, also when resuming (default: {d.epochs})")
    opt.add_argument("--batch-size", type=int, default=None,
                     help=f"images per optimizer step, at least 2 (BatchNorm) (default: {d.batch_size})")
    opt.add_argument("--optimizer", choices=OPTIMIZERS, default=None,
                     help=f"sgd and nesterov use --momentum; rmsprop is the paper's (decay 0.9, momentum "
                          f"--momentum, TensorFlow epsilon) (default: {d.optimizer})")
    opt.add_argument("--lr", type=float, default=None, help=f"peak learning rate (default: {d.lr})")
    opt.add_argument("--momentum", type=float, default=None,
                     help=f"of sgd, nesterov and rmsprop, in [0, 1) (default: {d.momentum})")
    opt.add_argument("--weight-decay", type=float, default=None,
                     help=f"L2 decay of the weights; BatchNorm parameters and biases are not decayed "
                          f"(default: {d.weight_decay})")
    opt.add_argument("--schedule", choices=SCHEDULES, default=None,
                     help=f"learning-rate schedule over the run, per iteration (default: {d.schedule})")
    opt.add_argument("--warmup-epochs", type=int, default=None,
                     help=f"linear warm-up from 0.1 x lr (default: {d.warmup_epochs})")
    opt.add_argument("--bn-momentum", type=float, default=None, metavar="M",
                     help=f"BatchNorm running statistics: running = (1 - M) running + M batch; larger follows the "
                          f"weights more closely, which matters early in a short run (default: {d.bn_momentum})")
    opt.add_argument("--precise-bn", type=int, default=None, metavar="N",
                     help=f"before each validation, re-estimate the BatchNorm statistics at the epoch's final "
                          f"weights from N training batches (forward passes only); 0 keeps the running averages, "
                          f"which lag behind fast-moving weights early in a run (default: {d.precise_bn})")
    opt.add_argument("--label-smoothing", type=float, default=None,
                     help=f"weight moved from the true class to all classes evenly, in [0, 1) "
                          f"(default: {d.label_smoothing})")
    opt.add_argument("--patience", type=int, default=None, metavar="N",
                     help="early stopping: end the run when the validation accuracy has not improved for N "
                          "epochs (best.npz keeps the best model; default: train all --epochs)")
    opt.add_argument("--seed", type=int, default=None,
                     help=f"fixes the initial weights, the data order, augmentation and dropout (default: {d.seed})")
    run = parser.add_argument_group("run")
    run.add_argument("--out", default=None, metavar="DIR", type=path, help="output folder (default: runs/<dataset>)")
    run.add_argument("--resume", nargs="?", const=_FROM_OUT, default=None, metavar="PATH", type=path,
                     help="continue a run: alone, from --out's last.npz; or from the checkpoint PATH. The run "
                          "keeps its configuration; only --epochs (and --data-dir) may change")
    run.add_argument("--overwrite", action="store_true", help="start afresh even if --out already holds a run")
    run.add_argument("--backend", choices=("fast", "reference"), default="fast",
                     help="the Numba kernels or the readable NumPy code (a resumed run continues bit for bit "
                          "only on the backend it started with)")
    run.add_argument("--processes", type=int, default=None, metavar="N",
                     help="train data-parallel on N processes of this machine, through mpiexec (needs "
                          "numpymnv2[mpi]); the same run, faster. On a cluster start the job with mpiexec or srun "
                          "instead (see the README)")
    run.add_argument("--no-progress", dest="progress", action="store_false",
                     help="one line per epoch instead of progress bars (the default when the output is not a "
                          "terminal, e.g. redirected to a file)")


def _explicit_options(args) -> dict:
    names = [f for f in TrainConfig.__dataclass_fields__]
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def _out_dir(args) -> Path:
    """The run folder: --out, else beside the checkpoint given to --resume, else runs/<dataset>."""
    if args.out:
        return Path(args.out)
    if args.resume not in (None, _FROM_OUT):
        path = Path(args.resume)
        return path.parent if path.suffix else path
    return default_out_dir(TrainConfig(dataset=_explicit_options(args).get("dataset", "digits")))


def _resolve(args):
    """``(cfg, out_dir, checkpoint or None)`` from the command line (and the checkpoint when resuming)."""
    from numpymnv2.train.checkpoint import load_checkpoint
    explicit = _explicit_options(args)
    out = _out_dir(args)
    if args.resume is None:
        cfg = TrainConfig(**explicit)
        last = out / "last.npz"
        if last.exists() and not args.overwrite:
            raise ValueError(f"{out} already holds a run ({last}); continue it with --resume (and --epochs for a "
                             f"longer run), start over with --overwrite, or choose another --out")
        return cfg, out, None

    if args.resume == _FROM_OUT:
        path = out / "last.npz"
        if not path.exists():
            raise FileNotFoundError(f"--resume: there is no checkpoint {path} to continue; start a run without "
                                    f"--resume, or pass --resume PATH")
    else:
        path = Path(args.resume)
    ckpt = load_checkpoint(path)
    saved = ckpt.config.get("train")
    if not isinstance(saved, dict):
        raise ValueError(f"{ckpt.path} has no training configuration, so it cannot be resumed (was it written "
                         f"by `numpymnv2 train`?)")
    conflicts = [f"{_flag(k, v)} (the run has {_flag(k, saved.get(k))})" for k, v in explicit.items()
                 if k not in TrainConfig.RESUMABLE and saved.get(k) != v]
    if conflicts:
        raise ValueError("a resumed run keeps its configuration, but these options differ from it: "
                         + "; ".join(conflicts) + ". Drop them, or start a new run in another --out")
    merged = dict(saved)
    merged.update({k: v for k, v in explicit.items() if k in TrainConfig.RESUMABLE})
    return TrainConfig.from_dict(merged), out, ckpt


def _flag(name: str, value) -> str:
    if name == "augment":
        return "--no-augment" if value is False else "augmentation"
    return f"--{name.replace('_', '-')} {value}"


def build_trainer(cfg: TrainConfig, out: Path | None, ckpt=None, progress: bool = True, log=None, comm=None):
    """Everything of a run: data, preprocessing, model, optimizer, schedule, wrapped in a Trainer.

    ``comm``: the job's communicator when it runs on several processes (:func:`numpymnv2.distributed.connect`);
    give ``out`` to rank 0 only."""
    from numpymnv2.distributed import DataParallel, SingleProcess
    from numpymnv2.models.footprint import check_batch_fits
    from numpymnv2.train.trainer import Trainer
    run = load_run_data(cfg)
    train, val = run.train, run.val
    if ckpt is not None:
        preprocess = ckpt.config["preprocess"]
        if list(ckpt.config.get("classes", [])) != list(train.classes):
            raise ValueError(f"{ckpt.path} was trained on the classes {ckpt.config.get('classes')}, but the data "
                             f"now has {train.classes}")
        for name, rows in split_record(run).items():
            if name in ckpt.split and not np.array_equal(ckpt.split[name], rows):
                raise ValueError(f"{ckpt.path}: the dataset no longer gives the run's {name.split('_')[0]} "
                                 f"images (its files changed since the run started); a resumed run must see "
                                 f"the same data")
        spec = ckpt.config["model"]
    else:
        preprocess = make_preprocess(cfg, train)
        spec = model_spec(cfg, train.num_classes)
    train_loader, val_loader = make_loaders(cfg, preprocess, train, val)
    model = set_bn_momentum(build_model(spec), cfg.bn_momentum)
    R = int(preprocess["resolution"])
    check_batch_fits(model, (min(cfg.batch_size, len(train)), R, R, 3), training=True)   # before any work
    parallel = SingleProcess() if comm is None else DataParallel(model, comm)
    optimizer = build_optimizer(cfg, model)
    schedule = build_schedule(cfg, optimizer, len(train_loader))
    config = run_record(cfg, spec, preprocess, run)
    config["processes"] = parallel.size
    trainer = Trainer(model, optimizer, train_loader, val_loader, epochs=cfg.epochs, schedule=schedule,
                      out_dir=out, config=config, label_smoothing=cfg.label_smoothing, split=split_record(run),
                      patience=cfg.patience, precise_bn=cfg.precise_bn, progress=progress, log=log,
                      parallel=parallel)
    if ckpt is not None:
        trainer.restore(ckpt)
    return trainer


def describe_run(trainer, cfg: TrainConfig, out: Path) -> str:
    spec, pre, data = trainer.config["model"], trainer.config["preprocess"], trainer.config["data"]
    H, W = pre["image_size"]
    n_params = trainer.model.num_parameters()
    aug = [f"random crop (pad {pre['crop_padding']})"] if pre["crop_padding"] else []
    aug += ["horizontal flip"] if pre["flip"] else []
    warm = f", {cfg.warmup_epochs} warm-up epoch{'s' if cfg.warmup_epochs != 1 else ''}" if cfg.warmup_epochs else ""
    mom = f" momentum {cfg.momentum}" if cfg.optimizer in ("sgd", "nesterov", "rmsprop") else ""
    return "\n".join([
        f"MobileNetV2 width {spec['width_mult']:g} ({cfg.arch} strides), {spec['num_classes']} classes, "
        f"{n_params / 1e6:.2f} M parameters, {cfg.dtype}",
        f"data: {cfg.dataset}, {data['train_images']} training / {data['val_images']} validation images "
        f"({data['val_source']}), {H}x{W}x{pre['channels']} -> {pre['resolution']}x{pre['resolution']}x3, "
        f"augmentation: {', '.join(aug) or 'none'}",
        f"optimizer: {cfg.optimizer} lr {cfg.lr:g}{mom} weight decay {cfg.weight_decay:g} (not on BN/bias), "
        f"{cfg.schedule} schedule{warm}" + (f", label smoothing {cfg.label_smoothing:g}" if cfg.label_smoothing else "")
        + (f", BatchNorm momentum {cfg.bn_momentum:g}" if cfg.bn_momentum != 0.1 else "")
        + (f"; BatchNorm statistics re-estimated from {cfg.precise_bn} training batches before each validation"
           if cfg.precise_bn else ""),
        f"{cfg.epochs} epochs x {len(trainer.train_loader)} batches of {cfg.batch_size}"
        + (f" (early stopping after {cfg.patience} without improvement)" if cfg.patience else "")
        + f", seed {cfg.seed}; writing to {out}",
    ] + ([f"data-parallel: {trainer.parallel.describe()}"] if trainer.parallel.size > 1 else []))


def run(args) -> int:
    from numpymnv2.distributed import connect, launched_processes
    if args.processes is not None and args.processes < 1:
        raise ValueError(f"--processes must be a positive integer, got {args.processes}")
    if (args.processes or 1) > 1 and launched_processes() == 1:     # start the job: mpiexec runs this command
        from numpymnv2.distributed.launch import command_line, launch
        return launch(args.processes, ["train", *command_line(configure_parser, args)])
    comm = connect()
    if comm is not None and args.processes not in (None, comm.size):
        raise ValueError(f"--processes {args.processes}, but the job has {comm.size} processes (leave "
                         f"--processes out under mpiexec or srun)")
    try:
        return _run(args, comm)
    except KeyboardInterrupt:       # before or after training: nothing to save
        if comm is None or comm.rank == 0:
            print("numpymnv2 train: interrupted")
        return EXIT_INTERRUPTED


def _run(args, comm=None) -> int:
    from numpymnv2.train.runfolder import lock_run_folder
    if comm is None:
        with lock_run_folder(_out_dir(args)):     # before the folder is looked at: two runs must not both start
            return _run_locked(args)
    with contextlib.ExitStack() as held:        # rank 0 holds the folder for the job; every process learns if not
        refused = None
        if comm.rank == 0:
            try:
                held.enter_context(lock_run_folder(_out_dir(args)))
            except Exception as exc:            # raised below, once every process knows
                refused = exc
        if comm.allreduce(np.array([refused is not None], dtype=np.float64))[0]:
            if refused is not None:
                raise refused
            return 2
        return _run_locked(args, comm)


def _run_locked(args, comm=None) -> int:
    from numpymnv2.backend import use_backend
    from numpymnv2.train.metrics import write_metrics
    from numpymnv2.train.trainer import RUN_FILES, NonFiniteLossError
    writer = comm is None or comm.rank == 0     # one process writes files and messages
    if comm is not None:
        from numpymnv2.distributed.launch import apply_thread_defaults, write_ranks_file
        apply_thread_defaults(comm.local_size)
        write_ranks_file(comm)
    cfg, out, ckpt = _resolve(args)
    # progress bars only on a terminal: redirected to a file they would write every frame
    trainer = build_trainer(cfg, out if writer else None, ckpt, progress=writer and args.progress and
                            sys.stderr.isatty(), log=None if writer else _silent, comm=comm)
    if args.overwrite and ckpt is None and writer:
        for name in RUN_FILES:          # no file of the old run may outlive the new one's first epoch
            (out / name).unlink(missing_ok=True)
    say = trainer.say
    say(describe_run(trainer, cfg, out))
    if ckpt is not None:
        done = len(trainer.history)
        if done >= cfg.epochs:
            say(f"{ckpt.path}: the run has already done {done} epoch{'s' if done != 1 else ''} (--epochs "
                f"{cfg.epochs}); pass a larger --epochs to train longer")
            return 0
        if trainer.stopped_early:
            say(f"{ckpt.path}: the run stopped early after epoch {done} (no better validation accuracy since "
                f"epoch {trainer.best['epoch']}, --patience {cfg.patience}); resume with a larger --patience, or "
                f"--patience 0, to train on")
            return 0
        pos = trainer.position
        at = f"epoch {pos['epoch'] + 1}" + (f", batch {pos['batch']}" if pos["batch"] else "")
        say(f"resuming from {ckpt.path} at {at} (step {pos['step']})")
    t0 = time.perf_counter()
    try:
        with _ends_job_on_error(comm), use_backend(args.backend):
            result = trainer.fit()
    except NonFiniteLossError as exc:       # every process diverges together (the trainer sums the checks)
        if writer:
            print(f"numpymnv2 train: error: {exc}", file=sys.stderr)
        return 1
    wall = time.perf_counter() - t0
    if result.status == "interrupted":
        if writer and trainer.last_path.exists():
            say(f"continue with: numpymnv2 train --out {shlex.quote(str(out))} --resume")
        return EXIT_INTERRUPTED
    with _ends_job_on_error(comm), use_backend(args.backend):
        test, missing = final_test(trainer, cfg)
    if not writer:
        return 0
    if test is not None:
        write_metrics(out, trainer.history, trainer.best, trainer.config, test=test)
    say(_summary(cfg, result, wall, out, test, missing))
    return 0


def _silent(message: str) -> None:
    """The messages of every process but rank 0."""


@contextlib.contextmanager
def _ends_job_on_error(comm):
    """On several processes, an error that reached one process only would leave the others waiting in the next
    collective: report it with the process's rank and end the whole job (the checkpoints on disk are the last
    complete ones). Divergence is raised by every process together and passes through."""
    from numpymnv2.train.trainer import NonFiniteLossError
    try:
        yield
    except (NonFiniteLossError, KeyboardInterrupt):
        raise
    except BaseException as exc:
        if comm is None:
            raise
        from numpymnv2.cli import describe_error, exit_status
        print(f"numpymnv2 train: error in {comm.describe(comm.rank)}: {describe_error(exc)}; ending the job",
              file=sys.stderr)
        comm.abort(exit_status(exc) or 1)


def final_test(trainer, cfg: TrainConfig) -> tuple[dict | None, str | None]:
    """``(record, None)``: the final model's accuracy (and top-5 accuracy, ``top5_acc``, with more than 5
    classes) on the test split, read only now; or ``(None, why)`` when the dataset has no test split."""
    from numpymnv2.data import DataLoader
    from numpymnv2.train.config import make_transform
    from numpymnv2.train.cli_evaluate import TOP_K, evaluate_with_top_k
    try:
        test = load_test_data(cfg)
    except FileNotFoundError as exc:
        return None, str(exc).splitlines()[0]
    loader = DataLoader(test, max(cfg.batch_size, 256), shuffle=False, dtype=cfg.dtype,
                        transform=make_transform(trainer.config["preprocess"], train=False))
    loss, acc, predictions, labels, top_acc = evaluate_with_top_k(trainer.model, loader, test.num_classes,
                                                                  trainer.parallel)
    record = {"model": "last.npz", "epoch": len(trainer.history), "images": len(test),
              "correct": int((predictions == labels).sum()), "acc": acc, "loss": loss,
              "also_validation": cfg.val_fraction == 0}
    if top_acc is not None:
        record[f"top{TOP_K}_acc"] = top_acc
    return record, None


def _summary(cfg: TrainConfig, result, wall: float, out: Path, test: dict | None, missing: str | None) -> str:
    from numpymnv2.train.trainer import RUN_FILES
    last = result.history[-1]
    done = f"{result.epochs_done} epoch{'s' if result.epochs_done != 1 else ''}"
    lines = [f"done: {done} in {_duration(wall)} (this session)"]
    if result.status == "stopped early":
        lines[0] = (f"stopped early after {done} in {_duration(wall)} (this session): no better validation "
                    f"accuracy for {cfg.patience} epochs (--patience {cfg.patience})")
    if last.get("val_acc") is not None:
        best = result.best
        lines[0] += (f"; validation accuracy {100 * last['val_acc']:.2f}% after the last epoch, best "
                     f"{100 * best['val_acc']:.2f}% at epoch {best['epoch']}")
    if test is not None:
        note = ("the test split was also the validation set (--val-fraction 0), so this is optimistic"
                if test["also_validation"] else "images the run never trained or validated on")
        top = "".join(f"; top-{k[3:-4]} accuracy {100 * v:.2f}%" for k, v in test.items()
                      if k.startswith("top") and k.endswith("_acc"))
        lines.append(f"test accuracy of the final model (last.npz): {100 * test['acc']:.2f}% ({test['correct']}/"
                     f"{test['images']} test images; {note}){top}")
    else:
        lines.append(f"test accuracy: none, the dataset has no test split ({missing}); the validation accuracy "
                     f"is the run's only held-out measure")
    files = [name for name in RUN_FILES if (out / name).exists()]
    lines.append(f"files in {out}: {', '.join(files)}")
    split = "test" if test is not None else "val"
    lines.append(f"evaluate: numpymnv2 evaluate --checkpoint {shlex.quote(str(out / 'last.npz'))} --split {split}")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    m, s = divmod(seconds, 60)
    return f"{int(m)} min {s:.0f} s" if m else f"{s:.1f} s"
