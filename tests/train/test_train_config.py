"""Run configuration: validation, data splits, preprocessing records, optimizers and schedules."""
import numpy as np
import pytest

from numpymnv2 import optim
from numpymnv2.data import default_transform, load_dataset
from numpymnv2.train.config import (OPTIMIZERS, SCHEDULES, TrainConfig, build_model, build_optimizer,
                                    build_schedule, load_run_data, make_loaders, make_preprocess, make_transform,
                                    model_spec, set_bn_momentum, stratified_split, train_drop_last)


@pytest.mark.parametrize("options, message", [
    ({"width": 0}, "--width must be a positive number"),
    ({"resolution": 16}, "--resolution must be an integer >= 32"),
    ({"batch_size": 1}, "--batch-size must be an integer >= 2"),
    ({"optimizer": "lbfgs"}, "--optimizer must be one of sgd, nesterov"),
    ({"schedule": "linear"}, "--schedule must be one of"),
    ({"dataset": "imagenet"}, "--dataset must be one of digits"),
    ({"val_fraction": 1.0}, "--val-fraction must be in [0, 1)"),
    ({"epochs": 2.5}, "--epochs must be a positive integer"),
    ({"bn_momentum": 0}, "--bn-momentum must be in (0, 1]"),
    ({"precise_bn": -1}, "--precise-bn must be an integer >= 0"),
])
def test_invalid_options_are_named(options, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        TrainConfig(**options)


def test_config_round_trips_through_a_dict():
    cfg = TrainConfig(width=0.5, limit=10)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown training options in the checkpoint: colour"):
        TrainConfig.from_dict({**cfg.to_dict(), "colour": "red"})


def test_stratified_split_holds_out_a_fraction_of_every_class():
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    keep, held = stratified_split(labels, 0.1, seed=0)
    assert np.bincount(labels[held]).tolist() == [1, 2, 3, 4]
    assert sorted(np.concatenate([keep, held]).tolist()) == list(range(100))


def test_val_fraction_and_limit():
    run = load_run_data(TrainConfig(val_fraction=0.2))
    assert len(run.train) + len(run.val) == 1497 and run.val_source == "0.2 of the train split, held out"
    assert run.val_split == "train" and run.split_sizes == {"train": 1497}
    run = load_run_data(TrainConfig(limit=50))
    assert (len(run.train), len(run.val)) == (50, 50) and set(run.val_rows) <= set(range(1497))
    run = load_run_data(TrainConfig(val_fraction=0, limit=50))
    assert run.val_split == "test" and run.split_sizes == {"train": 1497, "test": 300}
    np.testing.assert_array_equal(run.val.images, load_dataset("digits", split="test").images[run.val_rows])


def test_preprocess_record_matches_the_data_modules_evaluation_transform():
    train = load_dataset("digits", split="train")
    test = load_dataset("digits", split="test")
    pre = make_preprocess(TrainConfig(), train)
    assert pre["image_size"] == [8, 8] and pre["channels"] == 1 and len(pre["mean"]) == 3
    assert pre["crop_padding"] == 4 and pre["flip"] is False
    ours = make_transform(pre, train=False)(test.images[:20], None)
    theirs = default_transform(train, resolution=32, train=False)(test.images[:20], None)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)
    assert ours.shape == (20, 32, 32, 3) and ours.dtype == np.float32
    rng = np.random.default_rng(0)
    augmented = make_transform(pre, train=True)(test.images[:20], rng)
    assert augmented.shape == ours.shape and not np.array_equal(augmented, ours)


def test_drop_last_only_for_a_single_leftover_image():
    assert train_drop_last(65, 64) and not train_drop_last(66, 64) and not train_drop_last(64, 64)


@pytest.mark.parametrize("arch, stem, last_side", [("imagenet", 2, 1), ("small", 1, 2), ("cifar", 1, 4)])
def test_arch_strides(arch, stem, last_side):
    spec = model_spec(TrainConfig(arch=arch, width=0.1), num_classes=3)
    assert spec["stem_stride"] == stem
    model = build_model(spec).eval()
    features = model.features(np.zeros((1, 32, 32, 3), np.float32))
    assert features.shape[1:3] == (last_side, last_side)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_builds_and_skips_decay_on_bn_and_bias(name):
    cfg = TrainConfig(optimizer=name, width=0.1, weight_decay=1e-3)
    model = build_model(model_spec(cfg, 10))
    opt = build_optimizer(cfg, model)
    decays = {g["weight_decay"] for g in opt.param_groups}
    assert decays == {1e-3, 0.0}
    assert all(p.data.ndim <= 1 for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"])


@pytest.mark.parametrize("name", SCHEDULES)
def test_every_schedule_warms_up_then_follows_its_shape(name):
    cfg = TrainConfig(schedule=name, epochs=6, lr=0.1, warmup_epochs=1, width=0.1)
    model = build_model(model_spec(cfg, 10))
    opt = build_optimizer(cfg, model)
    sched = build_schedule(cfg, opt, steps_per_epoch=10)
    lrs = []
    for _ in range(60):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    assert lrs[0] == pytest.approx(0.01) and lrs[10] == pytest.approx(0.1)
    assert lrs[5] == pytest.approx(0.01 + 0.09 * 5 / 10)
    end = {"cosine": 0.1 * (1 + np.cos(np.pi * 49 / 50)) / 2, "step": 0.001, "exponential": 0.1 * 0.98 ** 4.9,
           "constant": 0.1}[name]
    assert lrs[-1] == pytest.approx(end)
    assert isinstance(sched, optim.LRScheduler)


def test_the_default_recipe_warms_up_linearly_then_anneals_on_a_cosine():
    """The learning rate of every step of a default run (numpymnv2 train without options), from the schedule
    the trainer builds: linear from 0.1 x lr to lr over the warm-up epochs, then a cosine down to 0."""
    cfg = TrainConfig()
    run = load_run_data(cfg)
    train_loader, _ = make_loaders(cfg, make_preprocess(cfg, run.train), run.train, run.val)
    steps = len(train_loader)
    assert steps == 22                                  # 1,348 training images in batches of 64
    opt = build_optimizer(cfg, build_model(model_spec(cfg, 10)))
    sched = build_schedule(cfg, opt, steps)
    lrs = []
    for _ in range(cfg.epochs * steps):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    lrs = np.array(lrs)
    W, N = cfg.warmup_epochs * steps, cfg.epochs * steps
    assert W > 0
    np.testing.assert_allclose(lrs[:W + 1], cfg.lr * (0.1 + 0.9 * np.arange(W + 1) / W), rtol=1e-12)
    t = np.arange(N - W)
    np.testing.assert_allclose(lrs[W:], cfg.lr * (1 + np.cos(np.pi * t / (N - W))) / 2, rtol=1e-12)
    assert lrs.argmax() == W and lrs[-1] < 0.001 * cfg.lr


def test_set_bn_momentum_reaches_every_batchnorm():
    from numpymnv2.nn.layers import BatchNorm2d
    model = set_bn_momentum(build_model(model_spec(TrainConfig(width=0.1), 10)), 0.25)
    momenta = [m.momentum for _, m in model.named_modules() if isinstance(m, BatchNorm2d)]
    assert len(momenta) > 30 and set(momenta) == {0.25}
