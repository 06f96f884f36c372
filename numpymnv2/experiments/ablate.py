r"""Bottleneck ablations, the paper's Figure 6 at CPU scale: linear vs ReLU6 bottleneck, shortcut vs none.

Sandler et al. 2018 (Section 6.4, Figure 6) train MobileNetV2 on ImageNet three ways and compare accuracy:

* **(a)** the paper's block, whose projection is linear, against the same block with a ReLU6 after the
  projection (a "non-linear bottleneck");
* **(b)** the paper's block, with its shortcut between the bottlenecks, against no shortcut at all.

This module trains the *same* small MobileNetV2 in each variant, with the same seeds and the same budget.
Same seed means the same initial weights (the variants have identical parameter shapes and draw them in the
same order), the same data order, the same augmentation and the same dropout masks. Only the switch under test
differs, so the comparison can be made seed by seed (paired). Each run goes through the trainer's library API
(:class:`numpymnv2.train.trainer.Trainer` and the builders of :mod:`numpymnv2.train.config`), exactly as
``numpymnv2 train`` does, and its checkpoints are ordinary ones (``numpymnv2 evaluate`` reads them).

Outputs in ``--out``:

* ``ablation.json``: the settings, every run's per-epoch history and sparsity, and per variant the mean and
  sample standard deviation (``ddof=1``) over seeds of the final validation accuracy, the best one, the final
  training loss and the depthwise sparsity, plus the paired difference to the paper's block.
* ``ablation.md``: the same table in Markdown (also printed).
* ``ablation.png``: validation accuracy and training loss against epoch, the mean over seeds with a band from
  the lowest to the highest seed. Panel (a) compares the bottlenecks, panel (b) the shortcuts.
* ``sparsity.png``: depthwise kernel sparsity per layer of each variant's final model, for the first seed
  (:mod:`numpymnv2.experiments.sparsity`).
* ``runs/<variant>/seed<k>/``: each run's ``last.npz``, ``best.npz``, metrics and curves, as the trainer writes
  them.

Command line: ``numpymnv2 ablate --epochs 15 --seeds 0 1 2 3 4 --out runs/ablate``. The defaults (the built-in
digits at 32x32, width 0.35, 15 epochs, 5 seeds, 3 variants, 2 processes) take a few minutes on two cores.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["VARIANTS", "COMPARISONS", "AblationSettings", "train_variant", "run_ablation", "summarize",
           "at_chance", "chance_warning", "format_table", "ablation_figure", "plot_curves", "configure_parser",
           "run"]

# name -> (MobileNetV2 switches, label)
VARIANTS = {
    "paper": ({"linear_bottleneck": True, "use_shortcut": True}, "linear bottleneck + shortcut (paper)"),
    "relu6-bottleneck": ({"linear_bottleneck": False, "use_shortcut": True}, "ReLU6 bottleneck + shortcut"),
    "no-shortcut": ({"linear_bottleneck": True, "use_shortcut": False}, "linear bottleneck, no shortcut"),
}
# the panels of paper Figure 6: what each compares with the paper's block
COMPARISONS = (("(a) linear vs ReLU6 bottleneck", "relu6-bottleneck"), ("(b) shortcut vs none", "no-shortcut"))
BASELINE = "paper"
COLOURS = {"paper": "tab:blue", "relu6-bottleneck": "tab:red", "no-shortcut": "tab:orange"}
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


@dataclass
class AblationSettings:
    """Everything that defines an ablation; every run uses all of it except ``variants`` and ``seeds``.

    The training options mean what the ``numpymnv2 train`` options of the same names mean
    (:class:`numpymnv2.train.config.TrainConfig`); those not listed are fixed: momentum 0.9, a cosine schedule
    with one warm-up epoch, no label smoothing, the BatchNorm running averages as they are (no precise BN),
    dropout 0.2, random crops (the trainer's defaults before numpymnv2 0.2, which the published ablation tables
    were measured with). The learning rate defaults to 0.01,
    not the trainer's 0.1: at 0.1, within 15 epochs, this network trained erratically on the digits (some
    seeds ended at chance), and runs that diverge say nothing about the blocks being compared. (With the
    ImageNet strides a 32x32 input ends at 1x1, where each BatchNorm sees only the batch's values of a channel;
    ``arch="cifar"`` ends at 4x4 but trains about 7 times slower.)
    """
    variants: list = field(default_factory=lambda: list(VARIANTS))
    seeds: list = field(default_factory=lambda: [0, 1, 2, 3, 4])
    dataset: str = "digits"
    data_dir: str | None = None
    width: float = 0.35
    arch: str = "imagenet"
    resolution: int = 32
    epochs: int = 15
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.01
    weight_decay: float = 4e-5
    limit: int | None = None
    val_fraction: float = 0.0
    backend: str = "fast"
    threshold: float = 0.1

    def validate(self) -> "AblationSettings":
        unknown = [v for v in self.variants if v not in VARIANTS]
        if not self.variants or unknown:
            raise ValueError(f"--variants: expected some of {', '.join(VARIANTS)}, got {self.variants}")
        if len(set(self.variants)) != len(self.variants):
            raise ValueError(f"--variants: each variant once, got {self.variants}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ValueError(f"--seeds: expected distinct non-negative integers, got {self.seeds}")
        if self.backend not in ("fast", "reference"):
            raise ValueError(f"--backend: expected fast or reference, got {self.backend!r}")
        self.train_config(self.seeds[0])            # the trainer validates the rest, with its own messages
        return self

    def train_config(self, seed: int):
        """The :class:`~numpymnv2.train.config.TrainConfig` of one run."""
        from numpymnv2.train.config import TrainConfig
        return TrainConfig(dataset=self.dataset, data_dir=self.data_dir, width=self.width, arch=self.arch,
                           resolution=self.resolution, epochs=self.epochs, batch_size=self.batch_size,
                           optimizer=self.optimizer, lr=self.lr, weight_decay=self.weight_decay, limit=self.limit,
                           val_fraction=self.val_fraction, seed=seed, warmup_epochs=1, label_smoothing=0.0,
                           precise_bn=0)


def train_variant(variant: str, seed: int, settings: AblationSettings, out_dir=None, log=None) -> dict:
    """Train one variant with one seed through the trainer; return its history, final model's sparsity and time.

    Parameters
    ----------
    variant : str
        A key of :data:`VARIANTS`.
    seed : int
    settings : AblationSettings
    out_dir : str or Path, optional
        The run's folder (checkpoints, metrics); nothing is written without it.
    log : callable, optional
        Receives the trainer's one line per epoch.

    Returns
    -------
    dict
        ``variant``, ``seed``, ``history`` (the trainer's rows), ``final_val_acc``, ``best_val_acc``,
        ``final_train_loss``, ``chance_acc`` (the validation accuracy of always answering the most frequent
        class), ``sparsity`` (:meth:`SparsityReport.to_dict` without the norms), ``checkpoint`` (the path of
        ``last.npz``; :func:`run_ablation` makes it relative to its ``out``), ``time_s``.
    """
    from numpymnv2.backend import use_backend
    from numpymnv2.experiments.sparsity import depthwise_sparsity
    from numpymnv2.train.config import (build_model, build_optimizer, build_schedule, load_run_data,
                                        make_loaders, make_preprocess, model_spec, run_record, split_record)
    from numpymnv2.train.trainer import NonFiniteLossError, Trainer

    switches, _ = VARIANTS[variant]
    cfg = settings.train_config(seed)
    run = load_run_data(cfg)
    train, val = run.train, run.val
    preprocess = make_preprocess(cfg, train)
    spec = {**model_spec(cfg, train.num_classes), **switches}     # the checkpoint rebuilds the ablated network
    train_loader, val_loader = make_loaders(cfg, preprocess, train, val)
    model = build_model(spec)
    optimizer = build_optimizer(cfg, model)
    schedule = build_schedule(cfg, optimizer, len(train_loader))
    config = run_record(cfg, spec, preprocess, run)
    config["ablation"] = {"variant": variant, **switches}
    trainer = Trainer(model, optimizer, train_loader, val_loader, epochs=cfg.epochs, schedule=schedule,
                      out_dir=out_dir, config=config, label_smoothing=cfg.label_smoothing,
                      split=split_record(run), progress=False, log=log or (lambda message: None))
    t0 = time.perf_counter()
    with use_backend(settings.backend):
        try:
            result = trainer.fit()
        except NonFiniteLossError as exc:
            raise RuntimeError(f"the {variant} run with seed {seed} diverged ({exc}); try a lower --lr") from None
    elapsed = time.perf_counter() - t0
    if result.status != "finished":
        raise RuntimeError(f"ablate: the {variant} run with seed {seed} was interrupted")
    sparsity = depthwise_sparsity(model, threshold=settings.threshold).to_dict()
    for entry in sparsity["layers"]:           # per-kernel norms stay in the checkpoints, not in the JSON
        del entry["norms"], entry["folded_norms"]
    last = result.history[-1]
    counts = np.bincount(np.asarray(val.labels, dtype=np.int64), minlength=val.num_classes)
    return {"variant": variant, "seed": int(seed), "history": result.history,
            "chance_acc": float(counts.max() / counts.sum()),
            "final_val_acc": last["val_acc"], "best_val_acc": result.best["val_acc"] if result.best else None,
            "final_train_loss": last["train_loss"], "sparsity": sparsity,
            "checkpoint": None if result.last_checkpoint is None else str(result.last_checkpoint),
            "time_s": round(elapsed, 2)}


def _worker(variant: str, seed: int, settings: AblationSettings, out_dir, verbose: bool) -> dict:
    tag = f"[{variant} seed {seed}]"
    log = (lambda message: print(f"{tag} {message}", flush=True)) if verbose else None
    return train_variant(variant, seed, settings, out_dir, log)


@contextlib.contextmanager
def _single_threaded_children():
    """Worker processes start with one BLAS/OpenMP/Numba thread each: ``jobs`` of them share the cores evenly,
    and a run computes the same numbers whichever worker runs it and however many there are."""
    saved = {k: os.environ.get(k) for k in _THREAD_VARS}
    os.environ.update({k: "1" for k in _THREAD_VARS})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_ablation(settings: AblationSettings, out=None, jobs: int = 2, verbose: bool = False,
                 say=print) -> dict:
    """Train every variant with every seed (``jobs`` at a time, each in its own single-threaded process).

    Returns the content of ``ablation.json``: ``settings``, ``runs`` (one :func:`train_variant` result each, in
    variant then seed order) and ``summary`` (:func:`summarize`).
    """
    import multiprocessing

    settings.validate()
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"--jobs: expected a positive integer, got {jobs!r}")
    out = None if out is None else Path(out)
    tasks = [(v, s) for v in settings.variants for s in settings.seeds]
    results = {}
    t0 = time.perf_counter()
    with _single_threaded_children(), ProcessPoolExecutor(
            max_workers=min(jobs, len(tasks)), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_worker, v, s, settings,
                               None if out is None else out / "runs" / v / f"seed{s}", verbose): (v, s)
                   for v, s in tasks}
        pending = dict(futures)
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                v, s = pending.pop(future)
                result = future.result()
                if out is not None and result["checkpoint"]:     # relative to --out, so the folder can move
                    result["checkpoint"] = Path(result["checkpoint"]).relative_to(out).as_posix()
                results[(v, s)] = result
                say(f"{len(results)}/{len(tasks)} {v} seed {s}: final validation accuracy "
                    f"{100 * result['final_val_acc']:.2f}%, depthwise kernels near zero "
                    f"{100 * result['sparsity']['fraction']:.1f}% ({result['time_s']:.0f} s; "
                    f"{time.perf_counter() - t0:.0f} s elapsed)")
    runs = [results[task] for task in tasks]
    warning = chance_warning(runs, settings)
    if warning:
        say(f"warning: {warning}")
    return {"experiment": "ablate",
            "paper": "Sandler et al. 2018, MobileNetV2, arXiv:1801.04381, Section 6.4, Figure 6",
            "settings": asdict(settings), "variants": {v: {**VARIANTS[v][0], "label": VARIANTS[v][1]}
                                                       for v in settings.variants},
            "runs": runs, "summary": summarize(runs, settings.variants),
            "warnings": [warning] if warning else [],
            "wall_time_s": round(time.perf_counter() - t0, 1)}


def at_chance(run: dict) -> bool:
    """Whether a run learned nothing measurable: its best validation accuracy is within a tenth of the way from
    chance (``chance_acc``, always answering the most frequent class) to 100%."""
    chance = run.get("chance_acc")
    best = run.get("best_val_acc")
    if chance is None or best is None:
        return False
    return best <= chance + (1.0 - chance) / 10


def chance_warning(runs: list, settings: "AblationSettings") -> str | None:
    """A message when every run ended at chance (:func:`at_chance`): the budget was too small for the
    comparison to mean anything; None otherwise."""
    if not runs or not all(at_chance(r) for r in runs):
        return None
    chance = max(r["chance_acc"] for r in runs)
    best = max(r["best_val_acc"] for r in runs)
    return (f"every run ended at chance accuracy (best validation accuracy {100 * best:.1f}%, always answering "
            f"the most frequent class scores {100 * chance:.1f}%): the budget is too small to compare the variants "
            f"(--epochs {settings.epochs}, --limit {settings.limit}, --lr {settings.lr:g}); train longer, on more "
            f"images, or with another --lr")


def _mean_std(values) -> dict:
    a = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if a.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0, "n": int(a.size)}


def summarize(runs: list, variants) -> dict:
    """Per variant: mean and sample std over seeds of each result, and the paired difference to the paper's block.

    The paired difference of a variant is computed seed by seed, ``acc(variant, seed) - acc(paper, seed)``,
    over the seeds both have: identical seeds remove the part of the spread that comes from the initial weights
    and the data order.
    """
    by = {(r["variant"], r["seed"]): r for r in runs}
    summary = {}
    for v in variants:
        rs = [r for r in runs if r["variant"] == v]
        entry = {"label": VARIANTS[v][1], "seeds": [r["seed"] for r in rs],
                 "final_val_acc": _mean_std(r["final_val_acc"] for r in rs),
                 "best_val_acc": _mean_std(r["best_val_acc"] for r in rs),
                 "final_train_loss": _mean_std(r["final_train_loss"] for r in rs),
                 "sparsity": _mean_std(r["sparsity"]["fraction"] for r in rs),
                 "folded_sparsity": _mean_std(r["sparsity"]["folded_fraction"] for r in rs),
                 "dead_channels": _mean_std(r["sparsity"]["dead_fraction"] for r in rs),
                 "time_s": _mean_std(r["time_s"] for r in rs)}
        if v != BASELINE and BASELINE in variants:
            diffs = [r["final_val_acc"] - by[(BASELINE, r["seed"])]["final_val_acc"] for r in rs
                     if (BASELINE, r["seed"]) in by]
            entry["paired_diff_val_acc"] = _mean_std(diffs)
            entry["paired_wins_losses_ties"] = [int(np.sum(np.asarray(diffs) > 0)), int(np.sum(np.asarray(diffs) < 0)),
                                                int(np.sum(np.asarray(diffs) == 0))]
        summary[v] = entry
    return summary


def _pm(stat: dict, scale: float = 100.0, digits: int = 2, signed: bool = False) -> str:
    if stat is None or stat["mean"] is None:
        return "-"
    sign = "+" if signed else ""
    return f"{scale * stat['mean']:{sign}.{digits}f} ± {scale * stat['std']:.{digits}f}"


def format_table(result: dict) -> str:
    """The results as a Markdown table (mean ± sample std over seeds), with a line on the setup."""
    s = result["settings"]
    n_seeds = len(s["seeds"])
    lines = [f"MobileNetV2 width {s['width']:g} ({s['arch']} strides) on {s['dataset']} at {s['resolution']}x"
             f"{s['resolution']}, {s['epochs']} epochs, batch {s['batch_size']}, {s['optimizer']} lr {s['lr']:g}, "
             f"{n_seeds} seed{'s' if n_seeds != 1 else ''} ({', '.join(map(str, s['seeds']))}); mean ± std over "
             f"seeds (ddof=1); accuracies in %",
             "",
             "| variant | final val acc | best val acc | Δ final vs paper (paired) | wins/losses/ties | "
             "final train loss | depthwise near 0 (raw) | (BN-folded) | dead channels |",
             "|---|---|---|---|---|---|---|---|---|"]
    for v, e in result["summary"].items():
        diff = _pm(e.get("paired_diff_val_acc"), signed=True)
        wlt = "/".join(map(str, e["paired_wins_losses_ties"])) if "paired_wins_losses_ties" in e else "-"
        lines.append(f"| {e['label']} | {_pm(e['final_val_acc'])} | {_pm(e['best_val_acc'])} | {diff} | {wlt} | "
                     f"{_pm(e['final_train_loss'], 1.0, 4)} | {_pm(e['sparsity'], 100.0, 1)} | "
                     f"{_pm(e['folded_sparsity'], 100.0, 1)} | {_pm(e.get('dead_channels'), 100.0, 2)} |")
    lines.append("")
    lines += [f"**warning**: {w}" for w in result.get("warnings", [])]
    lines.append(f"near 0: % of depthwise kernels with norm < {s['threshold']:g} x the largest of their layer; "
                 f"BN-folded: after folding in the BatchNorm that follows; dead: % of depthwise channels whose "
                 f"output was constant (numpymnv2 sparsity)")
    return "\n".join(lines)


def ablation_figure(result: dict):
    """Validation accuracy (top) and training loss (bottom, log axis) against epoch, one column per comparison
    of Figure 6, as a matplotlib ``Figure`` (drawn with Agg, not shown).

    Each line is the mean over seeds; the band spans the lowest to the highest seed. Epochs are ticked at
    whole numbers; the loss axis is labelled with plain numbers (0.1, 0.2, 0.5, ...) rather than powers of 10.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from numpymnv2.train.metrics import readable_log_ticks

    variants = list(result["summary"])
    panels = [(title, [BASELINE, other]) for title, other in COMPARISONS
              if BASELINE in variants and other in variants]
    if not panels:
        panels = [("variants", variants)]
    fig = Figure(figsize=(5.2 * len(panels), 6.4))
    axes = fig.subplots(2, len(panels), squeeze=False)
    for j, (title, shown) in enumerate(panels):
        losses = []
        for v in shown:
            rs = [r for r in result["runs"] if r["variant"] == v]
            epochs = [row["epoch"] for row in rs[0]["history"]]
            for i, (key, scale) in enumerate((("val_acc", 100.0), ("train_loss", 1.0))):
                curves = np.array([[scale * row[key] for row in r["history"]] for r in rs], dtype=np.float64)
                if key == "train_loss":
                    losses.append(curves)
                ax = axes[i, j]
                ax.plot(epochs, curves.mean(axis=0), color=COLOURS.get(v), marker="o", ms=2.5,
                        label=f"{VARIANTS[v][1]} (n={len(rs)})")
                if len(rs) > 1:
                    ax.fill_between(epochs, curves.min(axis=0), curves.max(axis=0), color=COLOURS.get(v), alpha=0.2)
        axes[0, j].set_title(title, fontsize=10)
        axes[0, j].set_ylabel("validation accuracy (%)", fontsize=8)
        loss_ax = axes[1, j]
        loss_ax.set_ylabel("training loss (log scale)", fontsize=8)
        loss_ax.set_yscale("log")
        readable_log_ticks(loss_ax, np.concatenate([c.ravel() for c in losses]))
        loss_ax.set_xlabel("epoch", fontsize=8)
        axes[0, j].legend(fontsize=7, loc="lower right")
        for ax in axes[:, j]:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    s = result["settings"]
    fig.suptitle(f"Paper Fig. 6 at CPU scale: MobileNetV2 width {s['width']:g} on {s['dataset']}, "
                 f"{s['epochs']} epochs, mean over seeds {s['seeds']} (band: min to max)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_curves(result: dict, path) -> Path:
    """Write :func:`ablation_figure` to ``path`` as a PNG (parent folders are created); return ``path``."""
    from numpymnv2._atomic import atomic_write_figure
    return atomic_write_figure(path, ablation_figure(result), dpi=110)


def write_outputs(result: dict, out) -> list[Path]:
    """Write ``ablation.json``, ``ablation.md``, ``ablation.png`` and ``sparsity.png`` into ``out``."""
    from numpymnv2._atomic import atomic_write_text
    from numpymnv2.experiments.sparsity import depthwise_sparsity, plot_sparsity

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "ablation.json"
    atomic_write_text(json_path, json.dumps(result, indent=2) + "\n")
    md_path = out / "ablation.md"
    atomic_write_text(md_path, format_table(result) + "\n")
    curves = plot_curves(result, out / "ablation.png")
    first_seed = result["settings"]["seeds"][0]
    reports = {VARIANTS[r["variant"]][1]: depthwise_sparsity(out / r["checkpoint"],
                                                             threshold=result["settings"]["threshold"])
               for r in result["runs"] if r["seed"] == first_seed and r["checkpoint"]}
    paths = [json_path, md_path, curves]
    if reports:
        paths.append(plot_sparsity(reports, out / "sparsity.png",
                                   title=f"Depthwise kernels near zero after training (seed {first_seed}; norm < "
                                         f"{result['settings']['threshold']:g} x layer max)",
                                   colors={VARIANTS[v][1]: c for v, c in COLOURS.items()}))
    return paths


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``numpymnv2 ablate`` options to ``parser``."""
    from numpymnv2._argtypes import add_arch_argument, path
    d = AblationSettings()
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=d.variants, metavar="V",
                        help=f"which blocks to train: {', '.join(VARIANTS)} (default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=d.seeds, metavar="S",
                        help=f"seeds, each run by every variant (default: {' '.join(map(str, d.seeds))})")
    parser.add_argument("--dataset", default=d.dataset, help=f"as numpymnv2 train (default: {d.dataset}, built in)")
    parser.add_argument("--data-dir", default=None, metavar="DIR", type=path, help="as numpymnv2 train")
    parser.add_argument("--width", type=float, default=d.width, help=f"width multiplier (default: {d.width})")
    add_arch_argument(parser, d.arch, f"{d.arch}, the fastest to train; the published ablation figures use it")
    parser.add_argument("--resolution", type=int, default=d.resolution,
                        help=f"images are resized to this many pixels square, as numpymnv2 train "
                             f"(default: {d.resolution})")
    parser.add_argument("--epochs", type=int, default=d.epochs, help=f"per run (default: {d.epochs})")
    parser.add_argument("--batch-size", type=int, default=d.batch_size,
                        help=f"images per optimizer step (default: {d.batch_size})")
    parser.add_argument("--optimizer", default=d.optimizer,
                        help=f"as numpymnv2 train: sgd, nesterov, rmsprop, adam, adamw (default: {d.optimizer})")
    parser.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default: {d.lr})")
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay,
                        help=f"L2 decay of the weights, as numpymnv2 train (default: {d.weight_decay})")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="at most N training and N validation images, for a quick trial")
    parser.add_argument("--val-fraction", type=float, default=d.val_fraction, metavar="F",
                        help="as numpymnv2 train, but the default is 0: the runs validate on the test split, as the "
                             "published ablation tables did (nothing is tuned on it; the 'best' column reads the "
                             f"best epoch off it) (default: {d.val_fraction})")
    parser.add_argument("--threshold", type=float, default=d.threshold,
                        help=f"relative norm below which a depthwise kernel counts as near zero (default: "
                             f"{d.threshold})")
    parser.add_argument("--backend", choices=("fast", "reference"), default=d.backend,
                        help=f"the Numba kernels or the readable NumPy code (default: {d.backend})")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="runs trained at once, each in its own single-threaded process (default: "
                             "min(2, cores))")
    parser.add_argument("--verbose", action="store_true", help="one line per epoch of every run")
    parser.add_argument("--out", default="runs/ablate", type=path,
                        help="folder for ablation.json/.md/.png, sparsity.png and the runs (default: runs/ablate)")


def run(args: argparse.Namespace) -> int:
    """Train all variants and seeds, print the table and write the outputs."""
    settings = AblationSettings(variants=list(args.variants), seeds=list(args.seeds), dataset=args.dataset,
                                data_dir=args.data_dir, width=args.width, arch=args.arch,
                                resolution=args.resolution, epochs=args.epochs, batch_size=args.batch_size,
                                optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
                                limit=args.limit, val_fraction=args.val_fraction, backend=args.backend,
                                threshold=args.threshold).validate()
    n = len(settings.variants) * len(settings.seeds)
    print(f"ablate: {n} runs ({', '.join(settings.variants)} x seeds {settings.seeds}), {settings.epochs} epochs "
          f"each, {args.jobs} at a time; writing to {args.out}", flush=True)
    try:
        result = run_ablation(settings, out=args.out, jobs=args.jobs, verbose=args.verbose,
                              say=lambda m: print(m, flush=True))
    except RuntimeError as exc:
        print(f"numpymnv2 ablate: error: {exc}", file=sys.stderr)
        return 1
    print(format_table(result))
    for path in write_outputs(result, args.out):
        print(f"wrote {path}")
    return 0
