"""Module, Parameter and Sequential: the bookkeeping around the functional operations.

The convention, once for the whole package
-----------------------------------------
* ``module(x)`` runs ``forward`` and keeps in the module what ``backward`` needs (the op's cache).
* ``module.backward(dout)`` takes dL/d(output), **adds** each parameter's gradient into ``Parameter.grad``
  (so gradients of several backward passes accumulate, as in PyTorch, until :meth:`Module.zero_grad`) and
  returns dL/d(input).
* Activations are NHWC arrays; parameters and buffers share one dtype (float32 or float64) and inputs must match
  it: nothing is silently up- or down-cast.
* A module holds parameters, buffers (BatchNorm running statistics), child modules, its mode and its last cache;
  never optimizer state.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Iterator

import numpy as np

from numpymnv2._checks import check_array, check_same_shape

_call_depth = threading.local()


class Parameter:
    """A trainable array and its accumulated gradient.

    Attributes
    ----------
    data : ndarray
        The value, updated in place by optimizers.
    grad : ndarray, same shape and dtype as ``data``
        dL/d(data), accumulated by backward passes; zeroed by ``zero_grad``.
    """

    __slots__ = ("data", "grad")

    def __init__(self, data: np.ndarray):
        self.data = np.ascontiguousarray(data)
        self.grad = np.zeros_like(self.data)

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    def __repr__(self) -> str:
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class Module:
    """Base class of every layer, block and network.

    Subclasses define ``forward(x)`` and ``backward(dout)``; assigning a :class:`Parameter` or a
    :class:`Module` to an attribute registers it, and :meth:`register_buffer` registers a non-trainable array
    that belongs in the ``state_dict`` (as PyTorch does).
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "name", "")

    # -- registration -------------------------------------------------------------------------------------
    def __setattr__(self, key, value):
        if "_parameters" not in self.__dict__:
            raise TypeError(f"{type(self).__name__}: call Module.__init__() before assigning attributes")
        if key in self._buffers and isinstance(value, np.ndarray):
            self._buffers[key] = value          # e.g. `bn.num_batches_tracked += 1` stays a buffer
            object.__setattr__(self, key, value)
            return
        for registry in (self._parameters, self._modules, self._buffers):
            registry.pop(key, None)
        if isinstance(value, Parameter):
            self._parameters[key] = value
        elif isinstance(value, Module):
            self._modules[key] = value
        object.__setattr__(self, key, value)

    def register_buffer(self, key: str, value: np.ndarray) -> None:
        """Register ``value`` as persistent, non-trainable state (saved in ``state_dict``)."""
        self._buffers[key] = value
        object.__setattr__(self, key, value)

    def set_buffer(self, key: str, value: np.ndarray) -> None:
        """Replace the array of buffer ``key`` (registered earlier)."""
        self._buffers[key] = value
        object.__setattr__(self, key, value)

    @property
    def label(self) -> str:
        """How errors name this module: ``ClassName(qualified.name)`` or ``ClassName``."""
        return f"{type(self).__name__}({self.name})" if self.name else type(self).__name__

    def set_names(self, prefix: str = "") -> "Module":
        """Give every sub-module its qualified name (``features.3.conv.1``), used in error messages."""
        object.__setattr__(self, "name", prefix)
        for key, child in self._modules.items():
            child.set_names(f"{prefix}.{key}" if prefix else key)
        return self

    # -- calling ------------------------------------------------------------------------------------------
    def __call__(self, x, *args, **kwargs):
        depth = getattr(_call_depth, "value", 0)
        # Only the outermost call pays for the full scan for NaN/inf; inner layers check shape and dtype only.
        self.check_input(x, finite=depth == 0)
        _call_depth.value = depth + 1
        try:
            return self.forward(x, *args, **kwargs)
        finally:
            _call_depth.value = depth

    def check_input(self, x, finite: bool = True) -> np.ndarray:
        """Validate an input of this module; subclasses narrow it (ndim, channels)."""
        return check_array(x, self.label, dtype=self.param_dtype(), finite=finite)

    def param_dtype(self):
        """The dtype of this module's parameters (None when it has none)."""
        for p in self.parameters():
            return p.data.dtype
        for _, b in self.named_buffers():
            if b.dtype.kind == "f":
                return b.dtype
        return None

    def _check_dout(self, dout, shape, dtype=None) -> np.ndarray:
        """Validate ``dout`` against the forward output's ``shape`` and dtype (``dtype``, else the parameters')."""
        check_same_shape(dout, shape, self.label)
        dt = dtype if dtype is not None else self.param_dtype()
        if dt is not None and dout.dtype != dt:
            raise TypeError(f"{self.label}: expected a {dt} gradient (the forward output's dtype), got "
                            f"{dout.dtype}")
        return dout

    def _need_cache(self, cache):
        if cache is None:
            raise ValueError(f"{self.label}: backward called before forward (no forward pass is stored)")
        return cache

    # -- modes --------------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        """Set training mode (batch statistics in BatchNorm, active dropout) here and below; return self."""
        object.__setattr__(self, "training", bool(mode))
        for child in self._modules.values():
            child.train(mode)
        return self

    def eval(self) -> "Module":
        """Set evaluation mode (running statistics, no dropout); return self."""
        return self.train(False)

    # -- traversal ----------------------------------------------------------------------------------------
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        yield prefix, self
        for key, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{key}" if prefix else key)

    def modules(self) -> Iterator["Module"]:
        for _, m in self.named_modules():
            yield m

    def children(self) -> Iterator["Module"]:
        yield from self._modules.values()

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        for mod_name, mod in self.named_modules(prefix):
            for key, p in mod._parameters.items():
                yield (f"{mod_name}.{key}" if mod_name else key), p

    def parameters(self) -> Iterator[Parameter]:
        for _, p in self.named_parameters():
            yield p

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
        for mod_name, mod in self.named_modules(prefix):
            for key, b in mod._buffers.items():
                yield (f"{mod_name}.{key}" if mod_name else key), b

    def zero_grad(self) -> None:
        """Set every parameter's gradient to zero."""
        for p in self.parameters():
            p.grad[...] = 0

    def num_parameters(self) -> int:
        """Number of trainable scalars (BatchNorm running statistics excluded)."""
        return int(sum(p.data.size for p in self.parameters()))

    # -- state --------------------------------------------------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Copies of every parameter and buffer, keyed by qualified name, in registration order."""
        out = OrderedDict()
        for mod_name, mod in self.named_modules():
            for key, p in mod._parameters.items():
                out[f"{mod_name}.{key}" if mod_name else key] = p.data.copy()
            for key, b in mod._buffers.items():
                out[f"{mod_name}.{key}" if mod_name else key] = np.array(b, copy=True)
        return out

    def load_state_dict(self, state: dict, strict: bool = True) -> "Module":
        """Copy arrays from ``state`` into this module's parameters and buffers; return self.

        Every key is checked before anything is written, so a mismatched dict leaves the module unchanged.
        Values are cast to the module's dtype. With ``strict`` (the default) missing and unexpected keys are
        errors; every problem is listed in one ``ValueError``. Any mapping of names to arrays works, including
        the ``NpzFile`` that ``numpy.load`` returns for an ``.npz``.
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"{self.label}.load_state_dict: expected a dict of arrays, got {type(state).__name__}")
        state = {k: state[k] for k in state}      # read each entry once (an NpzFile decompresses on access)
        targets = {}
        for mod_name, mod in self.named_modules():
            for key in list(mod._parameters) + list(mod._buffers):
                targets[f"{mod_name}.{key}" if mod_name else key] = (mod, key)
        missing = [k for k in targets if k not in state]
        unexpected = [k for k in state if k not in targets]
        problems = []
        if strict and missing:
            problems.append(f"missing keys ({len(missing)}): {_abbrev(missing)}")
        if strict and unexpected:
            problems.append(f"unexpected keys ({len(unexpected)}): {_abbrev(unexpected)}")
        staged = []
        for k, (mod, key) in targets.items():
            if k not in state:
                continue
            value = np.asarray(state[k])
            current = mod._parameters[key].data if key in mod._parameters else mod._buffers[key]
            if value.shape != current.shape:
                problems.append(f"{k}: expected shape {current.shape}, got {value.shape}")
                continue
            if value.dtype.kind not in "fiub":
                problems.append(f"{k}: expected a numeric array, got dtype {value.dtype}")
                continue
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                problems.append(f"{k}: contains NaN or infinite values")
                continue
            if current.dtype.kind in "iu" and value.dtype.kind == "f" and not np.all(value == np.round(value)):
                problems.append(f"{k}: expected integer values for a {current.dtype} buffer, got {value}")
                continue
            staged.append((mod, key, value.astype(current.dtype, copy=True)))
        if problems:
            raise ValueError(f"{self.label}.load_state_dict: the state does not fit this model:\n  - "
                             + "\n  - ".join(problems))
        for mod, key, value in staged:
            if key in mod._parameters:
                mod._parameters[key].data[...] = value
            else:
                mod._buffers[key][...] = value
        return self

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for key, child in self._modules.items():
            child_repr = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({key}): {child_repr}")
        return lines[0] + (")" if len(lines) == 1 else "\n" + "\n".join(lines[1:]) + "\n)")

    def extra_repr(self) -> str:
        return ""


def _abbrev(keys: list, limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


class Sequential(Module):
    """Run children in order; backward runs them in reverse, handing each the previous one's dL/d(input)."""

    def __init__(self, *layers: Module):
        super().__init__()
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential: element {i} is a {type(layer).__name__}, not a Module")
            setattr(self, str(i), layer)

    def __len__(self) -> int:
        return len(self._modules)

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]

    def __iter__(self):
        return iter(self._modules.values())

    def check_input(self, x, finite: bool = True):
        return self[0].check_input(x, finite=finite) if len(self) else x

    def forward(self, x):
        for layer in self._modules.values():
            x = layer(x)
        return x

    def backward(self, dout):
        for layer in reversed(self._modules.values()):
            dout = layer.backward(dout)
        return dout
