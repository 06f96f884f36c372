"""The Optimizer base class: parameter groups, per-parameter state, ``zero_grad`` and ``state_dict``.

The convention, once for every optimizer in this package
--------------------------------------------------------
* The math of an update lives in a small function of arrays (``sgd_update``, ``rmsprop_update``, ...): it
  reads ``grad`` (g = dL/dθ), and writes the new values into ``param`` (θ) and the state arrays it is given
  (each of ``param``'s shape and dtype), in place. It keeps nothing between calls. Its optional ``work`` is a
  pair of scratch arrays of ``param``'s shape and dtype (two temporaries are allocated without it). The
  optimizer class only owns the arrays and loops over the parameters.
* Optimizer state (momentum buffers, moment estimates) lives here, never in layers. ``state[i]`` belongs to the
  ``i``-th parameter counting across all groups in order, as in PyTorch.
* ``param_groups`` is a list of dicts, each with ``"params"`` (a list of :class:`Parameter`) and every
  hyperparameter of the optimizer. A schedule sets ``group["lr"]``; so may the user, between steps.
* Arithmetic runs in the parameter's dtype: hyperparameters are Python floats, which NumPy (NEP 50) converts to
  the array's dtype, so float32 parameters are updated in float32 and stay float32. The temporaries of an update
  are two work arrays per dtype, allocated once, so a step allocates no array memory.
* ``state_dict()`` is a flat ``{str: ndarray}`` (0-d arrays for scalars) that ``np.savez`` stores and
  ``np.load(..., allow_pickle=False)`` reads back; loading it restores the optimizer bit for bit.
"""
from __future__ import annotations

import abc
import math
from collections.abc import Iterable, Mapping
from typing import Any, Iterator

import numpy as np

from numpymnv2.nn.module import Parameter

# Group keys a schedule may add (PyTorch's name for the learning rate the schedule started from).
_OPTIONAL_GROUP_KEYS = ("initial_lr",)


class Optimizer(abc.ABC):
    """Base class of the optimizers: owns the parameter groups and the per-parameter state.

    Parameters
    ----------
    params : iterable
        One of

        * Parameters, e.g. ``model.parameters()``;
        * ``(name, Parameter)`` pairs, e.g. ``model.named_parameters()`` (names appear in error messages);
        * PyTorch-style parameter groups: dicts with ``"params"`` (Parameters or pairs) and optional
          per-group overrides of the hyperparameters, e.g. ``[{"params": ..., "weight_decay": 0.0}, ...]``.
    defaults : dict
        Every hyperparameter of the optimizer with its value for groups that do not override it.

    Attributes
    ----------
    param_groups : list of dict
        ``{"params": [Parameter, ...], <hyperparameter>: value, ...}``; a schedule (or you) may set
        ``group["lr"]`` between steps. Values are checked at every ``step()``.
    state : list of dict of str to ndarray
        ``state[i]`` holds the arrays of the ``i``-th parameter (counted across groups), same shape and dtype.
    param_names : list of str
        The name of each parameter when pairs were given ("" otherwise), for error messages.
    step_count : int
        Number of ``step()`` calls so far (Adam's t).

    Subclasses define ``_option_kinds`` (each hyperparameter's kind: ``"float"``, ``"bool"`` or ``"pair"`` of
    floats), ``step()`` and ``_state_spec(group)`` (which state arrays a parameter of ``group`` needs and their
    initial value), and may extend ``_check_group``.
    """

    _option_kinds: dict[str, str] = {}

    def __init__(self, params: Iterable, defaults: dict[str, Any]):
        self.param_groups: list[dict[str, Any]] = []
        self.defaults = {k: self._coerce(k, v, self._option_kinds[k], 0) for k, v in defaults.items()}
        self.param_names: list[str] = []
        self.state: list[dict[str, np.ndarray]] = []
        self.step_count = 0
        self._parse_params(params)
        for g, group in enumerate(self.param_groups):
            self._prepare_group(g, group)
        self._shapes = [(p.data.shape, p.data.dtype) for p in self._flat_params()]
        self._work = self._make_work_arrays()
        for i, _, group, p in self._indexed():
            self.state.append({})
            self._ensure_state(i, group, p)

    # -- construction -------------------------------------------------------------------------------------
    @property
    def _label(self) -> str:
        return type(self).__name__

    def _parse_params(self, params) -> None:
        if isinstance(params, (Parameter, np.ndarray, dict, str)) or not isinstance(params, Iterable):
            raise TypeError(f"{self._label}: params must be an iterable of Parameters, of (name, Parameter) "
                            f"pairs or of param-group dicts, got {type(params).__name__}")
        items = list(params)
        if not items:
            raise ValueError(f"{self._label}: got an empty parameter list")
        n_dicts = sum(isinstance(x, dict) for x in items)
        if 0 < n_dicts < len(items):
            raise TypeError(f"{self._label}: params mixes param-group dicts with Parameters; "
                            f"put every Parameter in a group")
        raw_groups = items if n_dicts else [{"params": items}]
        seen: dict[int, str] = {}
        for g, raw in enumerate(raw_groups):
            if "params" not in raw:
                raise ValueError(f"{self._label}: param group {g} has no 'params' entry")
            allowed = set(self.defaults) | set(_OPTIONAL_GROUP_KEYS) | {"params"}
            unknown = sorted(set(raw) - allowed)
            if unknown:
                raise ValueError(f"{self._label}: param group {g} has unknown option(s) {unknown}; "
                                 f"the options are {sorted(self.defaults)}")
            entries = raw["params"]
            entries = [entries] if isinstance(entries, Parameter) else list(entries)
            group = {"params": []}
            for e in entries:
                name, p = self._unpack_entry(e, g)
                label = name or f"#{len(self.param_names)}"
                if id(p) in seen:
                    raise ValueError(f"{self._label}: parameter {label} appears more than once "
                                     f"(first as {seen[id(p)]}); each parameter may be in one group only")
                seen[id(p)] = label
                if p.data.dtype.kind != "f":
                    raise TypeError(f"{self._label}: parameter {label} has dtype {p.data.dtype}; "
                                    f"only floating parameters can be optimized")
                group["params"].append(p)
                self.param_names.append(name)
            for key, default in self.defaults.items():
                group[key] = raw.get(key, default)
            for key in _OPTIONAL_GROUP_KEYS:
                if key in raw:
                    group[key] = raw[key]
            self.param_groups.append(group)
        if not self.param_names:
            raise ValueError(f"{self._label}: got an empty parameter list (every param group is empty)")

    def _unpack_entry(self, e, g: int) -> tuple[str, Parameter]:
        if isinstance(e, Parameter):
            return "", e
        if isinstance(e, tuple) and len(e) == 2 and isinstance(e[0], str) and isinstance(e[1], Parameter):
            return e
        raise TypeError(f"{self._label}: param group {g} holds a {type(e).__name__}; expected a Parameter or "
                        f"a (name, Parameter) pair")

    def _make_work_arrays(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Two scratch arrays per parameter: views into one buffer per dtype, sized for the largest parameter."""
        largest: dict[np.dtype, int] = {}
        for shape, dtype in self._shapes:
            largest[dtype] = max(largest.get(dtype, 0), math.prod(shape))
        buffers = {dtype: np.empty((2, n), dtype=dtype) for dtype, n in largest.items()}
        work = []
        for shape, dtype in self._shapes:
            n = math.prod(shape)
            buf = buffers[dtype]
            work.append((buf[0, :n].reshape(shape), buf[1, :n].reshape(shape)))
        return work

    # -- hyperparameters ----------------------------------------------------------------------------------
    def _where(self, g: int) -> str:
        return f" (param group {g})" if len(self.param_groups) > 1 else ""

    def _coerce(self, key: str, value, kind: str, g: int):
        """Turn ``value`` into a Python float, bool or pair of floats, as ``kind`` says; else ValueError."""
        where = self._where(g)
        if kind == "bool":
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"{self._label}: {key} must be True or False, got {value!r}{where}")
            return bool(value)
        if kind == "pair":
            values = tuple(np.asarray(value, dtype=float).ravel()) if _is_numeric(value) else ()
            if len(values) != 2 or isinstance(value, (str, bytes)):
                raise ValueError(f"{self._label}: {key} must be a tuple of 2 numbers, got {value!r}{where}")
            return tuple(self._coerce(f"{key}[{j}]", v, "float", g) for j, v in enumerate(values))
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{self._label}: {key} must be a number, got {value!r}{where}") from None
        if not math.isfinite(out) or isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{self._label}: {key} must be a finite number, got {value!r}{where}")
        return out

    def _prepare_group(self, g: int, group: dict) -> None:
        """Coerce the group's hyperparameters to Python scalars and check them (called before every step)."""
        for key in self.defaults:
            group[key] = self._coerce(key, group[key], self._option_kinds[key], g)
        for key in _OPTIONAL_GROUP_KEYS:
            if key in group:
                group[key] = self._coerce(key, group[key], "float", g)
        self._check_group(group, self._where(g))

    def _check_group(self, group: dict, where: str) -> None:
        """Raise ``ValueError`` for an invalid hyperparameter; subclasses add their own checks."""
        self._require(group["lr"] >= 0, f"lr must be >= 0, got {group['lr']}{where}")
        if "weight_decay" in group:
            self._require(group["weight_decay"] >= 0,
                          f"weight_decay must be >= 0, got {group['weight_decay']}{where}")

    def _require(self, ok: bool, message: str) -> None:
        if not ok:
            raise ValueError(f"{self._label}: {message}")

    # -- state --------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def _state_spec(self, group: dict) -> dict[str, float]:
        """Names of the state arrays a parameter of ``group`` needs, with their initial fill value."""

    def _ensure_state(self, i: int, group: dict, p: Parameter) -> list[str]:
        """Create the state arrays parameter ``i`` lacks (a hyperparameter may have switched one on)."""
        created = []
        for name, fill in self._state_spec(group).items():
            if name not in self.state[i]:
                self.state[i][name] = np.full(p.data.shape, fill, dtype=p.data.dtype)
                created.append(name)
        return created

    def _flat_params(self) -> Iterator[Parameter]:
        for group in self.param_groups:
            yield from group["params"]

    def _indexed(self) -> Iterator[tuple[int, int, dict, Parameter]]:
        """(parameter index, group index, group, parameter) for every parameter, in order."""
        i = 0
        for g, group in enumerate(self.param_groups):
            for p in group["params"]:
                yield i, g, group, p
                i += 1

    def _param_label(self, i: int) -> str:
        return f"'{self.param_names[i]}' (index {i})" if self.param_names[i] else f"#{i}"

    def _check_param(self, i: int, p: Parameter) -> None:
        shape, dtype = self._shapes[i]
        if p.data.shape != shape or p.data.dtype != dtype:
            raise ValueError(f"{self._label}: parameter {self._param_label(i)} changed from {shape} {dtype} to "
                             f"{p.data.shape} {p.data.dtype} since the optimizer was built; build a new one")
        if not isinstance(p.grad, np.ndarray) or p.grad.shape != shape:
            got = getattr(p.grad, "shape", type(p.grad).__name__)
            raise ValueError(f"{self._label}: parameter {self._param_label(i)} has shape {shape} but its grad "
                             f"has shape {got}")
        if p.grad.dtype != dtype:
            raise TypeError(f"{self._label}: parameter {self._param_label(i)} is {dtype} but its grad is "
                            f"{p.grad.dtype}")

    def _each_param(self) -> Iterator[tuple[dict, Parameter, dict, tuple[np.ndarray, np.ndarray], list[str]]]:
        """What ``step`` loops over: (group, parameter, its state, its work arrays, state names just created)."""
        for g, group in enumerate(self.param_groups):
            self._prepare_group(g, group)
        for i, _, _, p in self._indexed():        # check everything first: no half-applied step on error
            self._check_param(i, p)
        for i, _, group, p in self._indexed():
            created = self._ensure_state(i, group, p)
            yield group, p, self.state[i], self._work[i], created

    # -- the public interface -----------------------------------------------------------------------------
    @abc.abstractmethod
    def step(self) -> None:
        """Update every parameter from its ``.grad``, in place."""

    def zero_grad(self) -> None:
        """Set every parameter's ``.grad`` to zero (see :meth:`numpymnv2.nn.Parameter.zero_grad`)."""
        for p in self._flat_params():
            p.zero_grad()

    def state_dict(self) -> dict[str, np.ndarray]:
        """A flat copy of the optimizer's state, ready for ``np.savez``.

        Keys
        ----
        ``"step"``
            0-d int64, the number of steps taken.
        ``"group.{g}.params"``
            int64 array, the indices of group ``g``'s parameters.
        ``"group.{g}.{option}"``
            0-d float64 or bool array for each hyperparameter (a tuple such as ``betas`` is a 1-D array).
        ``"state.{i}.{name}"``
            the state arrays of parameter ``i`` (PyTorch's names: ``momentum_buffer``, ``exp_avg``, ...).
        """
        out = {"step": np.array(self.step_count, dtype=np.int64)}
        start = 0
        for g, group in enumerate(self.param_groups):
            n = len(group["params"])
            out[f"group.{g}.params"] = np.arange(start, start + n, dtype=np.int64)
            start += n
            for key, value in group.items():
                if key != "params":
                    out[f"group.{g}.{key}"] = _to_array(value)
        for i, state in enumerate(self.state):
            for name, arr in state.items():
                out[f"state.{i}.{name}"] = arr.copy()
        return out

    def load_state_dict(self, state: Mapping) -> "Optimizer":
        """Restore a ``state_dict()`` (for example read back with ``np.load``); return self.

        Everything is checked before anything is written, so a state that does not fit leaves the optimizer
        unchanged and one ``ValueError`` lists every problem (key, what was expected, what was found). State
        arrays are cast to their parameter's dtype. The hyperparameters of every group are restored too.
        """
        if not isinstance(state, Mapping) and not hasattr(state, "files"):
            raise TypeError(f"{self._label}.load_state_dict: expected a dict of arrays, "
                            f"got {type(state).__name__}")
        given = {k: np.asarray(state[k]) for k in state.keys()}
        used: set[str] = set()
        problems: list[str] = []

        def take(key: str):
            if key not in given:
                problems.append(f"missing key {key}")
                return None
            used.add(key)
            return given[key]

        step = take("step")
        if step is not None and not (step.shape == () and step.dtype.kind in "iu" and step >= 0):
            problems.append(f"step: expected a 0-d non-negative integer, got dtype {step.dtype} shape {step.shape}")
            step = None

        new_groups = []
        start = 0
        for g, group in enumerate(self.param_groups):
            n = len(group["params"])
            idx = take(f"group.{g}.params")
            if idx is not None and (idx.shape != (n,) or not np.array_equal(idx, np.arange(start, start + n))):
                problems.append(f"group.{g}.params: expected parameters {start}..{start + n - 1} "
                                f"({n} parameters), got {_short(idx)}")
            start += n
            new = {"params": group["params"]}
            keys = list(self.defaults) + [k for k in _OPTIONAL_GROUP_KEYS if f"group.{g}.{k}" in given]
            for key in keys:
                value = take(f"group.{g}.{key}")
                if value is None:
                    continue
                expected_shape = (2,) if self._option_kinds.get(key) == "pair" else ()
                if value.shape != expected_shape or value.dtype.kind not in "fiub":
                    problems.append(f"group.{g}.{key}: expected a numeric array of shape {expected_shape}, got "
                                    f"dtype {value.dtype} shape {value.shape}")
                    continue
                new[key] = bool(value) if value.dtype.kind == "b" else (
                    tuple(float(v) for v in value) if value.shape else float(value))
            try:
                if all(k in new for k in self.defaults):
                    for key in self.defaults:
                        new[key] = self._coerce(key, new[key], self._option_kinds[key], g)
                    self._check_group(new, self._where(g))
            except ValueError as exc:
                problems.append(f"group.{g}: {exc}")
            new_groups.append(new)

        new_state: list[dict[str, np.ndarray]] = []
        for i, g, _, p in self._indexed():
            g_new = new_groups[g]
            spec = self._state_spec(g_new) if all(k in g_new for k in self.defaults) else {}
            arrays = {}
            for name in spec:
                key = f"state.{i}.{name}"
                value = take(key)
                if value is None:
                    continue
                if value.shape != p.data.shape:
                    problems.append(f"{key}: expected shape {p.data.shape} (parameter {self._param_label(i)}), "
                                    f"got {value.shape}")
                elif value.dtype.kind not in "fiub":
                    problems.append(f"{key}: expected a numeric array, got dtype {value.dtype}")
                else:
                    arrays[name] = value.astype(p.data.dtype)
            new_state.append(arrays)

        unexpected = sorted(set(given) - used)
        if unexpected:
            problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:8])}"
                            + (f", ... ({len(unexpected) - 8} more)" if len(unexpected) > 8 else ""))
        if problems:
            raise ValueError(f"{self._label}.load_state_dict: the state does not fit this optimizer:\n  - "
                             + "\n  - ".join(problems))

        self.step_count = int(step)
        for group, new in zip(self.param_groups, new_groups):
            group.clear()
            group.update(new)
        for i, arrays in enumerate(new_state):
            for name in list(self.state[i]):
                if name not in arrays:
                    del self.state[i][name]
            for name, value in arrays.items():
                if name in self.state[i]:
                    self.state[i][name][...] = value
                else:
                    self.state[i][name] = value
        self._after_load()
        return self

    def _after_load(self) -> None:
        """Hook for subclasses that keep bookkeeping derived from the state."""

    def __repr__(self) -> str:
        lines = [f"{self._label}("]
        for g, group in enumerate(self.param_groups):
            options = ", ".join(f"{k}={v}" for k, v in group.items() if k != "params")
            lines.append(f"  group {g}: {len(group['params'])} parameters, {options}")
        return "\n".join(lines) + "\n)"


def _is_numeric(value) -> bool:
    try:
        np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        return False
    return True


def _to_array(value) -> np.ndarray:
    if isinstance(value, (bool, np.bool_)):
        return np.array(bool(value))
    return np.array(value, dtype=np.float64)


def _short(a) -> str:
    a = np.asarray(a)
    return np.array2string(a, threshold=8) if a.ndim else repr(a.item())


def param_groups(named_params: Iterable, weight_decay: float, skip_bn_and_bias: bool = True) -> list[dict]:
    """Split parameters into a weight-decayed group and, optionally, a group without weight decay.

    Parameters
    ----------
    named_params : iterable of (str, Parameter) or of Parameter
        Usually ``model.named_parameters()``.
    weight_decay : float
        The decay of the first group.
    skip_bn_and_bias : bool
        Put every parameter with ``ndim <= 1`` (BatchNorm weights and biases, layer biases) in a second group
        with ``weight_decay = 0``, the usual practice: decaying a BatchNorm scale only rescales the next layer's
        input and fights the normalisation. With False, everything goes in one group.

    Returns
    -------
    list of dict
        ``[{"params": [...], "weight_decay": weight_decay}, {"params": [...], "weight_decay": 0.0}]``, empty
        groups left out; pass it to any optimizer of this package.
    """
    decayed, not_decayed = [], []
    for entry in named_params:
        p = entry if isinstance(entry, Parameter) else entry[1]
        if not isinstance(p, Parameter):
            raise TypeError(f"param_groups: expected (name, Parameter) pairs or Parameters, got "
                            f"{type(entry).__name__}")
        (not_decayed if skip_bn_and_bias and p.data.ndim <= 1 else decayed).append(entry)
    groups = [{"params": decayed, "weight_decay": float(weight_decay)},
              {"params": not_decayed, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]
