"""Checkpoints: everything a run needs to continue bit for bit, in one ``.npz`` file without pickles.

Layout of the file (every entry an array; ``np.load(path, allow_pickle=False)`` reads it)::

    meta/format          0-d str  "numpymnv2-checkpoint"
    meta/version         0-d int  FORMAT_VERSION
    meta/config          0-d str  JSON: the run's configuration (model, data, preprocessing, optimizer, ...)
    meta/progress        0-d str  JSON: where the run stands (epoch, batch, step, partial-epoch sums)
    meta/history         0-d str  JSON: one dict of metrics per finished epoch
    meta/best            0-d str  JSON: the best validation accuracy so far and its epoch (or null)
    meta/rng             0-d str  JSON: ``bit_generator.state`` of every generator of the run, by name
    model/<name>         the model's ``state_dict()`` (parameters and BatchNorm buffers)
    optimizer/<name>     the optimizer's flat ``state_dict()``
    schedule/<name>      the learning-rate schedule's ``state_dict()``
    split/<name>         which images the run trained and validated on: ``train_rows``, ``val_rows`` (int64
                         row indices into the dataset's splits; see :func:`numpymnv2.train.config.load_run_data`)

Generator states are JSON because PCG64's 128-bit integers do not fit any NumPy integer dtype, and JSON keeps
them exact. Files are written with :func:`numpymnv2._atomic.atomic_write`, so a crash while saving
leaves the previous checkpoint as it was.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from numpymnv2._checks import npz_signature_problem
from numpymnv2._untrusted import (UntrustedFileError, byte_budget, check_state_values, load_npz,
                                  nonfinite_names, npz_names)
from numpymnv2.models.footprint import mobilenetv2_footprint
from numpymnv2._atomic import atomic_write

FORMAT = "numpymnv2-checkpoint"
FORMAT_VERSION = 1
_META = ("config", "progress", "history", "best", "rng")
_ARRAY_GROUPS = ("model", "optimizer", "schedule", "split")
_META_BYTES = 64 * 1024 ** 2     # the JSON records: configuration, history, generator states


class CheckpointError(ValueError):
    """A file that cannot be used as the checkpoint asked for (corrupt, not a checkpoint, wrong model)."""


@dataclass
class Checkpoint:
    """The content of a checkpoint file.

    Attributes
    ----------
    model, optimizer, schedule : dict of str to ndarray
        The ``state_dict()`` of each (optimizer and schedule may be empty, e.g. for exported weights).
    split : dict of str to ndarray
        ``train_rows`` and ``val_rows``: the rows of the dataset the run trained and validated on, so
        ``numpymnv2 evaluate --split train|val`` scores exactly those images (empty for converted weights and
        checkpoints written before the split was stored).
    config : dict
        JSON-able configuration of the run; ``config["model"]`` describes the architecture and
        ``config["preprocess"]`` how images become network input.
    progress : dict
        ``epoch`` (the epoch in progress, 0-based), ``batch`` (its next batch), ``step`` (optimizer steps taken)
        and ``partial`` (the running sums of the unfinished epoch).
    history : list of dict
        Metrics of every finished epoch.
    best : dict or None
        ``{"epoch": ..., "val_acc": ...}`` of the best epoch so far.
    rng : dict of str to dict
        ``bit_generator.state`` of each generator the run draws from, by name.
    path : Path or None
        Where it was read from.
    """

    model: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray] = field(default_factory=dict)
    schedule: dict[str, np.ndarray] = field(default_factory=dict)
    split: dict[str, np.ndarray] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    progress: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    rng: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def epochs_done(self) -> int:
        """Number of finished epochs (training and evaluation both done)."""
        return len(self.history)

    def describe_model(self) -> str:
        return describe_model_config(self.config.get("model"))


def describe_model_config(spec) -> str:
    """``MobileNetV2(width_mult=0.35, num_classes=10, ...)`` from a ``config["model"]`` dict."""
    if not isinstance(spec, dict):
        return "an unknown model"
    args = ", ".join(f"{k}={v!r}" for k, v in spec.items() if k != "name")
    return f"{spec.get('name', 'model')}({args})"


class NonFiniteStateError(ValueError):
    """A checkpoint about to be written holds NaN or infinite values (a diverged run); nothing was written."""

    def __init__(self, path, names: list[str]):
        self.path, self.names = path, list(names)
        shown = ", ".join(self.names[:4]) + (f" and {len(self.names) - 4} more" if len(self.names) > 4 else "")
        super().__init__(f"save_checkpoint: refusing to write {path}: {shown} hold NaN or infinite values")


def nonfinite_entries(ckpt: Checkpoint) -> list[str]:
    """``group/name`` of every floating-point array of the checkpoint that holds NaN or infinity."""
    return [f"{group}/{name}" for group in _ARRAY_GROUPS for name in nonfinite_names(getattr(ckpt, group))]


def save_checkpoint(path, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` to ``path`` atomically (see the module docstring for the layout); return the path.

    Raises
    ------
    NonFiniteStateError
        An array holds NaN or infinity: the file at ``path`` (a good checkpoint, perhaps) is left as it was.
    """
    arrays: dict[str, np.ndarray] = {
        "meta/format": np.array(FORMAT),
        "meta/version": np.array(FORMAT_VERSION, dtype=np.int64),
    }
    for name in _META:
        arrays[f"meta/{name}"] = np.array(json.dumps(getattr(ckpt, name), allow_nan=True))
    for group in _ARRAY_GROUPS:
        for key, value in getattr(ckpt, group).items():
            value = np.asarray(value)
            if value.dtype.kind == "O":
                raise TypeError(f"save_checkpoint: {group} entry {key!r} is an object array, which cannot be "
                                f"stored without pickle")
            arrays[f"{group}/{key}"] = value
    bad = nonfinite_entries(ckpt)
    if bad:
        raise NonFiniteStateError(path, bad)
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def checkpoint_bytes(ckpt: Checkpoint) -> int:
    """About the size of the file :func:`save_checkpoint` writes for ``ckpt`` (arrays plus the JSON records)."""
    arrays = sum(np.asarray(v).nbytes for group in _ARRAY_GROUPS for v in getattr(ckpt, group).values())
    meta = sum(4 * len(json.dumps(getattr(ckpt, name), allow_nan=True)) for name in _META)
    return arrays + meta + 200 * sum(len(getattr(ckpt, group)) for group in _ARRAY_GROUPS)


def _array_budget(config) -> int:
    """Bytes the arrays of a checkpoint of this configuration may claim: its model state in float64 and up to
    three optimizer arrays per parameter, the split's row indices (int64, at most two per image of the splits it
    indexes), plus slack; never more than :func:`byte_budget` allows."""
    config = config if isinstance(config, dict) else {}
    spec, data = config.get("model"), config.get("data")
    if not (isinstance(spec, dict) and spec.get("name") == "MobileNetV2"):
        return byte_budget()
    try:
        fp = mobilenetv2_footprint(**{k: v for k, v in spec.items() if k != "name"})
        sizes = data.get("split_sizes", {}) if isinstance(data, dict) else {}
        images = sum(int(n) for n in sizes.values()) if isinstance(sizes, dict) else 0
        return byte_budget((4 * fp.parameters + fp.buffers) * 8 + 16 * max(images, 0) + (1 << 20))
    except (TypeError, ValueError, OverflowError, AttributeError):
        return byte_budget()    # a malformed record: judged when the model is built from it


def resolve_checkpoint_path(path) -> Path:
    """``path`` itself, or ``path/last.npz`` when ``path`` is a run folder; ``FileNotFoundError`` if absent."""
    p = Path(path).expanduser()
    if p.is_dir():
        if (p / "last.npz").is_file():
            return p / "last.npz"
        raise FileNotFoundError(f"{p} is a folder without a last.npz checkpoint; pass a checkpoint file "
                                f"(a run folder holds last.npz and best.npz)")
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    return p


def load_checkpoint(path) -> Checkpoint:
    """Read and validate a checkpoint written by :func:`save_checkpoint`.

    ``path`` may also be a run folder, meaning its ``last.npz``. Every array is read (and its CRC checked)
    before this returns, so later use cannot fail on a damaged file.

    Raises
    ------
    FileNotFoundError
        Nothing at ``path``.
    CheckpointError
        The file is truncated or corrupt, is not a numpymnv2 checkpoint, or comes from a newer version.
    """
    p = resolve_checkpoint_path(path)
    hint = "it may be truncated or corrupt (an interrupted copy?); use another checkpoint, e.g. best.npz or last.npz"
    problem = npz_signature_problem(p)
    if problem:
        raise CheckpointError(f"{p} is not a readable numpymnv2 checkpoint: {problem}. If it was one, {hint}")
    with open(p, "rb") as f:
        single_array = f.read(6) == b"\x93NUMPY"
    if single_array:
        raise CheckpointError(f"{p} is a single .npy array, not a numpymnv2 checkpoint (an .npz archive "
                              f"written by the trainer)")
    # the small records first; their model configuration bounds what the arrays may claim
    try:
        arrays = load_npz(p, str(p), max_bytes=_META_BYTES, select=lambda name: name.startswith("meta/"))
    except UntrustedFileError as exc:
        raise CheckpointError(f"{exc}. If it was a checkpoint, {hint}") from None

    fmt = arrays.get("meta/format")
    if fmt is None or fmt.shape != () or fmt.dtype.kind != "U" or str(fmt) != FORMAT:
        names = sorted(npz_names(p))
        shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        raise CheckpointError(f"{p} is an .npz file but not a numpymnv2 checkpoint (no meta/format entry; "
                              f"it holds {shown or 'nothing'})")
    version = arrays.get("meta/version")
    if version is None or version.shape != () or version.dtype.kind not in "iu":
        raise CheckpointError(f"{p}: the checkpoint has no valid meta/version entry; {hint}")
    if int(version) > FORMAT_VERSION:
        raise CheckpointError(f"{p} was written by a newer numpymnv2 (checkpoint format {int(version)}; this "
                              f"version reads format {FORMAT_VERSION} and older); upgrade numpymnv2")

    meta = {}
    for name in _META:
        entry = arrays.get(f"meta/{name}")
        if entry is None or entry.shape != () or entry.dtype.kind != "U":
            raise CheckpointError(f"{p}: the checkpoint lacks its meta/{name} entry; {hint}")
        try:
            meta[name] = json.loads(str(entry))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{p}: meta/{name} is not valid JSON ({exc}); {hint}") from None
    try:
        stored = load_npz(p, str(p), max_bytes=_array_budget(meta["config"]),
                          select=lambda name: name.partition("/")[0] in _ARRAY_GROUPS)
    except UntrustedFileError as exc:
        raise CheckpointError(f"{exc}; {hint}") from None
    groups: dict[str, dict[str, np.ndarray]] = {g: {} for g in _ARRAY_GROUPS}
    for key, value in stored.items():
        group, _, name = key.partition("/")
        groups[group][name] = value
    if not groups["model"]:
        raise CheckpointError(f"{p}: the checkpoint holds no model arrays; {hint}")
    try:
        check_state_values(groups["model"], str(p))
        check_state_values({f"{g}/{k}": v for g in ("optimizer", "schedule") for k, v in groups[g].items()},
                           str(p))
    except ValueError as exc:
        raise CheckpointError(f"{exc} (the file itself is intact: it was written so)") from None
    return Checkpoint(model=groups["model"], optimizer=groups["optimizer"], schedule=groups["schedule"],
                      split=groups["split"], path=p, **meta)


# -- random generators ------------------------------------------------------------------------------------
def module_generators(model) -> dict[str, np.random.Generator]:
    """Every ``numpy.random.Generator`` held by a sub-module as ``.generator`` (e.g. Dropout), by module name."""
    found = {}
    for name, module in model.named_modules():
        gen = getattr(module, "generator", None)
        if isinstance(gen, np.random.Generator):
            found[f"model.{name}" if name else "model"] = gen
    return found


def generator_states(generators: dict[str, np.random.Generator]) -> dict[str, dict]:
    """``{name: bit_generator.state}``, a JSON-able copy."""
    return {name: json.loads(json.dumps(gen.bit_generator.state)) for name, gen in generators.items()}


def restore_generator_states(generators: dict[str, np.random.Generator], states: dict[str, dict],
                             where: str) -> None:
    """Set each generator's ``bit_generator.state``; the names must match exactly."""
    missing = sorted(set(generators) - set(states))
    unexpected = sorted(set(states) - set(generators))
    if missing or unexpected:
        raise CheckpointError(f"{where}: the random generators do not match this model "
                              f"(missing {missing or 'none'}, unexpected {unexpected or 'none'})")
    for name, gen in generators.items():
        state = states[name]
        kind = type(gen.bit_generator).__name__
        if not isinstance(state, dict) or state.get("bit_generator") != kind:
            raise CheckpointError(f"{where}: generator {name} is a {kind} but the checkpoint holds "
                                  f"{state.get('bit_generator') if isinstance(state, dict) else state!r}")
        try:
            gen.bit_generator.state = state
        except (TypeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{where}: cannot restore generator {name}: {exc}") from None


def load_model_state(model, ckpt: Checkpoint, model_spec: dict | None = None) -> None:
    """Copy the checkpoint's weights into ``model``, with an error naming both architectures on a mismatch."""
    try:
        model.load_state_dict(ckpt.model)
    except ValueError as exc:
        this = describe_model_config(model_spec) if model_spec else type(model).__name__
        raise CheckpointError(f"{ckpt.path}: the checkpoint holds {ckpt.describe_model()}, a different "
                              f"architecture from this model, {this}.\n{exc}") from None
