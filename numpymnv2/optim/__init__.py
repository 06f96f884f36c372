"""Optimizers and learning-rate schedules over :class:`~numpymnv2.nn.module.Parameter`.

Each optimizer's math is a small in-place function of arrays (``sgd_update``, ``rmsprop_update``,
``rmsprop_tf_update``, ``adam_update``) with its equations in the docstring; the classes own the state and loop
over the parameters. Schedules are closed-form functions of the step count. See ``optimizer.py`` and
``lr_scheduler.py`` for the conventions.

Typical use, the paper's recipe::

    from numpymnv2 import optim
    opt = optim.RMSprop(optim.param_groups(model.named_parameters(), weight_decay=4e-5), lr=0.045)
    sched = optim.ExponentialLR(opt, gamma=0.98)        # step once per epoch
"""
from numpymnv2.optim.adam import Adam, AdamW, adam_update
from numpymnv2.optim.lr_scheduler import (CosineAnnealingLR, ExponentialLR, LinearWarmup, LRScheduler,
                                          SequentialLR, StepLR, with_warmup)
from numpymnv2.optim.optimizer import Optimizer, param_groups
from numpymnv2.optim.rmsprop import RMSprop, rmsprop_tf_update, rmsprop_update
from numpymnv2.optim.sgd import SGD, sgd_update

__all__ = [
    "Optimizer", "SGD", "RMSprop", "Adam", "AdamW", "param_groups",
    "sgd_update", "rmsprop_update", "rmsprop_tf_update", "adam_update",
    "LRScheduler", "StepLR", "ExponentialLR", "CosineAnnealingLR", "LinearWarmup", "SequentialLR", "with_warmup",
]
