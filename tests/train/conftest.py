"""A tiny network on a slice of the built-in digits, so trainer tests take a fraction of a second per epoch."""
import numpy as np
import pytest

from numpymnv2 import nn, optim
from numpymnv2.data import DataLoader, default_transform, load_dataset
from numpymnv2.train.metrics import without_timing
from numpymnv2.train.trainer import Trainer


def tiny_model(seed: int = 0, width: int = 8, dropout: float = 0.2):
    """3x3 and 1x1 Conv-BN-ReLU6, global pooling, dropout and a classifier: every kind of state a run keeps
    (weights, BatchNorm buffers, a dropout generator)."""
    rng = np.random.default_rng(seed)
    model = nn.Sequential(nn.ConvBNAct(nn.Conv2d(3, width, 3, 2, 1, rng=rng), width),
                          nn.ConvBNAct(nn.PointwiseConv2d(width, 2 * width, rng=rng), 2 * width),
                          nn.GlobalAvgPool2d(),
                          nn.Dropout(dropout, rng=rng.spawn(1)[0]),
                          nn.Linear(2 * width, 10, rng=rng))
    return model.set_names()


@pytest.fixture(scope="session")
def digits_small():
    """200 training and 100 test digits at their native 8x8."""
    train = load_dataset("digits", split="train")
    test = load_dataset("digits", split="test")
    return train.subset(np.arange(200)), test.subset(np.arange(100))


@pytest.fixture
def make_trainer(digits_small):
    """``make_trainer(out_dir, epochs, schedule="constant"|"cosine", **trainer_kwargs) -> Trainer``, always the
    same initial weights and data for the same arguments."""
    train, test = digits_small

    def make(out_dir=None, epochs=2, schedule="constant", lr=0.05, batch_size=32, seed=0, **kwargs):
        model = tiny_model(seed)
        opt = optim.SGD(optim.param_groups(model.named_parameters(), weight_decay=1e-4), lr=lr, momentum=0.9)
        train_loader = DataLoader(train, batch_size, transform=default_transform(train, train=True), seed=seed)
        val_loader = DataLoader(test, 64, shuffle=False, transform=default_transform(train, train=False))
        steps = epochs * len(train_loader)
        sched = optim.CosineAnnealingLR(opt, T_max=steps) if schedule == "cosine" else None
        kwargs.setdefault("progress", False)
        kwargs.setdefault("log", lambda message: None)
        return Trainer(model, opt, train_loader, val_loader, epochs=epochs, schedule=sched, out_dir=out_dir,
                       config={"model": {"name": "tiny", "width": 8}}, **kwargs)

    return make


def _assert_same_run(a: Trainer, b: Trainer) -> None:
    """Bit-for-bit equality of everything two runs hold: weights and buffers, optimizer and schedule state,
    generators, position and metrics (wall-clock fields aside)."""
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k, strict=True)
    oa, ob = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert sorted(oa) == sorted(ob)
    for k in oa:
        np.testing.assert_array_equal(oa[k], ob[k], err_msg=k, strict=True)
    if a.schedule is not None:
        for k, v in a.schedule.state_dict().items():
            np.testing.assert_array_equal(v, b.schedule.state_dict()[k], err_msg=k)
    for name, gen in a.generators.items():
        assert gen.bit_generator.state == b.generators[name].bit_generator.state
    assert without_timing(a.history) == without_timing(b.history)
    assert a.best == b.best
    pa, pb = dict(a.position), dict(b.position)
    for p in (pa, pb):
        p.pop("elapsed_s")
        p["partial"] = {k: v for k, v in p["partial"].items() if k != "time_s"}
    assert pa == pb


@pytest.fixture
def assert_same_run():
    return _assert_same_run


@pytest.fixture
def make_tiny_model():
    return tiny_model
