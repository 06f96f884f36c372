"""Training: the loop, checkpoints, metrics, and the ``train`` / ``evaluate`` / ``predict`` commands.

>>> from numpymnv2.train import Trainer, load_checkpoint
>>> trainer = Trainer(model, optimizer, train_loader, val_loader, epochs=30, schedule=schedule, out_dir="runs/x")
>>> result = trainer.fit()                  # Ctrl-C saves runs/x/last.npz and returns
>>> trainer.restore(load_checkpoint("runs/x/last.npz")).fit()     # continues bit for bit

:class:`TrainConfig` with :func:`numpymnv2.train.cli.build_trainer` builds the whole run (data, preprocessing,
MobileNetV2, optimizer, schedule) the way ``numpymnv2 train`` does.
"""
from numpymnv2._atomic import atomic_write, atomic_write_text
from numpymnv2.train.checkpoint import (Checkpoint, CheckpointError, load_checkpoint, load_model_state,
                                        save_checkpoint)
from numpymnv2.train.config import TrainConfig
from numpymnv2.train.inference import load_trained_model, predict_proba, read_images, save_model_checkpoint
from numpymnv2.train.metrics import confusion_matrix, per_class_accuracy, plot_curves, write_metrics
from numpymnv2.train.trainer import FitResult, NonFiniteLossError, Trainer, evaluate_model, top_k_accuracy

__all__ = ["Checkpoint", "CheckpointError", "FitResult", "NonFiniteLossError", "TrainConfig", "Trainer",
           "atomic_write", "atomic_write_text", "confusion_matrix", "evaluate_model", "load_checkpoint",
           "load_model_state", "load_trained_model", "per_class_accuracy", "plot_curves", "predict_proba",
           "read_images", "save_checkpoint", "save_model_checkpoint", "top_k_accuracy", "write_metrics"]
