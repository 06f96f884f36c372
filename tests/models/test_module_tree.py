"""The tree that prints is the tree that runs: every module with state runs in both directions, each module's own
mode is honoured (freezing BatchNorm the torchvision way), children can be indexed and replaced, and a failed
forward pass leaves the model's state as it was."""
import numpy as np
import pytest

import numpymnv2 as mn
from numpymnv2._checks import NonFiniteError
from numpymnv2.nn import BatchNorm2d, BatchNormAct2d, DepthwiseConv2d, Linear, PointwiseConv2d

RNG = np.random.default_rng(0)


def small_model(**kwargs):
    kwargs = dict(num_classes=5, width_mult=0.35, seed=0) | kwargs
    return mn.MobileNetV2(**kwargs)


def step(model, x, labels=None):
    logits = model(x)
    labels = np.arange(len(x)) % logits.shape[1] if labels is None else labels
    _, dlogits = mn.softmax_cross_entropy(logits, labels)
    return model.backward(dlogits)


def buffers(model):
    return {name: np.array(b, copy=True) for name, b in model.named_buffers()}


def images(n=2, side=32, dtype=np.float32):
    return RNG.standard_normal((n, side, side, 3)).astype(dtype)


def record_calls(model):
    """Wrap every module's forward and backward to record the qualified names of the modules that ran."""
    ran = {"forward": set(), "backward": set()}
    for name, m in model.named_modules():
        for direction in ran:
            def wrapped(*args, _f=getattr(m, direction), _name=name, _dir=direction, **kwargs):
                ran[_dir].add(_name)
                return _f(*args, **kwargs)
            setattr(m, direction, wrapped)
    return ran


@pytest.mark.parametrize("backend", ["fast", "reference"])
@pytest.mark.parametrize("variant", [{}, {"linear_bottleneck": False}, {"use_shortcut": False}])
def test_every_module_with_parameters_or_buffers_runs_both_ways(backend, variant):
    model = small_model(**variant).train()
    ran = record_calls(model)
    with mn.use_backend(backend):
        step(model, images())
    with_state = {name for name, m in model.named_modules() if m._parameters or m._buffers}
    assert len(with_state) == 52 + 52 + 1           # 52 convolutions, 52 BatchNorms, the classifier
    assert with_state <= ran["forward"], sorted(with_state - ran["forward"])
    assert with_state <= ran["backward"], sorted(with_state - ran["backward"])
    # every leaf of the tree runs (activations and pooling too), and nothing runs that the tree does not show
    leaves = {name for name, m in model.named_modules() if not m._modules}
    assert leaves <= ran["forward"] and leaves <= ran["backward"]
    assert ran["forward"] == ran["backward"] <= {name for name, _ in model.named_modules()}


def test_freezing_batchnorm_the_torchvision_way_freezes_all_of_them():
    model = small_model().train()
    bns = [m for m in model.modules() if isinstance(m, BatchNorm2d)]
    assert len(bns) == 52
    for m in bns:
        m.eval()
    before = buffers(model)
    dropout_masks = []
    for _ in range(2):
        step(model, images())
        dropout_masks.append(model.classifier[0]._cache.mask)
    after = buffers(model)
    changed = [name for name in before if not np.array_equal(before[name], after[name])]
    assert changed == []
    # the rest of the model is still in training mode: dropout draws a mask each step
    assert all(mask is not None for mask in dropout_masks)
    assert not np.array_equal(dropout_masks[0], dropout_masks[1])


def test_each_batchnorm_follows_its_own_mode():
    model = small_model().train()
    bn_names = [name for name, m in model.named_modules() if isinstance(m, BatchNorm2d)]
    frozen = set(RNG.choice(bn_names, size=20, replace=False))
    modules = dict(model.named_modules())
    for name in frozen:
        modules[name].eval()
    before = buffers(model)
    step(model, images())
    after = buffers(model)
    for name in bn_names:
        moved = int(after[f"{name}.num_batches_tracked"]) - int(before[f"{name}.num_batches_tracked"])
        assert moved == (0 if name in frozen else 1), name
        same_mean = np.array_equal(after[f"{name}.running_mean"], before[f"{name}.running_mean"])
        assert same_mean == (name in frozen), name
    # and the reverse: a model in evaluation mode with one BatchNorm in training mode updates only that one
    model.eval()
    modules["features.3.conv.3"].train()
    before = buffers(model)
    model(images())
    after = buffers(model)
    changed = {name.rsplit(".", 1)[0] for name in before if not np.array_equal(before[name], after[name])}
    assert changed == {"features.3.conv.3"}


def test_dropout_follows_its_own_mode():
    model = small_model(dropout=0.5).eval()
    x = images()
    reference = model(x)
    model.classifier[0].train()
    assert not np.allclose(model(x), reference)                 # dropout active, BatchNorm still frozen
    model.classifier[0].eval()
    np.testing.assert_array_equal(model(x), reference)


def test_children_index_and_replace_like_torchvision():
    model = small_model()
    assert isinstance(model.features[3].conv[1][0], DepthwiseConv2d)
    assert model.features[3].conv[1][0].name == "features.3.conv.1.0"
    assert model.features[-1] is model.features[len(model.features) - 1]
    assert [type(m) for m in model.features[3].conv[2:]] == [PointwiseConv2d, BatchNorm2d]
    with pytest.raises(IndexError, match=r"Sequential\(features\): index 40 is out of range for 19 children"):
        model.features[40]
    with pytest.raises(TypeError, match="indices must be integers or slices, got str"):
        model.features["3"]
    # replacing the classifier: the new layer is named, keeps its place and its keys
    model.classifier[1] = Linear(model.last_channel, 7, rng=1)
    assert model.classifier[1].name == "classifier.1"
    assert list(model.state_dict())[-2:] == ["classifier.1.weight", "classifier.1.bias"]
    assert model.eval()(images()).shape == (2, 7)
    with pytest.raises(ValueError, match=r"Linear\(classifier\.1\): expected a gradient of shape \(2, 7\)"):
        model.backward(np.zeros((2, 5), np.float32))


def test_replaced_batchnorm_runs_where_the_old_one_did():
    model = small_model().train()
    block = model.features[3]
    assert block.use_res_connect
    old = block.conv[3]
    new = BatchNormAct2d(old.num_features, "relu6")      # a different norm layer: it now runs, with the shortcut
    block.conv[3] = new
    assert new.name == "features.3.conv.3" and block.conv[3] is new
    ran = record_calls(model)
    step(model, images())
    assert "features.3.conv.3" in ran["forward"] and int(new.num_batches_tracked) == 1
    assert int(old.num_batches_tracked) == 0
    assert "activation=relu6" in repr(block)


def test_conv_bn_act_is_a_sequential_of_what_runs():
    model = small_model()
    stem = model.features[0]
    assert len(stem) == 2 and stem.conv is stem[0] and stem.bn is stem[1] and stem.activation == "relu6"
    assert repr(stem) == ("ConvBNAct(\n  (0): Conv2d(3, 16, kernel_size=3, stride=2, padding=1)\n"
                          "  (1): BatchNormAct2d(16, eps=1e-05, momentum=0.1, activation=relu6)\n)")
    stem[1] = BatchNorm2d(16)                              # a plain BatchNorm: no activation any more
    assert stem.activation is None
    assert (model.features[0](images()) < 0).any()         # and nothing clips the output at 0 any more


def test_repr_shows_the_stem_stride():
    assert "stem_stride=2" in repr(small_model()).splitlines()[0]
    assert "stem_stride=1" in repr(mn.MobileNetV2.cifar(width_mult=0.35)).splitlines()[0]


def test_a_failed_forward_leaves_every_buffer_as_it_was():
    # ImageNet strides on 32x32 end at 1x1: one image gives the last BatchNorms a single value per channel,
    # which training mode rejects only after dozens of earlier BatchNorms have updated their statistics
    model = small_model().train()
    before = buffers(model)
    with pytest.raises(ValueError, match=r"\(features\.\d+(\.[\d.a-z]+)?\): training mode needs more than one "
                                         r"value per channel"):
        model(images(n=1))
    after = buffers(model)
    assert [n for n in before if not np.array_equal(before[n], after[n])] == []
    step(model, images(n=2))                             # the model still trains
    assert int(model.features[0][1].num_batches_tracked) == 1


@pytest.mark.parametrize("backend", ["fast", "reference"])
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning", "ignore:invalid value encountered:RuntimeWarning")
def test_non_finite_batch_statistics_raise_and_change_nothing(backend):
    model = small_model().train()
    before = buffers(model)
    x = np.full((2, 32, 32, 3), 1e38, np.float32)        # finite, but its statistics overflow float32
    with mn.use_backend(backend), pytest.raises(NonFiniteError, match=r"BatchNormAct2d\(features\.0\.1\): the "
                                                                      r"batch statistics of this input are not "
                                                                      r"finite"):
        model(x)
    after = buffers(model)
    assert [n for n in before if not np.array_equal(before[n], after[n])] == []
    assert issubclass(NonFiniteError, ValueError)
    # a batch that goes bad deep inside the network (a huge weight) is caught there, and again nothing changes
    model.features[5].conv[1][0].weight.data[...] = 3e38
    with mn.use_backend(backend), pytest.raises(NonFiniteError, match=r"features\.5\.conv\.1\.1"):
        model(images())
    assert [n for n in before if not np.array_equal(before[n], buffers(model)[n])] == []


def test_non_finite_gradient_is_rejected_at_the_entry_point():
    model = small_model().train()
    logits = model(images())
    dlogits = np.zeros_like(logits)
    dlogits[0, 1] = np.nan
    with pytest.raises(ValueError, match=r"MobileNetV2: the gradient contains 1 NaN or infinite value\(s\)"):
        model.backward(dlogits)
    assert all(not p.grad.any() for p in model.parameters())
    block = model.features[3]
    with pytest.raises(ValueError, match=r"InvertedResidual\(features\.3\): the gradient contains"):
        block.backward(np.full((2, 8, 8, 8), np.inf, np.float32))


def test_to_dtype_converts_in_place_and_gradchecks():
    model = small_model(num_classes=3)
    ids = {name: id(p) for name, p in model.named_parameters()}
    assert model.double() is model
    assert {name: id(p) for name, p in model.named_parameters()} == ids      # the same Parameter objects
    assert all(p.data.dtype == p.grad.dtype == np.float64 for p in model.parameters())
    assert all(b.dtype == (np.int64 if name.endswith("num_batches_tracked") else np.float64)
               for name, b in model.named_buffers())
    assert model.config["dtype"] == "float64"
    model.eval()
    out = model(images(dtype=np.float64))
    assert out.dtype == np.float64
    # layers without a kink (a ReLU6 input within eps of 0 or 6 would make finite differences meaningless)
    for layer, shape in [(model.features[2].conv[2], (2, 4, 4, model.features[2].hidden_dim)),
                         (model.features[2].conv[3].train(), (2, 4, 4, model.features[2].oup)),
                         (model.classifier[1], (3, model.last_channel))]:
        result = mn.gradcheck(layer, RNG.uniform(-1, 1, shape), max_coords=4, seed=0)
        assert result.passed, str(result)
    model.eval()
    model.float()
    assert model(images()).dtype == np.float32 and model.config["dtype"] == "float32"
    with pytest.raises(TypeError, match="dtype must be 'float32' or 'float64'"):
        model.to("float16")


def test_training_modes_round_trip_through_a_blanket_eval():
    model = small_model().train()
    model.features[1].eval()
    modes = model.training_modes()
    assert modes[""] and not modes["features.1"] and not modes["features.1.conv.0.0"] and modes["features.2"]
    model.eval()
    assert not any(model.training_modes().values())
    assert model.set_training_modes(modes) is model and model.training_modes() == modes
