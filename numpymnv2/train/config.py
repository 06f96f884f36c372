"""A run's configuration and everything built from it: data, preprocessing, model, optimizer and schedule.

A :class:`TrainConfig` holds what the user chose (the ``numpymnv2 train`` options). From it and the training
data the builders below derive the rest (:func:`numpymnv2.train.cli.build_trainer` calls them all), and
:func:`run_record` turns it into the JSON stored in every checkpoint::

    {"train": {...TrainConfig...},
     "model": {"name": "MobileNetV2", "num_classes": 10, "width_mult": 0.35, ...},   # rebuilds the network
     "preprocess": {"image_size": [8, 8], "channels": 1, "resolution": 32,           # turns any image into
                    "mean": [...], "std": [...], "dtype": "float32", ...},           # network input
     "classes": ["0", ..., "9"],
     "data": {"dataset": "digits", "train_images": 1347, "val_images": 150,          # which images the run
              "val_source": "0.1 of the train split, held out", "val_split": "train",   # used; the rows are
              "split_sizes": {"train": 1497}}}                                        # the checkpoint's split/

so ``numpymnv2 evaluate`` and ``numpymnv2 predict`` need nothing but the checkpoint.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

# ARCHS: the stride layouts (model_spec), one table for every verb that builds a network
from numpymnv2.models.mobilenetv2 import ARCHS, arch_kwargs

OPTIMIZERS = ("sgd", "nesterov", "rmsprop", "adam", "adamw")
SCHEDULES = ("cosine", "step", "exponential", "constant")


@dataclass
class TrainConfig:
    """The options of a training run (the ``numpymnv2 train`` flags of the same names).

    The defaults train the built-in digits to 99-100% validation and 96-98% test accuracy in about a minute on
    two cores: width 0.35, 32x32 input, the "small" strides (stem at stride 1, so the last feature map is 2x2
    rather than 1x1, where training-mode BatchNorm would normalise only N values per channel), SGD with
    momentum 0.9 at lr 0.02, two warm-up epochs then a cosine schedule, label smoothing 0.1, the BatchNorm
    statistics re-estimated from 8 training batches before each validation (``precise_bn``), 20 epochs.
    Measured with seeds 0, 1, 2 (validation after the last epoch / test): 100% / 96.33%, 99.33% / 98.00%,
    99.33% / 97.67%; the largest validation loss after the first epoch was 2.36 (see the README). The
    defaults before (lr 0.05, one warm-up epoch, no label smoothing, no precise BN) ended at 93-94%
    validation accuracy with validation losses of 16-59 in epochs 2-5.
    """

    dataset: str = "digits"
    data_dir: str | None = None
    width: float = 0.35
    resolution: int = 32
    arch: str = "small"
    epochs: int = 20
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 4e-5
    schedule: str = "cosine"
    warmup_epochs: int = 2
    bn_momentum: float = 0.1
    precise_bn: int = 8
    label_smoothing: float = 0.1
    dropout: float = 0.2
    augment: bool = True
    val_fraction: float = 0.1
    limit: int | None = None
    patience: int | None = None
    seed: int = 0
    dtype: str = "float32"

    # Options that may differ when a run is resumed: they change where the files are or when the run ends,
    # never what a step computes.
    RESUMABLE = ("epochs", "data_dir", "patience")

    def __post_init__(self):
        self.validate()

    def validate(self) -> "TrainConfig":
        def need(ok, message):
            if not ok:
                raise ValueError(message)
        from numpymnv2.data.dataset import DATASET_NAMES
        need(self.dataset in DATASET_NAMES, f"--dataset must be one of {', '.join(DATASET_NAMES)}, "
                                            f"got {self.dataset!r}")
        need(_finite(self.width) and self.width > 0, f"--width must be a positive number, got {self.width}")
        need(_int(self.resolution) and self.resolution >= 32,
             f"--resolution must be an integer >= 32 (MobileNetV2's smallest input), got {self.resolution}")
        need(self.arch in ARCHS, f"--arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        need(_int(self.epochs) and self.epochs >= 1, f"--epochs must be a positive integer, got {self.epochs}")
        need(_int(self.batch_size) and self.batch_size >= 2,
             f"--batch-size must be an integer >= 2 (BatchNorm needs two images), got {self.batch_size}")
        need(self.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}, "
                                           f"got {self.optimizer!r}")
        need(_finite(self.lr) and self.lr > 0, f"--lr must be a positive number, got {self.lr}")
        need(_finite(self.momentum) and 0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}")
        need(_finite(self.weight_decay) and self.weight_decay >= 0,
             f"--weight-decay must be >= 0, got {self.weight_decay}")
        need(self.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}, "
                                         f"got {self.schedule!r}")
        need(_int(self.warmup_epochs) and 0 <= self.warmup_epochs,
             f"--warmup-epochs must be an integer >= 0, got {self.warmup_epochs}")
        need(_finite(self.bn_momentum) and 0 < self.bn_momentum <= 1,
             f"--bn-momentum must be in (0, 1], got {self.bn_momentum}")
        need(_int(self.precise_bn) and self.precise_bn >= 0,
             f"--precise-bn must be an integer >= 0, got {self.precise_bn}")
        need(_finite(self.label_smoothing) and 0 <= self.label_smoothing < 1,
             f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        need(_finite(self.dropout) and 0 <= self.dropout < 1, f"--dropout must be in [0, 1), got {self.dropout}")
        need(_finite(self.val_fraction) and 0 <= self.val_fraction < 1,
             f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        need(self.limit is None or (_int(self.limit) and self.limit >= 2),
             f"--limit must be an integer >= 2, got {self.limit}")
        need(self.patience is None or (_int(self.patience) and self.patience >= 0),
             f"--patience must be an integer >= 0, got {self.patience}")
        need(_int(self.seed) and self.seed >= 0, f"--seed must be a non-negative integer, got {self.seed}")
        need(self.dtype in ("float32", "float64"), f"--dtype must be float32 or float64, got {self.dtype!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown training options in the checkpoint: {', '.join(unknown)}")
        return cls(**d)


def _finite(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


def _int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


# -- data ---------------------------------------------------------------------------------------------------
def load_split(cfg: TrainConfig, split: str):
    """One split of the configured dataset (a :class:`numpymnv2.data.Dataset`)."""
    from numpymnv2.data import load_dataset
    kwargs = {"size": cfg.resolution} if cfg.dataset == "folder" else {}
    return load_dataset(cfg.dataset, cfg.data_dir, split=split, **kwargs)


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(keep, held_out)``: ``round(fraction * n_k)`` images of each class ``k`` held out, at random."""
    rng = np.random.default_rng([seed, 2])
    held = []
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        held.append(rows[:int(round(fraction * len(rows)))])
    held_out = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    keep = np.setdiff1d(np.arange(len(labels)), held_out)
    return keep, held_out


class RunData(NamedTuple):
    """The images of a run (:func:`load_run_data`).

    Attributes
    ----------
    train, val : Dataset
        What the run trains on and validates on.
    val_source : str
        Where validation comes from, for people ("0.1 of the train split, held out", "test split").
    val_split : {"train", "test"}
        The dataset split the validation images are rows of.
    train_rows, val_rows : ndarray of int64
        The rows of the train split (``train``) and of ``val_split`` (``val``); stored in every checkpoint so
        ``numpymnv2 evaluate --split train|val`` scores exactly these images later.
    split_sizes : dict of str to int
        The number of images of each split read (the rows index into these).
    """
    train: Any
    val: Any
    val_source: str
    val_split: str
    train_rows: np.ndarray
    val_rows: np.ndarray
    split_sizes: dict


def load_run_data(cfg: TrainConfig) -> RunData:
    """The training and validation images of a run (see :class:`RunData`).

    By default (``val_fraction > 0``) validation is a stratified part of the training split, held out at
    random with ``cfg.seed``, and the test split is not read at all: ``best.npz`` is chosen, and any setting
    tuned, without looking at it. ``val_fraction = 0`` validates on the test split instead (the behaviour of
    numpymnv2 0.1; the test accuracy is then no longer an unbiased estimate). ``limit`` keeps a random subset of
    at most that many images of each (for quick trials).
    """
    source = load_split(cfg, "train")
    if cfg.val_fraction > 0:
        train_rows, val_rows = stratified_split(source.labels, cfg.val_fraction, cfg.seed)
        if len(val_rows) == 0 or len(train_rows) < 2:
            raise ValueError(f"--val-fraction {cfg.val_fraction} of {len(source)} training images leaves "
                             f"{len(train_rows)} for training and {len(val_rows)} for validation")
        val_from, val_split = source, "train"
        val_source = f"{cfg.val_fraction:g} of the train split, held out"
    else:
        try:
            val_from = load_split(cfg, "test")
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{exc}\n(no test split to validate on: pass --val-fraction 0.1 to hold "
                                    f"out part of the training images instead)") from None
        train_rows, val_rows = np.arange(len(source)), np.arange(len(val_from))
        val_split, val_source = "test", "the test split, --val-fraction 0"
    if cfg.limit is not None:
        train_rows = _limit_rows(train_rows, cfg.limit, cfg.seed, 3)
        val_rows = _limit_rows(val_rows, cfg.limit, cfg.seed, 4)
    train, val = source.subset(train_rows), val_from.subset(val_rows)
    if len(train) < 2:
        raise ValueError(f"{cfg.dataset}: only {len(train)} training image(s); need at least 2")
    if train.num_classes != val.num_classes:
        raise ValueError(f"{cfg.dataset}: the train split has {train.num_classes} classes but the validation "
                         f"data has {val.num_classes}")
    sizes = {"train": len(source), val_split: len(val_from)}
    return RunData(train, val, val_source, val_split, train_rows.astype(np.int64), val_rows.astype(np.int64),
                   sizes)


def _limit_rows(rows: np.ndarray, n: int, seed: int, stream: int) -> np.ndarray:
    """At most ``n`` of ``rows``, drawn at random from stream ``stream`` of ``seed``, in their order."""
    if len(rows) <= n:
        return rows
    return rows[np.sort(np.random.default_rng([seed, stream]).permutation(len(rows))[:n])]


def load_test_data(cfg: TrainConfig):
    """The test split of the run's dataset (a random ``limit`` of it with ``cfg.limit``), for the final report.

    Raises ``FileNotFoundError`` when the dataset has no test split (an image folder without test/ or val/).
    """
    test = load_split(cfg, "test")
    if cfg.limit is not None:
        test = test.subset(_limit_rows(np.arange(len(test)), cfg.limit, cfg.seed, 5))
    return test


EVAL_SPLITS = ("train", "val", "test")


def load_evaluation_split(cfg: TrainConfig, split: str, stored: dict | None = None,
                          data_record: dict | None = None):
    """``(dataset, description)``: the images ``numpymnv2 evaluate --split`` scores.

    ``"train"`` and ``"val"`` are the run's own training and validation images: the rows stored in the
    checkpoint (``stored``, its ``split`` arrays), or, for a checkpoint without them, the rows
    :func:`load_run_data` draws from the configuration. ``"test"`` is the dataset's whole test split.
    ``data_record`` is the checkpoint's ``config["data"]``; its split sizes tell whether the dataset still has
    the images it had in training (the stored rows would name other images otherwise).
    """
    if split not in EVAL_SPLITS:
        raise ValueError(f"--split must be one of {', '.join(EVAL_SPLITS)}, got {split!r}")
    if split == "test":
        try:
            return load_split(cfg, "test"), "test split"
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{exc}\n(this dataset has no test split; --split val scores the images the "
                                    f"run held out for validation)") from None
    record = data_record or {}
    rows = (stored or {}).get(f"{split}_rows")
    if rows is None:
        run = load_run_data(cfg)
        if split == "train":
            return run.train, "the run's training images"
        return run.val, f"the run's validation images ({run.val_source})"
    from_split = "train" if split == "train" else record.get("val_split", "train")
    data = load_split(cfg, from_split)
    expected = (record.get("split_sizes") or {}).get(from_split)
    if expected is not None and expected != len(data):
        raise ValueError(f"{cfg.dataset}: the {from_split} split has {len(data)} images now but had {expected} "
                         f"when the run trained, so the stored {split} rows no longer name the same images")
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= len(data)):
        raise ValueError(f"{cfg.dataset}: the stored {split} rows reach row {int(rows.max())}, but the "
                         f"{from_split} split has {len(data)} images")
    if split == "train":
        return data.subset(rows), "the run's training images"
    return data.subset(rows), f"the run's validation images ({record.get('val_source', from_split)})"


def make_preprocess(cfg: TrainConfig, train) -> dict[str, Any]:
    """The preprocessing record of a run: enough to turn any image into exactly what the network saw."""
    from numpymnv2.data import channel_stats
    H, W, C = train.image_shape
    if C not in (1, 3):
        raise ValueError(f"{cfg.dataset}: images must have 1 or 3 channels, got {C}")
    mean, std = channel_stats(train.images)
    if C == 1:
        mean, std = np.repeat(mean, 3), np.repeat(std, 3)
    flip = cfg.augment and cfg.dataset not in ("digits", "mnist")
    return {"image_size": [int(H), int(W)], "channels": int(C), "resolution": int(cfg.resolution),
            "mean": [float(m) for m in mean], "std": [float(max(s, 1e-8)) for s in std], "dtype": cfg.dtype,
            "crop_padding": max(1, cfg.resolution // 8) if cfg.augment else 0, "flip": bool(flip)}


def make_transform(preprocess: dict, train: bool):
    """The batch transform of a preprocessing record (:func:`make_preprocess`); ``train`` adds augmentation.

    ToFloat -> Resize(resolution) when the size differs -> GrayToRGB for one channel -> (training:
    RandomCrop with zero padding, then RandomHorizontalFlip if enabled) -> Normalize(mean, std).
    """
    from numpymnv2.data import Compose, GrayToRGB, Normalize, RandomCrop, RandomHorizontalFlip, Resize, ToFloat
    R = int(preprocess["resolution"])
    steps = [ToFloat(preprocess["dtype"])]
    if tuple(preprocess["image_size"]) != (R, R):
        steps.append(Resize(R))
    if preprocess["channels"] == 1:
        steps.append(GrayToRGB())
    if train and preprocess["crop_padding"] > 0:
        steps.append(RandomCrop(R, padding=int(preprocess["crop_padding"])))
    if train and preprocess["flip"]:
        steps.append(RandomHorizontalFlip())
    steps.append(Normalize(preprocess["mean"], preprocess["std"]))
    return Compose(steps)


def train_drop_last(n: int, batch_size: int) -> bool:
    """Drop the last batch only when it would hold a single image (training BatchNorm cannot use it)."""
    return n % batch_size == 1


def make_loaders(cfg: TrainConfig, preprocess: dict, train, val):
    """The training loader (shuffled, augmented, seeded by ``cfg.seed``) and the validation loader of a run."""
    from numpymnv2.data import DataLoader
    train_loader = DataLoader(train, cfg.batch_size, shuffle=True,
                              drop_last=train_drop_last(len(train), cfg.batch_size),
                              transform=make_transform(preprocess, train=True), seed=cfg.seed, dtype=cfg.dtype)
    val_loader = DataLoader(val, max(cfg.batch_size, 256), shuffle=False,
                            transform=make_transform(preprocess, train=False), seed=cfg.seed, dtype=cfg.dtype)
    return train_loader, val_loader


# -- model, optimizer, schedule -----------------------------------------------------------------------------
def model_spec(cfg: TrainConfig, num_classes: int) -> dict[str, Any]:
    """The architecture record: the MobileNetV2 constructor arguments (and the seed of the initial weights)."""
    layout = arch_kwargs(cfg.arch)
    return {"name": "MobileNetV2", "num_classes": int(num_classes), "width_mult": float(cfg.width),
            "dropout": float(cfg.dropout), "stem_stride": layout["stem_stride"],
            "inverted_residual_setting": layout["inverted_residual_setting"], "dtype": cfg.dtype, "seed": cfg.seed}


def build_model(spec: dict):
    """A MobileNetV2 from an architecture record (:func:`model_spec`, or ``MobileNetV2.config``)."""
    from numpymnv2.models import MobileNetV2
    from numpymnv2.models.footprint import check_model_fits
    if not isinstance(spec, dict) or spec.get("name", "MobileNetV2") != "MobileNetV2":
        raise ValueError(f"cannot build a model from {spec!r}: only MobileNetV2 checkpoints are supported")
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    try:
        check_model_fits(kwargs)        # before a width of 1e9 allocates anything
        return MobileNetV2(**kwargs)
    except TypeError as exc:
        raise ValueError(f"cannot build MobileNetV2 from the architecture record {spec}: {exc}") from None


def set_bn_momentum(model, momentum: float):
    """Give every BatchNorm layer of ``model`` the running-statistics momentum ``momentum`` (``running = (1 - m)
    running + m batch``, PyTorch's convention); returns ``model``.

    It only changes what evaluation mode sees, never a training step. The statistics must follow weights that
    move quickly early in a short run: at 0.1 they average the last ~10 steps, and on the digits they lagged so
    far behind that the validation loss of epochs 2-4 reached 7-20 while the training loss was 2.3.
    """
    from numpymnv2.nn.layers import BatchNorm2d
    for _, module in model.named_modules():
        if isinstance(module, BatchNorm2d):
            module.momentum = float(momentum)
    return model


def build_optimizer(cfg: TrainConfig, model):
    """The optimizer of ``cfg``; weight decay skips BatchNorm parameters and biases."""
    from numpymnv2 import optim
    groups = optim.param_groups(model.named_parameters(), weight_decay=cfg.weight_decay)
    if cfg.optimizer in ("sgd", "nesterov"):
        return optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.optimizer == "nesterov")
    if cfg.optimizer == "rmsprop":
        return optim.RMSprop(groups, lr=cfg.lr, alpha=0.9, momentum=cfg.momentum)
    if cfg.optimizer == "adam":
        return optim.Adam(groups, lr=cfg.lr)
    return optim.AdamW(groups, lr=cfg.lr)


def build_schedule(cfg: TrainConfig, optimizer, steps_per_epoch: int):
    """The learning-rate schedule of ``cfg``, stepped once per optimizer step (t counts iterations).

    ``cosine`` anneals to 0 at the end of ``epochs``; ``step`` divides the rate by 10 after each third of the
    run; ``exponential`` multiplies it by 0.98 per epoch (the paper's decay, spread over the iterations);
    ``constant`` keeps it. With ``warmup_epochs`` > 0 the rate first ramps linearly from 0.1 x lr.
    """
    from numpymnv2 import optim
    total = cfg.epochs * steps_per_epoch
    warmup = min(cfg.warmup_epochs * steps_per_epoch, total - 1)
    main_steps = max(1, total - warmup)
    if cfg.schedule == "cosine":
        sched = optim.CosineAnnealingLR(optimizer, T_max=main_steps)
    elif cfg.schedule == "step":
        sched = optim.StepLR(optimizer, step_size=max(1, math.ceil(main_steps / 3)), gamma=0.1)
    elif cfg.schedule == "exponential":
        sched = optim.ExponentialLR(optimizer, gamma=0.98 ** (1.0 / steps_per_epoch))
    else:
        sched = optim.StepLR(optimizer, step_size=1, gamma=1.0)
    if warmup > 0:
        sched = optim.with_warmup(sched, warmup_steps=warmup, start_factor=0.1)
    return sched


def run_record(cfg: TrainConfig, spec: dict, preprocess: dict, run: RunData) -> dict[str, Any]:
    """The JSON configuration stored in every checkpoint (see the module docstring)."""
    return {"train": cfg.to_dict(), "model": spec, "preprocess": preprocess,
            "classes": [str(c) for c in run.train.classes],
            "data": {"dataset": cfg.dataset, "train_images": len(run.train), "val_images": len(run.val),
                     "val_source": run.val_source, "val_split": run.val_split,
                     "split_sizes": dict(run.split_sizes)}}


def split_record(run: RunData) -> dict[str, np.ndarray]:
    """The ``split`` arrays of a checkpoint: the rows the run trains and validates on."""
    return {"train_rows": run.train_rows, "val_rows": run.val_rows}


def default_out_dir(cfg: TrainConfig) -> Path:
    return Path("runs") / cfg.dataset
