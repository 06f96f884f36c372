"""Module, Parameter and Sequential: the bookkeeping around the functional operations.

The convention, once for the whole package
-----------------------------------------
* ``module(x)`` runs ``forward`` and keeps in the module what ``backward`` needs (the op's cache).
* ``module.backward(dout)`` takes dL/d(output), **adds** each parameter's gradient into ``Parameter.grad``
  (so gradients of several backward passes accumulate, as in PyTorch, until :meth:`Module.zero_grad`) and
  returns dL/d(input). ``Parameter.grad`` is always the same array (a view of it stays valid).
* Activations are NHWC arrays; parameters and buffers share one dtype (float32 or float64) and inputs must match
  it: nothing is silently up- or down-cast.
* A module holds parameters, buffers (BatchNorm running statistics), child modules, its mode and its last cache;
  never optimizer state. Each module's own ``training`` flag decides how it runs (``model.eval()`` sets every
  flag; ``bn.eval()`` on one BatchNorm freezes just its statistics, as in PyTorch).
* A forward pass changes the model's state all or nothing: the outermost ``module(x)`` call keeps a journal of
  the buffers its layers change (BatchNorm records its running statistics before updating them), and if the
  call raises, every buffer in the journal is put back.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Iterator

import numpy as np

from numpymnv2._checks import check_array, check_same_shape, resolve_dtype

_call_depth = threading.local()
_journal = threading.local()      # .entries: list of (module, {buffer name: saved copy}) during an outermost call
_backward_depth = threading.local()


class backward_call:
    """``with backward_call(module, dout):`` wraps the body of a container's ``backward``: only the outermost
    backward call scans ``dout`` for NaN and infinity (as only the outermost forward call scans ``x``); nested
    ones check shapes and dtypes. (A class rather than a ``contextlib`` generator: it runs for every container
    on every step.)"""

    __slots__ = ("depth",)

    def __init__(self, module: "Module", dout):
        self.depth = getattr(_backward_depth, "value", 0)
        if self.depth == 0:
            check_array(dout, module.label, finite=True, what="gradient")

    def __enter__(self):
        _backward_depth.value = self.depth + 1

    def __exit__(self, *exc):
        _backward_depth.value = self.depth
        return False


class Parameter:
    """A trainable array and its accumulated gradient.

    Attributes
    ----------
    data : ndarray
        The value, updated in place by optimizers.
    grad : ndarray, same shape and dtype as ``data``
        dL/d(data), accumulated by backward passes (:meth:`accumulate_grad`); zeroed by :meth:`zero_grad`.
    """

    __slots__ = ("data", "_grad", "_zero_pending")

    def __init__(self, data: np.ndarray):
        self.data = np.ascontiguousarray(data)
        self._grad = np.zeros_like(self.data)
        self._zero_pending = False

    @property
    def grad(self) -> np.ndarray:
        if self._zero_pending:            # zero_grad's fill, done when someone looks
            self._grad.fill(0)
            self._zero_pending = False
        return self._grad

    @grad.setter
    def grad(self, value: np.ndarray) -> None:
        self._grad = value
        self._zero_pending = False

    def zero_grad(self) -> None:
        """Make ``grad`` zero, in place. Writing the zeros waits until ``grad`` is read: the next backward pass
        writes its gradient over the array (:meth:`grad_target`, :meth:`accumulate_grad`) instead of adding it to
        zeros (the fill and the sum's reads of both operands were three passes over every gradient in each
        training step). ``grad`` stays the same array, so a view of it (a flat buffer of all gradients) stays
        valid."""
        self._zero_pending = True

    def grad_target(self) -> np.ndarray | None:
        """The array a backward pass may write this parameter's gradient into, instead of allocating one: ``grad``
        itself while :meth:`zero_grad`'s zeros are pending (and it is C-contiguous, of the parameter's shape and
        dtype), else None (the gradient must be added). Pass what the operation returns to :meth:`accumulate_grad`."""
        g = self._grad
        if self._zero_pending and g.flags.c_contiguous and g.dtype == self.data.dtype and g.shape == self.data.shape:
            return g
        return None

    def accumulate_grad(self, g: np.ndarray) -> None:
        """``grad += g``, in place; after :meth:`zero_grad`, ``grad[...] = g`` (and nothing when ``g`` is ``grad``
        itself, written through :meth:`grad_target`). A ``g`` of another shape is a ``ValueError``, not a
        broadcast."""
        if g.shape != self._grad.shape:
            raise ValueError(f"Parameter{self._grad.shape}: expected a gradient of shape {self._grad.shape}, "
                             f"got {g.shape}")
        if not self._zero_pending:
            self._grad += g
        elif g is not self._grad:
            np.copyto(self._grad, g)
        self._zero_pending = False

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
        object.__setattr__(self, "label", type(self).__name__)
        object.__setattr__(self, "_checked", None)

    # -- registration -------------------------------------------------------------------------------------
    def __setattr__(self, key, value):
        if "_parameters" not in self.__dict__:
            raise TypeError(f"{type(self).__name__}: call Module.__init__() before assigning attributes")
        if key in self._buffers and isinstance(value, np.ndarray):
            self._buffers[key] = value          # e.g. `bn.num_batches_tracked += 1` stays a buffer
            object.__setattr__(self, key, value)
            return
        registry = (self._parameters if isinstance(value, Parameter) else
                    self._modules if isinstance(value, Module) else None)
        for other in (self._parameters, self._modules, self._buffers):
            if other is not registry:
                other.pop(key, None)
        if registry is not None:
            registry[key] = value           # a replaced child keeps its place (and so its turn in Sequential)
        if isinstance(value, Module):
            value.set_names(f"{self.name}.{key}" if self.name else key)   # and is named at once
        object.__setattr__(self, key, value)
        object.__setattr__(self, "_checked", None)      # a new parameter or child: check the next input again

    def register_buffer(self, key: str, value: np.ndarray) -> None:
        """Register ``value`` as persistent, non-trainable state (saved in ``state_dict``)."""
        self._buffers[key] = value
        object.__setattr__(self, key, value)

    def save_buffers(self) -> dict:
        """Copies of this module's own buffers, also entered in the journal of the outermost forward call (if
        one is running) so that a failure anywhere in that call puts them back; see :meth:`restore_buffers`."""
        saved = {key: np.array(b, copy=True) for key, b in self._buffers.items()}
        entries = getattr(_journal, "entries", None)
        if entries is not None:
            entries.append((self, saved))
        return saved

    def restore_buffers(self, saved: dict) -> None:
        """Write back the buffer values returned by :meth:`save_buffers` (in place)."""
        for key, value in saved.items():
            self._buffers[key][...] = value

    def set_names(self, prefix: str = "") -> "Module":
        """Give every sub-module its qualified name (``features.3.conv.1``) and its ``label``, how error messages
        name it: ``ClassName(qualified.name)``, or ``ClassName`` for a module without a name."""
        object.__setattr__(self, "name", prefix)
        object.__setattr__(self, "label", f"{type(self).__name__}({prefix})" if prefix else type(self).__name__)
        for key, child in self._modules.items():
            child.set_names(f"{prefix}.{key}" if prefix else key)
        return self

    # -- calling ------------------------------------------------------------------------------------------
    def __call__(self, x, *args, **kwargs):
        depth = getattr(_call_depth, "value", 0)
        if depth == 0:
            # the outermost call validates its input fully, including the scan for NaN and infinity
            self.check_input(x, finite=True)
        elif type(x) is not np.ndarray or (x.shape, x.dtype, self.training) != self._checked:
            # a module inside it checks shape and dtype once per input signature, not on every step
            self.check_input(x, finite=False)
            object.__setattr__(self, "_checked", (x.shape, x.dtype, self.training))
        _call_depth.value = depth + 1
        if depth:
            try:
                return self.forward(x, *args, **kwargs)
            finally:
                _call_depth.value = depth
        _journal.entries = []
        try:
            return self.forward(x, *args, **kwargs)
        except BaseException:
            # all or nothing: put back every buffer a layer changed before the failure (Ctrl-C included)
            for module, saved in reversed(_journal.entries):
                module.restore_buffers(saved)
            raise
        finally:
            _journal.entries = None
            _call_depth.value = depth

    def check_input(self, x, finite: bool = True) -> np.ndarray:
        """Validate an input of this module; subclasses narrow it (ndim, channels)."""
        return check_array(x, self.label, dtype=self.param_dtype(), finite=finite)

    def param_dtype(self):
        """The dtype of this module's parameters: its first parameter's (depth first), else its first floating
        buffer's, else None. It stops at the first one found, so a call costs the depth of the tree, not its size."""
        for registry in ("_parameters", "_buffers"):
            dt = self._first_float_dtype(registry)
            if dt is not None:
                return dt
        return None

    def _first_float_dtype(self, registry: str):
        for value in getattr(self, registry).values():
            array = value.data if isinstance(value, Parameter) else value
            if array.dtype.kind == "f":
                return array.dtype
        for child in self._modules.values():
            dt = child._first_float_dtype(registry)
            if dt is not None:
                return dt
        return None

    def _check_dout(self, dout, shape, dtype=None) -> np.ndarray:
        """Validate ``dout`` against the forward output's ``shape`` and dtype (``dtype``, else the parameters');
        a layer's backward called directly (not from a container's) also rejects NaN and infinity."""
        inside = getattr(_backward_depth, "value", 0) > 0
        if inside and type(dout) is np.ndarray and dout.shape == shape and dout.dtype == dtype:
            return dout         # the common case inside a container's backward, checked in one line
        check_same_shape(dout, shape, self.label)
        if not inside:
            check_array(dout, self.label, finite=True, what="gradient")
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

    def training_modes(self) -> dict[str, bool]:
        """Every module's mode by qualified name (``""`` for this one), as :meth:`set_training_modes` takes it.

        A loop that switches the whole tree (``model.eval()`` to validate, ``model.train()`` after) puts back a
        mixed tree with these, so a child frozen with ``.eval()`` (a BatchNorm during fine-tuning) stays frozen.
        """
        return {name: m.training for name, m in self.named_modules()}

    def set_training_modes(self, modes: dict[str, bool]) -> "Module":
        """Set each module named in ``modes`` to its mode (not its children: each has its own entry); return
        self."""
        for name, m in self.named_modules():
            if name in modes:
                object.__setattr__(m, "training", bool(modes[name]))
        return self

    # -- dtype --------------------------------------------------------------------------------------------
    def to(self, dtype) -> "Module":
        """Convert every parameter, gradient and floating buffer to ``dtype`` in place; return self.

        As ``torch.nn.Module.to(dtype)``: the module itself changes (build the optimizer afterwards, it holds
        the parameters' arrays). Caches of earlier forward passes are dropped, so call forward again before
        backward. Integer buffers (``num_batches_tracked``) keep their type.
        """
        dt = resolve_dtype(dtype)
        for m in self.modules():
            for p in m._parameters.values():
                p.data = np.ascontiguousarray(p.data, dtype=dt)
                p.grad = np.ascontiguousarray(p.grad, dtype=dt)
            for key, b in list(m._buffers.items()):
                if b.dtype.kind == "f":
                    m.register_buffer(key, np.ascontiguousarray(b, dtype=dt))
            m._drop_cache()
            object.__setattr__(m, "_checked", None)
        return self

    def double(self) -> "Module":
        """``self.to("float64")``: what :func:`numpymnv2.gradcheck` needs."""
        return self.to(np.float64)

    def float(self) -> "Module":
        """``self.to("float32")``."""
        return self.to(np.float32)

    def _drop_cache(self) -> None:
        """Forget the last forward pass (layers keep a cache for their backward); :meth:`to` calls it."""

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
        """Set every parameter's gradient to zero (see :meth:`Parameter.zero_grad`)."""
        for p in self.parameters():
            p.zero_grad()

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
            shown = problems[:10] + ([f"... and {len(problems) - 10} more"] if len(problems) > 10 else [])
            raise ValueError(f"{self.label}.load_state_dict: the state does not fit this model "
                             f"({len(problems)} problem(s)):\n  - " + "\n  - ".join(shown))
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

    def _key(self, i) -> str:
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"{self.label}: indices must be integers or slices, got {type(i).__name__}")
        n = len(self._modules)
        if not -n <= i < n:
            raise IndexError(f"{self.label}: index {i} is out of range for {n} children")
        return list(self._modules)[i]

    def __getitem__(self, i):
        """The child at position ``i``, or a new Sequential of the children in a slice (the same modules)."""
        if isinstance(i, slice):
            return Sequential(*list(self._modules.values())[i])
        return self._modules[self._key(i)]

    def __setitem__(self, i, module: Module) -> None:
        """Replace the child at position ``i`` (``model.classifier[1] = Linear(...)``), keeping its key."""
        if not isinstance(module, Module):
            raise TypeError(f"{self.label}: can only hold Modules, got {type(module).__name__}")
        setattr(self, self._key(i), module)

    def __iter__(self):
        return iter(self._modules.values())

    def check_input(self, x, finite: bool = True):
        return self[0].check_input(x, finite=finite) if len(self) else x

    def forward(self, x):
        for layer in self._modules.values():
            x = layer(x)
        return x

    def backward(self, dout):
        with backward_call(self, dout):
            for layer in reversed(self._modules.values()):
                dout = layer.backward(dout)
        return dout
