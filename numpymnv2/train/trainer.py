"""The training loop: epochs of training and evaluation, metrics, checkpoints and an exact resume.

One optimizer step is::

    logits = model(x)                                   # training mode: batch statistics, dropout
    loss, dlogits = softmax_cross_entropy(logits, y, label_smoothing)
    model.backward(dlogits)                             # fills Parameter.grad
    optimizer.step(); schedule.step()                   # the schedule counts iterations

What makes a resumed run identical, bit for bit, to one never stopped
-------------------------------------------------------------------
Everything a step depends on is either saved or a pure function of saved numbers:

* the weights and BatchNorm buffers (``model.state_dict()``), the optimizer's state, the schedule's position;
* the dropout generators' ``bit_generator.state``;
* the data: the loader's batches of epoch ``e`` depend only on ``(seed, e)`` (see
  :mod:`numpymnv2.data.loader`), so a run resumed at batch ``b`` of epoch ``e`` asks for
  ``loader.epoch(e, start_batch=b)``;
* the running sums of the unfinished epoch (so its reported loss and accuracy come out the same).

On N processes (``parallel``, see :mod:`numpymnv2.distributed`) each step computes this process's share of the
batch and the processes sum what they must (BatchNorm statistics, gradients, the step's loss and accuracy, the
decision to stop); every process holds the same state, rank 0 writes the files, and a checkpoint does not
depend on the number of processes.

A checkpoint is therefore taken only *between* steps. Ctrl-C does not stop a step half-way: the trainer's
SIGINT handler only raises a flag, and the loop saves ``last.npz`` after the step in flight (a second Ctrl-C
stops at once). A ``KeyboardInterrupt`` raised some other way inside a step (for instance where the handler
cannot be installed, off the main thread) rolls the step back: the BatchNorm buffers and generators are
restored from a copy taken when the step began; the parameters have not moved until ``optimizer.step()``.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from numpymnv2._checks import NonFiniteError
from numpymnv2.distributed.parallel import SingleProcess
from numpymnv2.functional.loss import softmax_cross_entropy
from numpymnv2.models.footprint import check_batch_fits
from numpymnv2._atomic import remove_temporary_files
from numpymnv2.train.checkpoint import (Checkpoint, CheckpointError, NonFiniteStateError, checkpoint_bytes,
                                        generator_states, load_model_state, module_generators,
                                        restore_generator_states, save_checkpoint)
from numpymnv2.train.metrics import append_jsonl, plot_curves, write_jsonl, write_metrics
from numpymnv2.train.runfolder import check_output_folder, lock_run_folder

# every file a run writes into its output folder
RUN_FILES = ("last.npz", "best.npz", "metrics.csv", "metrics.json", "metrics.jsonl", "curves.png")


class NonFiniteLossError(RuntimeError):
    """The run diverged: the loss, the logits, the BatchNorm statistics or the weights became NaN or infinite.
    The run stopped without saving the broken state; the checkpoints on disk are the last good ones."""

    exit_status = 1     # the run failed (see numpymnv2.cli)


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, ...); the previous file of that name is intact."""


@dataclass
class FitResult:
    """What :meth:`Trainer.fit` did.

    Attributes
    ----------
    status : {"finished", "stopped early", "interrupted"}
        "stopped early": the validation accuracy did not improve for ``patience`` epochs.
    epochs_done : int
        Finished epochs (all of them, counting those of earlier sessions of a resumed run).
    history : list of dict
        The metrics of every finished epoch (see :mod:`numpymnv2.train.metrics`).
    best : dict or None
        ``{"epoch": ..., "val_acc": ...}`` of the best validation accuracy.
    last_checkpoint, best_checkpoint : Path or None
        The files written (None without an output folder).
    """

    status: str
    epochs_done: int
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    last_checkpoint: Path | None = None
    best_checkpoint: Path | None = None


def _fresh_progress() -> dict[str, Any]:
    return {"epoch": 0, "batch": 0, "step": 0, "elapsed_s": 0.0,
            "partial": {"loss_sum": 0.0, "correct": 0, "seen": 0, "time_s": 0.0, "lr": None}}


class Trainer:
    """Train a model for a number of epochs, evaluating after each, with checkpoints and metrics on disk.

    Parameters
    ----------
    model : Module
        Anything with ``__call__``, ``backward``, ``train``/``eval``, ``state_dict``/``load_state_dict`` and
        ``named_modules`` (a :class:`~numpymnv2.models.MobileNetV2`, or a small ``Sequential`` in tests).
    optimizer : Optimizer
        Built on the model's parameters.
    train_loader : DataLoader
        Must provide ``epoch(e, start_batch=b)`` and ``len()`` (batches per epoch).
    val_loader : DataLoader, optional
        Evaluated after every epoch; ``best.npz`` follows its accuracy. Without it there is no best checkpoint.
    epochs : int
        Total number of epochs of the run (a resumed run continues up to it).
    schedule : LRScheduler, optional
        Stepped after every optimizer step.
    out_dir : str or Path, optional
        Where ``last.npz``, ``best.npz``, ``metrics.csv``, ``metrics.json``, ``metrics.jsonl`` (one JSON line
        per epoch, appended as epochs end, for tools that follow the run) and ``curves.png`` go; nothing is
        written without it.
    config : dict, optional
        JSON-able description of the run stored in every checkpoint; ``config["model"]`` names the
        architecture in error messages.
    label_smoothing : float
        Of the training loss (validation always uses the plain cross-entropy).
    split : dict of str to ndarray, optional
        The rows of the dataset the run trains and validates on (``train_rows``, ``val_rows``), stored in every
        checkpoint (see :func:`numpymnv2.train.config.load_run_data`).
    patience : int, optional
        Early stopping: end the run when the validation accuracy has not improved for this many epochs
        (``best.npz`` then holds the best model). None or 0: train all ``epochs``.
    precise_bn : int
        Before each epoch's validation, re-estimate the BatchNorm running statistics at the epoch's final
        weights from this many training batches (:meth:`recalibrate_batchnorm`); 0 keeps the running averages
        that training accumulated.
    progress : bool
        Show a tqdm progress bar per epoch; without it one line per epoch is logged instead.
    log : callable, optional
        Receives every message (default: print to stdout, through tqdm so bars stay intact).
    parallel : DataParallel, optional
        Data-parallel training on several processes (:class:`numpymnv2.distributed.DataParallel`, built on this
        model); default one process. Give ``out_dir`` (and the messages) to rank 0 only.
    """

    def __init__(self, model, optimizer, train_loader, val_loader=None, *, epochs: int, schedule=None,
                 out_dir=None, config: dict | None = None, label_smoothing: float = 0.0, split: dict | None = None,
                 patience: int | None = None, precise_bn: int = 0, progress: bool = True,
                 log: Callable[[str], None] | None = None, parallel=None):
        if not isinstance(epochs, (int, np.integer)) or isinstance(epochs, bool) or epochs < 1:
            raise ValueError(f"Trainer: epochs must be a positive integer, got {epochs!r}")
        if patience is not None and (not isinstance(patience, (int, np.integer)) or isinstance(patience, bool)
                                     or patience < 0):
            raise ValueError(f"Trainer: patience must be a non-negative integer or None, got {patience!r}")
        if not isinstance(precise_bn, (int, np.integer)) or isinstance(precise_bn, bool) or precise_bn < 0:
            raise ValueError(f"Trainer: precise_bn must be a non-negative integer, got {precise_bn!r}")
        if patience and val_loader is None:
            raise ValueError("Trainer: early stopping (patience) needs a validation loader")
        if len(train_loader) == 0:
            raise ValueError("Trainer: the training loader yields no batch")
        self.model = model
        self.optimizer = optimizer
        self.schedule = schedule
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.epochs = int(epochs)
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.config = dict(config or {})
        self.label_smoothing = float(label_smoothing)
        self.split = {k: np.asarray(v, dtype=np.int64) for k, v in (split or {}).items()}
        self.patience = int(patience) if patience else None
        self.precise_bn = int(precise_bn)
        self.progress = bool(progress)
        self._log = log
        self.parallel = parallel if parallel is not None else SingleProcess()
        self.generators = module_generators(model)
        self.position = _fresh_progress()
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self._stop_requested = False    # the first Ctrl-C: save after the step in flight
        self._force_quit = False        # the second Ctrl-C: stop at once, save nothing more
        self._step_snapshot = None      # BatchNorm buffers and generator states at the start of the step
        self._updating = False          # inside optimizer.step() .. bookkeeping: state would be torn
        self._step_lr = None            # the learning rate of the step in flight
        self._checked_shape = None      # the batch shape whose memory need was checked
        self._saved: dict[str, Any] = {}  # "last.npz": epochs it holds, "best.npz": its epoch (for messages)
        self._log_synced = False        # metrics.jsonl rewritten from the history in this session

    # -- paths and messages ---------------------------------------------------------------------------------
    @property
    def last_path(self) -> Path | None:
        return None if self.out_dir is None else self.out_dir / "last.npz"

    @property
    def best_path(self) -> Path | None:
        return None if self.out_dir is None else self.out_dir / "best.npz"

    def say(self, message: str) -> None:
        if self._log is not None:
            self._log(message)
        else:
            from tqdm import tqdm
            tqdm.write(message, file=sys.stdout)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # -- checkpoints ----------------------------------------------------------------------------------------
    def checkpoint(self) -> Checkpoint:
        """The complete state of the run at this moment (between two steps)."""
        return Checkpoint(model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
                          schedule=self.schedule.state_dict() if self.schedule is not None else {},
                          split=self.split, config=self.config, progress=_copy_json(self.position),
                          history=_copy_json(self.history), best=_copy_json(self.best),
                          rng=generator_states(self.generators))

    def save(self, path=None) -> Path:
        """Write :meth:`checkpoint` to ``path`` (default ``out_dir/last.npz``) atomically; return the path."""
        path = Path(path) if path is not None else self.last_path
        if path is None:
            raise ValueError("Trainer.save: no path given and the trainer has no out_dir")
        return save_checkpoint(path, self.checkpoint())

    def _save_checked(self, path: Path) -> Path:
        """:meth:`save` for the loop: a non-finite state is divergence, a failed write names what is kept."""
        try:
            path = self.save(path)
        except NonFiniteStateError as exc:
            raise self._diverged(f"{', '.join(exc.names[:3])}{' and others' if len(exc.names) > 3 else ''} "
                                 f"became NaN or infinite") from None
        except OSError as exc:
            kept = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
            raise CheckpointWriteError(exc.errno, f"cannot write the checkpoint {path} "
                                       f"({exc.strerror or exc}); {kept}") from None
        self._saved[path.name] = len(self.history) if path.name == "last.npz" else (self.best or {}).get("epoch")
        return path

    @contextlib.contextmanager
    def _claim_out_dir(self):
        """Hold the output folder's lock; check it is writable and has room; clear a killed run's temp files."""
        if self.out_dir is None:
            yield
            return
        with lock_run_folder(self.out_dir, log=self.say):
            size = checkpoint_bytes(self.checkpoint())
            present = sum((self.out_dir / name).exists() for name in ("last.npz", "best.npz"))
            check_output_folder(self.out_dir, (3 - present) * size + (1 << 20))
            removed = remove_temporary_files(self.out_dir, RUN_FILES)
            if removed:
                self.say(f"note: removed {len(removed)} temporary file{'s' if len(removed) != 1 else ''} that a "
                         f"killed save had left in {self.out_dir}")
            yield

    def restore(self, ckpt: Checkpoint) -> "Trainer":
        """Continue from a checkpoint: weights, optimizer, schedule, generators, position and metrics.

        The schedule is restored to the checkpoint's position. When the run's length changed (a resumed run with
        more ``epochs``), the schedule built for the new length keeps its own shape and only takes the position,
        so a cosine schedule then spans the new total.
        """
        where = str(ckpt.path or "checkpoint")
        load_model_state(self.model, ckpt, self.config.get("model"))
        try:
            self.optimizer.load_state_dict(ckpt.optimizer)
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{where}: the optimizer state does not fit this run's optimizer "
                                  f"({type(self.optimizer).__name__}); was it saved with another --optimizer?\n"
                                  f"{exc}") from None
        self._restore_schedule(ckpt, where)
        restore_generator_states(self.generators, ckpt.rng, where)
        progress = ckpt.progress
        try:
            position = _fresh_progress()
            position.update({k: progress[k] for k in ("epoch", "batch", "step", "elapsed_s")})
            position["partial"].update(progress["partial"])
            ok = (int(position["epoch"]) == len(ckpt.history) and 0 <= int(position["batch"]) <= len(self.train_loader))
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise CheckpointError(f"{where}: its progress record {progress!r} does not fit {len(ckpt.history)} "
                                  f"finished epochs and {len(self.train_loader)} batches per epoch (another "
                                  f"--batch-size or dataset?)")
        self.position = position
        self.history = _copy_json(ckpt.history)
        self.best = _copy_json(ckpt.best)
        if self.last_path is not None and ckpt.path is not None and _same_file(ckpt.path, self.last_path):
            self._saved["last.npz"] = len(ckpt.history)
        if self.best_path is not None and self.best_path.exists() and self.best:
            self._saved["best.npz"] = self.best.get("epoch")
        return self

    def _restore_schedule(self, ckpt: Checkpoint, where: str) -> None:
        if self.schedule is None:
            return
        step = int(ckpt.progress.get("step", 0))
        state = self.schedule.state_dict()
        same_shape = set(state) == set(ckpt.schedule) and all(
            k.endswith("last_epoch") or np.array_equal(state[k], ckpt.schedule[k]) for k in state)
        try:
            if same_shape:
                self.schedule.load_state_dict(ckpt.schedule)
            else:
                state["last_epoch"] = np.array(step, dtype=np.int64)
                self.schedule.load_state_dict(state)
            if ckpt.schedule and not same_shape:
                self.say(f"note: the learning-rate schedule now spans {self.epochs} epochs; it continues from "
                         f"step {step} with lr {self.lr:.4g}")
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{where}: cannot restore the learning-rate schedule: {exc}") from None

    # -- one step -------------------------------------------------------------------------------------------
    def _snapshot(self):
        return ([b.copy() for _, b in self.model.named_buffers()], generator_states(self.generators))

    def _rollback(self, snapshot) -> None:
        buffers, gens = snapshot
        for (_, b), saved in zip(self.model.named_buffers(), buffers):
            b[...] = saved
        restore_generator_states(self.generators, gens, "rollback")

    def train_step(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        """One optimizer step on a batch; returns (mean loss, number correct). Raises NonFiniteLossError.

        On several processes ``x, y`` is the whole batch and this process computes its share of it."""
        self.optimizer.zero_grad()
        rows = self.parallel.rows(len(y))           # this process's share of the batch: all of it on one process
        x, y_here = x[rows], y[rows]
        if x.shape != self._checked_shape:      # a batch too large for memory is refused before any work
            check_batch_fits(self.model, x.shape, training=True)
            self._checked_shape = x.shape
        try:
            logits = self.model(x)
        except NonFiniteError as exc:       # a layer refused to take NaN or infinity into its state
            raise NonFiniteLossError(str(exc)) from None
        loss, dlogits, correct = 0.0, None, 0
        finite = bool(np.isfinite(logits).all())
        if finite:
            loss, dlogits = softmax_cross_entropy(logits, y_here, self.label_smoothing)
            correct = int((logits.argmax(axis=1) == y_here).sum())
        # the whole batch's loss and accuracy, and whether any process saw NaN (all processes decide alike)
        loss_sum, correct, broken = self.parallel.sum([float(loss) * len(y_here), correct, not finite])
        if broken:
            raise NonFiniteLossError("the logits became NaN or infinite")
        loss, correct = loss_sum / len(y), int(correct)
        if not np.isfinite(loss):
            raise NonFiniteLossError(f"the loss became NaN or infinite ({loss})")
        if self.parallel.share != 1:        # the whole batch's mean: this share's mean weighted by n_p / n
            dlogits = dlogits * dlogits.dtype.type(self.parallel.share)
        try:
            self.model.backward(dlogits)
        except NonFiniteError as exc:
            raise NonFiniteLossError(str(exc)) from None
        self.parallel.reduce_gradients()
        bad = [name for name, b in self.model.named_buffers() if b.dtype.kind == "f" and not np.isfinite(b).all()]
        if bad:
            raise NonFiniteLossError(f"the running statistics {', '.join(bad[:3])}"
                                     f"{' and others' if len(bad) > 3 else ''} became NaN or infinite")
        self._step_lr = self.lr
        self._updating = True
        self.optimizer.step()
        if self.schedule is not None:
            self.schedule.step()
        return float(loss), correct

    def recalibrate_batchnorm(self, epoch: int) -> int:
        """Re-estimate every BatchNorm layer's running statistics at the current weights; return the batches used.

        The statistics become the plain average of the batch statistics of the first ``precise_bn`` training
        batches of ``epoch`` (forward passes in training mode, no step; the dropout generators end where they
        were, so training continues as it would have). This is "precise BN" (Wu and Johnson 2021, Rethinking
        "Batch" in BatchNorm, Section 3). Why: the running averages (momentum 0.1) mix the statistics of the last
        ~10 steps, and while the weights still move fast they describe a network that no longer exists. On the
        digits, early in the run, evaluation mode then scored a loss of 5-20 where training mode scored 2, and
        the validation curve showed a spike that the weights did not have. The batches are a pure function of
        ``(seed, epoch)``, so a resumed run recalibrates identically.
        """
        from numpymnv2.nn.layers import BatchNorm2d
        modes = self.model.training_modes()
        self._enter_training()
        # a BatchNorm frozen with .eval() keeps its statistics, as it keeps them in training
        layers = [m for _, m in self.model.named_modules() if isinstance(m, BatchNorm2d) and m.training]
        n = min(self.precise_bn, len(self.train_loader))
        if n == 0 or not layers:
            self.model.set_training_modes(modes)
            return 0
        momenta = [m.momentum for m in layers]
        rng = generator_states(self.generators)
        used = 0
        try:
            for x, y in self.train_loader.epoch(epoch):
                used += 1
                for m in layers:
                    m.momentum = 1.0 / used     # running = mean of the batch statistics seen so far
                self.model(x[self.parallel.rows(len(y))])
                if used == n:
                    break
        finally:
            for m, momentum in zip(layers, momenta):
                m.momentum = momentum
            restore_generator_states(self.generators, rng, "precise BN")
            self.model.set_training_modes(modes)
        return used

    def _enter_training(self) -> None:
        """Put the model in the modes it trains in (see :meth:`fit`)."""
        modes = getattr(self, "_train_modes", None)
        if modes is None:
            self.model.train()
        else:
            self.model.set_training_modes(modes)

    # -- evaluation -----------------------------------------------------------------------------------------
    def evaluate(self, loader=None) -> dict[str, float]:
        """Mean cross-entropy and accuracy of the model in evaluation mode over ``loader`` (default: validation)."""
        loader = self.val_loader if loader is None else loader
        loss, acc, _, _ = evaluate_model(self.model, loader, self.parallel)
        return {"loss": loss, "acc": acc}

    # -- the loop -------------------------------------------------------------------------------------------
    def fit(self, stop_after_epoch: int | None = None) -> FitResult:
        """Train until ``epochs`` are done (or, if given, until epoch ``stop_after_epoch``); return a FitResult.

        With an ``out_dir``, the run first takes the folder's lock (a second run into it is refused, see
        :mod:`numpymnv2.train.runfolder`), checks that it can write there and has room for its checkpoints, and
        deletes the temporary files of saves that a killed run left behind.

        Raises
        ------
        NonFiniteLossError
            The run diverged (NaN or infinity in the loss, the logits, the BatchNorm statistics or anything a
            checkpoint would store). Nothing is saved after that: the checkpoints on disk stay the last good ones.
        RunFolderLocked
            Another process is training into ``out_dir``.
        CheckpointWriteError
            A checkpoint could not be written (e.g. the disk is full); the previous one is intact.
        """
        end = self.epochs if stop_after_epoch is None else min(self.epochs, int(stop_after_epoch))
        self._stop_requested = self._force_quit = self._updating = False
        # the modes training runs in: the model's own when it is in training mode (children frozen with .eval(),
        # a BatchNorm during fine-tuning, stay frozen), else all of it in training mode
        self._train_modes = (self.model.training_modes()
                             if getattr(self.model, "training", False) and hasattr(self.model, "training_modes")
                             else None)
        status = "finished"
        with self._claim_out_dir(), self._deferred_sigint(), _compilation_notice(self.say):
            try:
                while self.position["epoch"] < end:
                    if self.stopped_early:
                        status = "stopped early"
                        break
                    if not self._run_epoch():
                        status = "interrupted"
                        break
            except KeyboardInterrupt:
                status = self._on_raw_interrupt()
        return FitResult(status=status, epochs_done=len(self.history), history=_copy_json(self.history),
                         best=_copy_json(self.best),
                         last_checkpoint=self.last_path if self.last_path and self.last_path.exists() else None,
                         best_checkpoint=self.best_path if self.best_path and self.best_path.exists() else None)

    @property
    def stopped_early(self) -> bool:
        """True when the validation accuracy has not improved for ``patience`` epochs (early stopping)."""
        if not self.patience or not self.history or self.best is None:
            return False
        return self.history[-1]["epoch"] - self.best["epoch"] >= self.patience

    def _run_epoch(self) -> bool:
        """Train (the rest of) the current epoch and evaluate; False if stopped by Ctrl-C."""
        pos = self.position
        e, n_batches = int(pos["epoch"]), len(self.train_loader)
        bar = self._bar(e, n_batches, int(pos["batch"]))
        try:
            self._enter_training()
            t_start = time.perf_counter()
            time_before = pos["partial"]["time_s"]
            for x, y in self.train_loader.epoch(e, start_batch=int(pos["batch"])):
                self._step_snapshot = self._snapshot()
                try:
                    loss, correct = self.train_step(x, y)
                except NonFiniteLossError as exc:
                    raise self._diverged(str(exc)) from None
                part = pos["partial"]
                part["loss_sum"] += loss * len(y)
                part["correct"] += correct
                part["seen"] += len(y)
                part["time_s"] = time_before + time.perf_counter() - t_start
                part["lr"] = self._step_lr
                pos["batch"] += 1
                pos["step"] += 1
                self._updating = False
                self._step_snapshot = None
                if bar is not None:
                    bar.set_postfix_str(self._postfix(), refresh=False)
                    bar.update(1)
                if self.parallel.any(self._stop_requested):     # every process stops after the same step
                    return self._save_interrupted()
            train_time = pos["partial"]["time_s"]
            t_eval = time.perf_counter()
            try:
                if self.val_loader is not None:
                    self.recalibrate_batchnorm(e)
                val = self.evaluate() if self.val_loader is not None else None
            except NonFiniteLossError as exc:
                raise self._diverged(str(exc)) from None
            eval_time = time.perf_counter() - t_eval
            row = self._epoch_row(e, val, train_time, eval_time)
            self._updating = True
            self.history.append(row)
            improved = row["val_acc"] is not None and (self.best is None or row["val_acc"] > self.best["val_acc"])
            if improved:
                self.best = {"epoch": row["epoch"], "val_acc": row["val_acc"], "val_loss": row["val_loss"]}
            self.position = pos = _fresh_progress() | {"epoch": e + 1, "step": pos["step"],
                                                       "elapsed_s": row["elapsed_s"]}
            self._updating = False
            if bar is not None:
                bar.set_postfix_str(self._postfix(row), refresh=False)
            else:
                self.say(self._epoch_line(row))
        finally:
            if bar is not None:
                bar.close()
        self._write_epoch_files(improved)
        if self.parallel.any(self._stop_requested):
            return self._save_interrupted(saved=True)
        return True

    def _epoch_row(self, e: int, val, train_time: float, eval_time: float) -> dict[str, Any]:
        part = self.position["partial"]
        seen = max(part["seen"], 1)
        epoch_time = train_time + eval_time
        return {"epoch": e + 1, "lr": part["lr"],
                "train_loss": part["loss_sum"] / seen, "train_acc": part["correct"] / seen,
                "val_loss": None if val is None else val["loss"], "val_acc": None if val is None else val["acc"],
                "epoch_time_s": round(epoch_time, 3),
                "images_per_s": round(part["seen"] / train_time, 1) if train_time > 0 else None,
                "elapsed_s": round(self.position["elapsed_s"] + epoch_time, 3)}

    def _write_epoch_files(self, improved: bool) -> None:
        if self.out_dir is None:
            return
        self._save_checked(self.last_path)
        if improved:
            self._save_checked(self.best_path)
        write_metrics(self.out_dir, self.history, self.best, self.config)
        if self._log_synced:
            append_jsonl(self.out_dir / "metrics.jsonl", self.history[-1])
        else:       # a resumed run may have logged epochs after its checkpoint: start from the history
            write_jsonl(self.out_dir / "metrics.jsonl", self.history)
            self._log_synced = True
        plot_curves(self.out_dir / "curves.png", self.history, title=self._title(),
                    label_smoothing=self.label_smoothing)

    def _title(self) -> str:
        spec = self.config.get("model") or {}
        data = self.config.get("data") or {}
        if spec.get("name") and data.get("dataset"):
            return f"{spec['name']} (width {spec.get('width_mult')}) on {data['dataset']}"
        return ""

    # -- interruption and divergence -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _deferred_sigint(self):
        """While training, the first Ctrl-C asks the loop to stop after the current step; a second one stops now."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.getsignal(signal.SIGINT)

        def handler(signum, frame):
            if self._stop_requested:
                self._force_quit = True
                raise KeyboardInterrupt
            self._stop_requested = True
            self.say("\nCtrl-C: stopping after this step to save a checkpoint (press Ctrl-C again to quit now)")

        signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _save_interrupted(self, saved: bool = False) -> bool:
        pos = self.position
        if self.out_dir is not None:
            if not saved:
                self._save_checked(self.last_path)
            self.say(f"Interrupted at epoch {pos['epoch'] + 1}, batch {pos['batch']}/{len(self.train_loader)}: "
                     f"saved {self.last_path}")
        else:
            self.say(f"Interrupted at epoch {pos['epoch'] + 1}, batch {pos['batch']}/{len(self.train_loader)}")
        return False

    def _on_raw_interrupt(self) -> str:
        """A KeyboardInterrupt escaped the deferred handler: roll back the step in flight, then save."""
        if self._force_quit:
            self.say("Stopped at once (second Ctrl-C)" + (f"; {self.last_path} is the last checkpoint"
                                                          if self.last_path and self.last_path.exists() else ""))
            return "interrupted"
        if self._updating:
            self.say("Interrupted while the weights were being updated: the state in memory is inconsistent, "
                     "so nothing was saved" + (f"; {self.last_path} is the last checkpoint"
                                               if self.last_path and self.last_path.exists() else ""))
            return "interrupted"
        if self._step_snapshot is not None:
            self._rollback(self._step_snapshot)
            self._step_snapshot = None
        self._save_interrupted()
        return "interrupted"

    def _diverged(self, what: str) -> NonFiniteLossError:
        pos = self.position
        where = (f"epoch {pos['epoch'] + 1}, batch {pos['batch'] + 1}/{len(self.train_loader)} "
                 f"(step {pos['step'] + 1}, lr {self.lr:.4g})")
        if self.last_path is not None and self.last_path.exists():
            done = self._saved.get("last.npz", len(self.history))
            kept = f"The last good checkpoint, {self.last_path}, is kept ({done} epoch{'s' if done != 1 else ''} done)"
            best = self._saved.get("best.npz")
            if self.best_path.exists() and best is not None:
                kept += f", and so is {self.best_path} (epoch {best})"
            kept += "."
        elif self.out_dir is not None:
            kept = "No checkpoint had been written yet."
        else:
            kept = ""
        return NonFiniteLossError(f"training diverged at {where}: {what}; the run is "
                                  f"stopped. {kept} Try a smaller --lr (or a warm-up), or check the "
                                  f"input data.".replace("  ", " ").strip())

    # -- display --------------------------------------------------------------------------------------------
    def _bar(self, e: int, n_batches: int, start: int):
        if not self.progress:
            return None
        from tqdm import tqdm
        return tqdm(total=n_batches, initial=start, desc=f"epoch {e + 1}/{self.epochs}", unit="batch",
                    leave=True, dynamic_ncols=True, file=sys.stderr)

    def _postfix(self, row: dict | None = None) -> str:
        part = self.position["partial"]
        if row is None:
            seen = max(part["seen"], 1)
            speed = part["seen"] / part["time_s"] if part["time_s"] > 0 else 0.0
            return (f"loss={part['loss_sum'] / seen:.4f} acc={100 * part['correct'] / seen:.1f}% "
                    f"lr={part['lr'] or 0:.3g} img/s={speed:.0f}")
        text = (f"loss={row['train_loss']:.4f} acc={100 * row['train_acc']:.1f}% lr={row['lr'] or 0:.3g} "
                f"img/s={row['images_per_s'] or 0:.0f}")
        if row["val_acc"] is not None:
            text += f" | val loss={row['val_loss']:.4f} acc={100 * row['val_acc']:.1f}%"
            if self.best and self.best["epoch"] == row["epoch"]:
                text += " (best)"
        return text

    def _epoch_line(self, row: dict) -> str:
        return f"epoch {row['epoch']}/{self.epochs}: {self._postfix(row)} ({row['epoch_time_s']:.1f} s)"


COMPILING_MESSAGE = "compiling kernels (first run only: Numba keeps them in its on-disk cache) ..."


@contextlib.contextmanager
def _compilation_notice(say: Callable[[str], None]):
    """Say :data:`COMPILING_MESSAGE` once, when Numba starts compiling a kernel inside the block.

    A fresh install (or an edited kernel) spends its first step compiling the fast backend's kernels, which
    would look like a hang. Numba signals a real compilation, not a load from its cache, with the
    ``"numba:compile"`` event, so a warm cache prints nothing.
    """
    try:
        from numba.core import event
    except ImportError:             # no Numba, no compilation
        yield
        return

    class Notice(event.Listener):
        said = False

        def on_start(self, ev):
            if not self.said:
                self.said = True
                say(COMPILING_MESSAGE)

        def on_end(self, ev):
            pass

    with event.install_listener("numba:compile", Notice()):
        yield


def evaluate_model(model, loader, parallel=None, top_k: int = 1) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Evaluate ``model`` in evaluation mode over every batch of ``loader``.

    With ``parallel`` (:mod:`numpymnv2.distributed`) each process evaluates its share of every batch, and every
    process gets the results of all images.

    Parameters
    ----------
    top_k : int
        With ``top_k > 1``, ``predictions`` holds each image's ``top_k`` most likely classes instead of one
        (for top-k accuracy, :func:`top_k_accuracy`).

    Returns
    -------
    loss : float
        Mean cross-entropy over the images.
    acc : float
        Fraction of images whose top class is the label.
    predictions : ndarray of int64, shape (N,), or (N, top_k) with ``top_k > 1``, most likely class first
    labels : ndarray of int64, shape (N,)

    Every module's previous mode is restored afterwards (a child frozen with ``.eval()`` stays frozen).
    """
    if not isinstance(top_k, (int, np.integer)) or isinstance(top_k, bool) or top_k < 1:
        raise ValueError(f"evaluate_model: top_k must be a positive integer, got {top_k!r}")
    parallel = parallel if parallel is not None else SingleProcess()
    modes = model.training_modes() if hasattr(model, "training_modes") else None
    was_training = getattr(model, "training", False)
    model.eval()
    loss_sum, preds, labels, finite = 0.0, [], [], True
    checked = None
    try:
        for x, y in loader.epoch(0):
            rows = parallel.eval_rows(len(y))
            preds.append(np.full((len(y), top_k), -1, dtype=np.int64))      # -1: another process's image
            labels.append(np.asarray(y, dtype=np.int64))
            if rows.stop == rows.start:
                continue
            x = x[rows]
            if x.shape != checked:
                check_batch_fits(model, x.shape, training=False)
                checked = x.shape
            logits = model(x)
            if not np.isfinite(logits).all():
                finite = False
                break
            loss, _ = softmax_cross_entropy(logits, y[rows])
            loss_sum += float(loss) * len(logits)
            preds[-1][rows] = _ranked_classes(logits, top_k)
    finally:
        if modes is not None:
            model.set_training_modes(modes)
        else:
            model.train(was_training)
    loss_sum, broken = parallel.sum([loss_sum, not finite])
    if broken:
        raise NonFiniteLossError("evaluation: the model's outputs contain NaN or infinite values; the "
                                 "weights (or BatchNorm statistics) are broken")
    n = sum(len(p) for p in preds)
    if n == 0:
        raise ValueError("evaluate: the loader yields no images")
    ranked = parallel.gather_rows(np.concatenate(preds))
    labels_all = np.concatenate(labels)
    acc = float((ranked[:, 0] == labels_all).mean())
    return loss_sum / n, acc, (ranked if top_k > 1 else ranked[:, 0]), labels_all


def _ranked_classes(logits: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` largest logits' classes per row, largest first (ties: the lower class first, as ``argmax``);
    shape (N, C) -> (N, k), padded with -1 (no class) when C < k."""
    N, C = logits.shape
    order = np.argsort(-logits, axis=1, kind="stable")[:, :min(k, C)]
    if C < k:
        order = np.concatenate([order, np.full((N, k - C), -1, dtype=order.dtype)], axis=1)
    return order


def top_k_accuracy(ranked: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of images whose label is among their ranked classes (``ranked``: shape (N, k), from
    :func:`evaluate_model` with ``top_k = k``)."""
    ranked = np.asarray(ranked)
    return float((ranked == np.asarray(labels)[:, None]).any(axis=1).mean())


def _same_file(a: Path, b: Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def _copy_json(value):
    """A deep copy of plain JSON data (dicts, lists, numbers, strings, None)."""
    if isinstance(value, dict):
        return {k: _copy_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_json(v) for v in value]
    return value
