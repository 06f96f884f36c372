"""Learning-rate schedules, as ``torch.optim.lr_scheduler``, each a closed-form function lr(t).

The convention, once for every schedule
---------------------------------------
* A schedule counts its own ``step()`` calls: t = 0 after construction, t = k after k calls. Whether t counts
  epochs or iterations is up to the caller: call ``step()`` once per epoch for the paper's
  ``ExponentialLR(opt, 0.98)``, once per iteration for a cosine schedule whose ``T_max`` is in iterations.
  Call it after the epoch's (or iteration's) ``optimizer.step()``: lr(t) is the rate used during step t + 1.
* Every schedule writes ``group["lr"] = lr_g(t)`` into each param group ``g``, where lr_g is a closed form of t
  and of the group's base rate (the rate the group had when the first schedule was attached, kept as
  ``group["initial_lr"]`` as PyTorch does). Nothing is accumulated step by step, so resuming at any t from
  ``state_dict()`` gives exactly the rates of an uninterrupted run.
* ``state_dict()`` is flat ``{str: ndarray}`` like the optimizers': ``last_epoch``, ``base_lrs`` and the
  hyperparameters. ``load_state_dict`` restores them and writes lr(t) into the optimizer.
"""
from __future__ import annotations

import math
import numbers
from bisect import bisect_right
from collections.abc import Mapping, Sequence

import numpy as np

from numpymnv2.optim.optimizer import Optimizer


class LRScheduler:
    """Base class: subclasses set their hyperparameters, call ``super().__init__`` and define ``_lr``.

    Parameters
    ----------
    optimizer : Optimizer
        Its param groups get a new ``"lr"`` at construction (t = 0) and at every ``step()``.
    """

    # name -> kind ("int" or "float") of each hyperparameter saved in the state_dict
    _hyperparameters: dict[str, str] = {}

    def __init__(self, optimizer: Optimizer):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{self._label}: expected a numpymnv2 optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self._check()
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", float(group["lr"]))
        self.base_lrs = [float(group["initial_lr"]) for group in optimizer.param_groups]
        self.last_epoch = 0
        self._apply()

    @property
    def _label(self) -> str:
        return type(self).__name__

    def _require(self, ok: bool, message: str) -> None:
        if not ok:
            raise ValueError(f"{self._label}: {message}")

    def _check(self) -> None:
        """Raise ``ValueError`` for invalid hyperparameters."""

    def _lr(self, base_lr: float, t: int) -> float:
        """The learning rate at step t of a group whose base rate is ``base_lr``; here constant, subclasses
        override it with their schedule."""
        return base_lr

    def lr_at(self, t: int) -> list[float]:
        """The learning rate of every param group at step ``t`` (closed form; changes nothing)."""
        return [self._lr(base, t) for base in self.base_lrs]

    def _apply(self) -> None:
        self._last_lr = self.lr_at(self.last_epoch)
        for group, lr in zip(self.optimizer.param_groups, self._last_lr):
            group["lr"] = lr

    def step(self) -> None:
        """Advance t by one and set every group's learning rate to lr(t)."""
        self.last_epoch += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        """The learning rates set by the last ``step()`` (or the constructor), one per param group."""
        return list(self._last_lr)

    # -- state --------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """``{"last_epoch": 0-d int64, "base_lrs": float64 (groups,), <hyperparameter>: 0-d array}``."""
        out = {"last_epoch": np.array(self.last_epoch, dtype=np.int64),
               "base_lrs": np.array(self.base_lrs, dtype=np.float64)}
        for name, kind in self._hyperparameters.items():
            out[name] = np.array(getattr(self, name), dtype=np.int64 if kind == "int" else np.float64)
        return out

    def load_state_dict(self, state: Mapping) -> "LRScheduler":
        """Restore a ``state_dict()``, set the optimizer's learning rates to lr(last_epoch); return self.

        The saved hyperparameters replace the constructor's (as in PyTorch). Everything is checked first; one
        ``ValueError`` lists every problem and leaves the schedule unchanged.
        """
        if not isinstance(state, Mapping) and not hasattr(state, "files"):
            raise TypeError(f"{self._label}.load_state_dict: expected a dict of arrays, "
                            f"got {type(state).__name__}")
        given = {k: np.asarray(state[k]) for k in state.keys()}
        problems: list[str] = []
        restore = self._stage(given, "", problems)
        unexpected = sorted(set(given) - set(self._keys("")))
        if unexpected:
            problems.append(f"unexpected keys: {', '.join(unexpected)}")
        if problems:
            raise ValueError(f"{self._label}.load_state_dict: the state does not fit this schedule:\n  - "
                             + "\n  - ".join(problems))
        restore()
        self._apply()
        return self

    def _keys(self, prefix: str) -> list[str]:
        return [prefix + k for k in ("last_epoch", "base_lrs", *self._hyperparameters)]

    def _stage(self, given: dict, prefix: str, problems: list[str]):
        """Check this schedule's keys in ``given``; return a function that writes them."""
        values = {}
        n_groups = len(self.optimizer.param_groups)
        expected = {"last_epoch": ((), "iu"), "base_lrs": ((n_groups,), "fiu")}
        expected.update({name: ((), "iu" if kind == "int" else "fiu")
                         for name, kind in self._hyperparameters.items()})
        for name, (shape, kinds) in expected.items():
            key = prefix + name
            if key not in given:
                problems.append(f"missing key {key}")
                continue
            value = given[key]
            if value.shape != shape or value.dtype.kind not in kinds:
                what = "an integer" if kinds == "iu" else "a number"
                problems.append(f"{key}: expected {what} array of shape {shape}, got dtype {value.dtype} "
                                f"shape {value.shape}")
                continue
            values[name] = [float(v) for v in value] if shape else (
                int(value) if kinds == "iu" else float(value))
        if len(values) < len(expected):
            return lambda: None
        saved = {name: getattr(self, name) for name in self._hyperparameters}
        try:
            for name in self._hyperparameters:
                setattr(self, name, values[name])
            self._check()
            if values["last_epoch"] < 0:
                raise ValueError(f"{self._label}: last_epoch must be >= 0, got {values['last_epoch']}")
            bad = [lr for lr in values["base_lrs"] if not (math.isfinite(lr) and lr >= 0)]
            if bad:
                raise ValueError(f"{self._label}: base_lrs must be finite and >= 0, got {values['base_lrs']}")
        except ValueError as exc:
            problems.append(f"{prefix or 'state'}: {exc}")
        finally:
            for name, value in saved.items():
                setattr(self, name, value)

        def restore():
            for name in self._hyperparameters:
                setattr(self, name, values[name])
            self.last_epoch = values["last_epoch"]
            self.base_lrs = list(values["base_lrs"])
            for group, base in zip(self.optimizer.param_groups, self.base_lrs):
                group["initial_lr"] = base
        return restore

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={getattr(self, k)}" for k in self._hyperparameters)
        return f"{self._label}({options}, last_epoch={self.last_epoch})"


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _is_real(value) -> bool:
    return (isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
            and math.isfinite(value))


class StepLR(LRScheduler):
    """Multiply the rate by ``gamma`` every ``step_size`` steps: lr(t) = base · γ^⌊t / step_size⌋.

    Parameters
    ----------
    optimizer : Optimizer
    step_size : int
        > 0, steps between two decays.
    gamma : float
        γ > 0, the factor of each decay.
    """

    _hyperparameters = {"step_size": "int", "gamma": "float"}

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1):
        self.step_size = step_size
        self.gamma = gamma
        super().__init__(optimizer)

    def _check(self) -> None:
        self._require(_is_int(self.step_size) and self.step_size > 0,
                      f"step_size must be a positive integer, got {self.step_size!r}")
        self._require(_is_real(self.gamma) and self.gamma > 0, f"gamma must be > 0, got {self.gamma!r}")
        self.step_size, self.gamma = int(self.step_size), float(self.gamma)

    def _lr(self, base_lr: float, t: int) -> float:
        return base_lr * self.gamma ** (t // self.step_size)


class ExponentialLR(LRScheduler):
    """Multiply the rate by ``gamma`` every step: lr(t) = base · γ^t.

    The paper decays 0.045 by 0.98 per epoch: ``ExponentialLR(opt, 0.98)`` stepped once per epoch.

    Parameters
    ----------
    optimizer : Optimizer
    gamma : float
        γ > 0.
    """

    _hyperparameters = {"gamma": "float"}

    def __init__(self, optimizer: Optimizer, gamma: float):
        self.gamma = gamma
        super().__init__(optimizer)

    def _check(self) -> None:
        self._require(_is_real(self.gamma) and self.gamma > 0, f"gamma must be > 0, got {self.gamma!r}")
        self.gamma = float(self.gamma)

    def _lr(self, base_lr: float, t: int) -> float:
        return base_lr * self.gamma ** t


class CosineAnnealingLR(LRScheduler):
    """Half a cosine from the base rate down to ``eta_min`` over ``T_max`` steps (Loshchilov & Hutter, SGDR).

    lr(t) = η_min + (base - η_min) · (1 + cos(π t / T_max)) / 2

    This is PyTorch's closed form; past ``T_max`` the cosine keeps going (the rate rises again), as in
    PyTorch, so size ``T_max`` to the whole run.

    Parameters
    ----------
    optimizer : Optimizer
    T_max : int
        > 0, the step at which the rate reaches ``eta_min``.
    eta_min : float
        >= 0, the final rate.
    """

    _hyperparameters = {"T_max": "int", "eta_min": "float"}

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0):
        self.T_max = T_max
        self.eta_min = eta_min
        super().__init__(optimizer)

    def _check(self) -> None:
        self._require(_is_int(self.T_max) and self.T_max > 0,
                      f"T_max must be a positive integer, got {self.T_max!r}")
        self._require(_is_real(self.eta_min) and self.eta_min >= 0, f"eta_min must be >= 0, got {self.eta_min!r}")
        self.T_max, self.eta_min = int(self.T_max), float(self.eta_min)

    def _lr(self, base_lr: float, t: int) -> float:
        return self.eta_min + (base_lr - self.eta_min) * (1.0 + math.cos(math.pi * t / self.T_max)) / 2.0


class LinearWarmup(LRScheduler):
    """Ramp the rate linearly from ``start_factor · base`` to ``base`` over ``warmup_steps``, then hold it.

    lr(t) = base · (f0 + (1 - f0) · min(t, W) / W)

    The same as ``torch.optim.lr_scheduler.LinearLR(opt, start_factor=f0, end_factor=1.0, total_iters=W)``.
    Follow it with another schedule with :class:`SequentialLR` or :func:`with_warmup`.

    Parameters
    ----------
    optimizer : Optimizer
    warmup_steps : int
        W > 0.
    start_factor : float
        f0 in [0, 1]; 0 starts from a zero rate (the first step then changes nothing).
    """

    _hyperparameters = {"warmup_steps": "int", "start_factor": "float"}

    def __init__(self, optimizer: Optimizer, warmup_steps: int, start_factor: float):
        self.warmup_steps = warmup_steps
        self.start_factor = start_factor
        super().__init__(optimizer)

    def _check(self) -> None:
        self._require(_is_int(self.warmup_steps) and self.warmup_steps > 0,
                      f"warmup_steps must be a positive integer, got {self.warmup_steps!r}")
        self._require(_is_real(self.start_factor) and 0 <= self.start_factor <= 1,
                      f"start_factor must be in [0, 1], got {self.start_factor!r}")
        self.warmup_steps, self.start_factor = int(self.warmup_steps), float(self.start_factor)

    def _lr(self, base_lr: float, t: int) -> float:
        f0, w = self.start_factor, self.warmup_steps
        return base_lr * (f0 + (1.0 - f0) * min(t, w) / w)


class SequentialLR(LRScheduler):
    """Run schedules one after another, each restarting its own count at its milestone.

    lr(t) = S_k(t - m_k), where k is the number of milestones <= t and m_0 = 0, as
    ``torch.optim.lr_scheduler.SequentialLR``.

    Parameters
    ----------
    optimizer : Optimizer
        The optimizer every schedule in ``schedulers`` was built on.
    schedulers : sequence of LRScheduler
        S_0, S_1, ...; only their ``lr_at`` is used: do not step them yourself.
    milestones : sequence of int
        m_1 < m_2 < ..., one fewer than the schedules, each > 0.

    Notes
    -----
    The schedules all share the groups' ``initial_lr`` as base rate, so building the second one after the
    first has already changed ``lr`` is safe.
    """

    def __init__(self, optimizer: Optimizer, schedulers: Sequence[LRScheduler], milestones: Sequence[int]):
        self.schedulers = list(schedulers)
        self.milestones = list(milestones)
        self._require(len(self.schedulers) >= 1, "needs at least one schedule")
        for k, s in enumerate(self.schedulers):
            if not isinstance(s, LRScheduler):
                raise TypeError(f"SequentialLR: schedulers[{k}] is a {type(s).__name__}, not a schedule")
            self._require(s.optimizer is optimizer,
                          f"schedulers[{k}] ({type(s).__name__}) is attached to another optimizer")
        self._require(len(self.milestones) == len(self.schedulers) - 1,
                      f"expected {len(self.schedulers) - 1} milestones for {len(self.schedulers)} schedules, "
                      f"got {len(self.milestones)}")
        super().__init__(optimizer)

    def _check(self) -> None:
        ms = self.milestones
        self._require(all(_is_int(m) and m > 0 for m in ms) and all(a < b for a, b in zip(ms, ms[1:])),
                      f"milestones must be increasing positive integers, got {ms}")
        self.milestones = [int(m) for m in ms]

    def lr_at(self, t: int) -> list[float]:
        k = bisect_right(self.milestones, t)
        start = self.milestones[k - 1] if k > 0 else 0
        return self.schedulers[k].lr_at(t - start)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Own keys plus ``milestones`` and each schedule's keys under ``schedulers.{k}.``."""
        out = super().state_dict()
        out["milestones"] = np.array(self.milestones, dtype=np.int64)
        for k, s in enumerate(self.schedulers):
            out.update({f"schedulers.{k}.{key}": v for key, v in s.state_dict().items()})
        return out

    def _keys(self, prefix: str) -> list[str]:
        keys = super()._keys(prefix) + [prefix + "milestones"]
        for k, s in enumerate(self.schedulers):
            keys += s._keys(f"{prefix}schedulers.{k}.")
        return keys

    def _stage(self, given: dict, prefix: str, problems: list[str]):
        restore_own = super()._stage(given, prefix, problems)
        key = prefix + "milestones"
        ms = given.get(key)
        if ms is None:
            problems.append(f"missing key {key}")
        elif ms.shape != (len(self.milestones),) or ms.dtype.kind not in "iu":
            problems.append(f"{key}: expected an integer array of shape ({len(self.milestones)},), got dtype "
                            f"{ms.dtype} shape {ms.shape}")
            ms = None
        elif not (all(m > 0 for m in ms) and all(a < b for a, b in zip(ms, ms[1:]))):
            problems.append(f"{key}: milestones must be increasing positive integers, got {ms.tolist()}")
            ms = None
        children = [s._stage(given, f"{prefix}schedulers.{k}.", problems) for k, s in enumerate(self.schedulers)]

        def restore():
            restore_own()
            if ms is not None:
                self.milestones = [int(m) for m in ms]
            for r in children:
                r()
        return restore

    def __repr__(self) -> str:
        inner = ", ".join(repr(s) for s in self.schedulers)
        return f"SequentialLR([{inner}], milestones={self.milestones}, last_epoch={self.last_epoch})"


def with_warmup(scheduler: LRScheduler, warmup_steps: int, start_factor: float) -> SequentialLR:
    """Prefix ``scheduler`` with a :class:`LinearWarmup` of ``warmup_steps`` steps.

    The returned schedule runs the warm-up for t < W and then ``scheduler`` from its own t = 0, so a cosine
    schedule after W warm-up steps of an N-step run should have ``T_max = N - W``. Step only the returned one.

    Examples
    --------
    >>> sched = with_warmup(CosineAnnealingLR(opt, T_max=epochs - 5), warmup_steps=5, start_factor=0.1)
    """
    opt = scheduler.optimizer
    return SequentialLR(opt, [LinearWarmup(opt, warmup_steps, start_factor), scheduler], [warmup_steps])
