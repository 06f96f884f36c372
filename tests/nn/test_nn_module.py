"""Module, Parameter and Sequential: registration, traversal, modes, gradients and state."""
import io

import numpy as np
import pytest

from numpymnv2.nn import (BatchNorm2d, Conv2d, ConvBNAct, DepthwiseConv2d, Dropout, GlobalAvgPool2d, Linear, Module,
                          Parameter, PointwiseConv2d, ReLU6, Sequential)
from strategies import check_grads


def small_net(dtype="float64", seed=0):
    """A miniature MobileNetV2 path: stem, depthwise, pointwise, BN, ReLU6, pooling, dropout, classifier."""
    rng = np.random.default_rng(seed)
    return Sequential(
        ConvBNAct(Conv2d(3, 4, 3, 2, 1, rng=rng, dtype=dtype), 4, "relu6"),
        ConvBNAct(DepthwiseConv2d(4, 3, 1, 1, rng=rng, dtype=dtype), 4, "relu6"),
        PointwiseConv2d(4, 6, rng=rng, dtype=dtype),
        BatchNorm2d(6, dtype=dtype),
        ReLU6(),
        GlobalAvgPool2d(),
        Dropout(0.2, rng=rng),
        Linear(6, 5, rng=rng, dtype=dtype),
    ).set_names()


def randomize(module, seed=1):
    """1-D parameters (BatchNorm weights and biases, the classifier bias) and BatchNorm statistics away from their
    initial values (1, 0, 0, 1), so the checks see every term."""
    rng = np.random.default_rng(seed)
    for name, p in module.named_parameters():
        p.data[...] = rng.uniform(0.5, 1.5, p.shape) if p.data.ndim == 1 else p.data
    for name, b in module.named_buffers():
        if name.endswith("running_mean"):
            b[...] = rng.uniform(-0.3, 0.3, b.shape)
        elif name.endswith("running_var"):
            b[...] = rng.uniform(0.5, 1.5, b.shape)
    return module


class TwoLayers(Module):
    def __init__(self):
        super().__init__()
        self.first = Linear(3, 4, rng=0, dtype="float64")
        self.scale = Parameter(np.ones(4))
        self.second = Linear(4, 2, bias=False, rng=1, dtype="float64")
        self.register_buffer("steps", np.zeros((), np.int64))

    def forward(self, x):
        return self.second(self.first(x) * self.scale.data)


def test_registration_and_named_parameters_order():
    m = TwoLayers()
    assert [n for n, _ in m.named_parameters()] == ["scale", "first.weight", "first.bias", "second.weight"]
    assert [n for n, _ in m.named_modules()] == ["", "first", "second"]
    assert list(m.children()) == [m.first, m.second]
    assert [n for n, _ in m.named_buffers()] == ["steps"]
    assert m.num_parameters() == 4 + 12 + 4 + 8


def test_reassigning_an_attribute_unregisters_it():
    m = TwoLayers()
    m.scale = None
    m.second = "not a module"
    assert [n for n, _ in m.named_parameters()] == ["first.weight", "first.bias"]


def test_attribute_before_init_is_an_error():
    class Broken(Module):
        def __init__(self):
            self.weight = Parameter(np.ones(2))

    with pytest.raises(TypeError, match="Broken: call Module.__init__\\(\\)"):
        Broken()


def test_sequential_names_and_order():
    net = small_net()
    names = [n for n, _ in net.named_parameters()]
    assert names == ["0.0.weight", "0.1.weight", "0.1.bias", "1.0.weight", "1.1.weight", "1.1.bias", "2.weight",
                     "3.weight", "3.bias", "7.weight", "7.bias"]
    assert net[3].label == "BatchNorm2d(3)" and net[0].bn.label == "BatchNormAct2d(0.1)"
    assert len(net) == 8 and list(net)[2] is net[2]
    with pytest.raises(TypeError, match="Sequential: element 1 is a int, not a Module"):
        Sequential(ReLU6(), 3)


def test_state_dict_includes_buffers_and_copies():
    net = small_net()
    state = net.state_dict()
    assert "3.running_mean" in state and "3.running_var" in state
    assert "0.1.running_mean" in state and "0.1.num_batches_tracked" in state
    nbt = state["3.num_batches_tracked"]
    assert nbt.dtype == np.int64 and nbt.shape == ()
    # registration order: a module's parameters, then its buffers, module by module
    assert list(state)[:5] == ["0.0.weight", "0.1.weight", "0.1.bias", "0.1.running_mean", "0.1.running_var"]
    state["2.weight"][...] = 123.0
    assert not np.any(net[2].weight.data == 123.0)


def test_load_state_dict_round_trip_and_dtype_cast():
    src, dst = randomize(small_net(seed=0)), small_net(seed=5)
    src.train()(np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 3)))      # moves the running statistics
    state32 = {k: (v.astype(np.float32) if v.dtype == np.float64 else v) for k, v in src.state_dict().items()}
    assert dst.load_state_dict(state32) is dst
    for (k, a), (_, b) in zip(src.state_dict().items(), dst.state_dict().items()):
        assert b.dtype == a.dtype                                             # cast to the module's dtype
        np.testing.assert_allclose(b, a, rtol=1e-6)
    assert int(dst[3].num_batches_tracked) == 1
    # parameters are written in place: arrays held elsewhere (an optimizer) see the new values
    w = dst[2].weight.data
    dst.load_state_dict(src.state_dict())
    assert w is dst[2].weight.data


def test_load_state_dict_accepts_an_npz_file():
    src, dst = randomize(small_net(seed=0)), small_net(seed=5)
    buf = io.BytesIO()
    np.savez(buf, **src.state_dict())
    buf.seek(0)
    dst.load_state_dict(np.load(buf))
    np.testing.assert_array_equal(dst[7].weight.data, src[7].weight.data)


def test_load_state_dict_lists_every_problem_and_leaves_the_module_unchanged():
    net = small_net()
    before = net.state_dict()
    state = net.state_dict()
    state["2.weight"] = np.zeros((7, 4))                 # shape mismatch
    del state["7.bias"]                                  # missing
    del state["3.running_var"]                           # missing buffer
    state["extra.weight"] = np.zeros(3)                  # unexpected
    state["7.weight"] = state["7.weight"] + 1.0          # valid: must not be written either
    with pytest.raises(ValueError) as err:
        net.load_state_dict(state)
    msg = str(err.value)
    assert "Sequential.load_state_dict" in msg
    assert "missing keys (2): 3.running_var, 7.bias" in msg
    assert "unexpected keys (1): extra.weight" in msg
    assert "2.weight: expected shape (6, 4), got (7, 4)" in msg
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_load_state_dict_non_strict_and_bad_values():
    net = small_net()
    net.load_state_dict({"7.bias": np.ones(5)}, strict=False)
    np.testing.assert_array_equal(net[7].bias.data, 1.0)
    with pytest.raises(ValueError, match="7.bias: contains NaN or infinite values"):
        net.load_state_dict({"7.bias": np.array([np.nan] * 5)}, strict=False)
    with pytest.raises(ValueError, match="3.num_batches_tracked: expected integer values"):
        net.load_state_dict({"3.num_batches_tracked": np.array(2.5)}, strict=False)
    with pytest.raises(ValueError, match="expected a numeric array"):
        net.load_state_dict({"7.bias": np.array(["a"] * 5)}, strict=False)
    with pytest.raises(TypeError, match="expected a dict of arrays, got list"):
        net.load_state_dict([("7.bias", np.ones(5))])


def test_train_and_eval_return_self_and_propagate():
    net = small_net()
    assert net.eval() is net
    assert all(not m.training for m in net.modules())
    assert net.train() is net
    assert all(m.training for m in net.modules())
    assert net[0].train(False) is net[0] and not net[0].bn.training and net[1].bn.training


def test_zero_grad_and_accumulation_across_backward_calls():
    net = randomize(small_net()).eval()
    x = np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 3))
    dout = np.random.default_rng(1).standard_normal((2, 5))
    net(x)
    dx1 = net.backward(dout)
    first = {n: p.grad.copy() for n, p in net.named_parameters()}
    assert any(np.abs(g).max() > 0 for g in first.values())
    net(x)
    dx2 = net.backward(dout)
    np.testing.assert_array_equal(dx1, dx2)                  # the input gradient is returned, not accumulated
    for n, p in net.named_parameters():
        np.testing.assert_allclose(p.grad, 2 * first[n], rtol=1e-14, atol=1e-300)
    # a second backward of the same forward pass accumulates too
    net.backward(dout)
    for n, p in net.named_parameters():
        np.testing.assert_allclose(p.grad, 3 * first[n], rtol=1e-14, atol=1e-300)
    grads = [p.grad for p in net.parameters()]
    net.zero_grad()
    assert all(np.all(p.grad == 0) for p in net.parameters())
    assert all(g is p.grad for g, p in zip(grads, net.parameters()))      # zeroed in place


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_sequential_gradcheck(mode):
    net = randomize(small_net())
    net[6].p = 0.0                              # dropout must be deterministic for finite differences
    getattr(net, mode)()
    x = np.random.default_rng(2).uniform(-1, 1, (3, 7, 6, 3))
    result = check_grads(f"Sequential[{mode}]", net, x)
    assert {r.name for r in result.reports} == {"input"} | {n for n, _ in net.named_parameters()}


def test_backward_before_forward_names_the_layer():
    net = small_net()
    with pytest.raises(ValueError, match="Linear\\(7\\): backward called before forward"):
        net.backward(np.zeros((2, 5)))


def test_wrong_gradient_shape_and_dtype():
    net = small_net().eval()
    net(np.zeros((2, 8, 8, 3)))
    with pytest.raises(ValueError, match="Linear\\(7\\): expected a gradient of shape \\(2, 5\\).*got \\(2, 4\\)"):
        net.backward(np.zeros((2, 4)))
    with pytest.raises(TypeError, match="Linear\\(7\\): expected a float64 gradient.*got float32"):
        net.backward(np.zeros((2, 5), np.float32))
    with pytest.raises(TypeError, match="float32 or float64 gradient, got dtype int64"):
        net.backward(np.zeros((2, 5), np.int64))
    with pytest.raises(TypeError, match="gradient to be a numpy.ndarray, got list"):
        net.backward([[0.0] * 5] * 2)


def test_parameter_basics():
    p = Parameter(np.arange(6.0).reshape(2, 3).T)
    assert p.data.flags.c_contiguous and p.shape == (3, 2) and p.dtype == np.float64
    assert p.grad.shape == p.shape and not p.grad.any()
    assert repr(p) == "Parameter(shape=(3, 2), dtype=float64)"


def test_zero_grad_defers_its_fill_and_the_next_gradient_is_written_over_it():
    p = Parameter(np.ones((2, 3), np.float32))
    grad = p.grad
    p.accumulate_grad(np.full((2, 3), 2, np.float32))
    assert p.grad is grad and np.all(grad == 2)              # no zero_grad yet: added in place
    assert p.grad_target() is None                          # nothing pending: a backward must add
    p.zero_grad()
    assert p.grad is grad and not grad.any()                # read after zero_grad: zeros, in place
    p.zero_grad()
    g = np.full((2, 3), 3, np.float32)
    p.accumulate_grad(g)
    assert p.grad is grad and np.all(grad == 3)             # copied over the pending zeros
    g[...] = 0
    assert np.all(p.grad == 3)
    p.accumulate_grad(np.ones((2, 3), np.float32))
    assert np.all(grad == 4)                                # then added
    p.zero_grad()
    target = p.grad_target()
    assert target is grad
    target[...] = 5                                         # an operation writes its gradient there
    p.accumulate_grad(target)
    assert p.grad is grad and np.all(grad == 5)             # and it is not added to itself
    p.accumulate_grad(p.grad)
    assert np.all(grad == 10)                               # (with nothing pending, it is)


def test_a_pending_zero_is_not_lost_when_the_writer_fails():
    p = Parameter(np.ones(4))
    p.accumulate_grad(np.ones(4))
    p.zero_grad()
    p.grad_target()[...] = 7                                # a backward that raised after writing part of it
    assert not p.grad.any()                                 # never told accumulate_grad: still zero


@pytest.mark.parametrize("grad", [lambda: np.zeros((3, 2)).T, lambda: np.zeros((2, 3), np.float32)],
                         ids=["transposed", "float32"])
def test_no_target_for_a_grad_the_kernels_cannot_write(grad):
    p = Parameter(np.ones((2, 3)))
    p.grad = grad()
    p.zero_grad()
    assert p.grad_target() is None
    p.accumulate_grad(np.full((2, 3), 2.0))
    assert np.all(p.grad == 2)


def test_no_target_for_a_grad_of_another_shape():
    p = Parameter(np.ones((2, 3)))
    p.grad = np.zeros((3, 2))                               # a user's mistake: the backward must say so
    p.zero_grad()
    assert p.grad_target() is None
    with pytest.raises(ValueError, match=r"expected a gradient of shape \(3, 2\), got \(2, 3\)"):
        p.accumulate_grad(np.ones((2, 3)))


def test_a_gradient_of_another_shape_is_an_error_not_a_broadcast():
    p = Parameter(np.ones((2, 3)))
    for pending in (False, True):
        if pending:
            p.zero_grad()
        with pytest.raises(ValueError, match=r"expected a gradient of shape \(2, 3\), got \(3,\)"):
            p.accumulate_grad(np.ones(3))
    assert p.grad.shape == (2, 3) and not p.grad.any()       # the failed calls left the pending zeros


def test_repr_shows_the_tree():
    text = repr(small_net())
    assert text.startswith("Sequential(\n  (0): ConvBNAct(\n    (0): Conv2d(3, 4, kernel_size=3, stride=2, padding=1)\n"
                           "    (1): BatchNormAct2d(4, eps=1e-05, momentum=0.1, activation=relu6)\n  )\n")
    assert "(7): Linear(6, 5, bias=True)" in text


def test_inner_layers_check_each_new_input_signature_once(monkeypatch):
    # the outermost call validates every input; a layer inside it checks shape, dtype and mode once per new
    # (shape, dtype, training) signature, and again after .to() or after a child is replaced
    net = small_net()
    calls = []
    inner = net[2]                                  # PointwiseConv2d(4, 6)
    check = type(inner).check_input
    monkeypatch.setattr(type(inner), "check_input",
                        lambda self, x, finite=True: calls.append(self.label) or check(self, x, finite))
    x = np.random.default_rng(0).standard_normal((2, 8, 8, 3))
    for _ in range(3):
        net(x)
    assert calls.count("PointwiseConv2d(2)") == 1
    net(x[:1])                                      # a new batch size
    net.eval()(x)                                   # a new mode
    assert calls.count("PointwiseConv2d(2)") == 3
    net.to("float32")(x.astype(np.float32))         # a new dtype
    assert calls.count("PointwiseConv2d(2)") == 4
    net.to("float64")
    net[2] = PointwiseConv2d(4, 6, dtype="float64")  # a replaced child is checked afresh
    net(x)
    assert calls.count("PointwiseConv2d(2)") == 5


def test_an_inner_mismatch_is_reported_on_every_call():
    # a signature that failed its check is not remembered: the second call fails the same way
    net = Sequential(PointwiseConv2d(3, 4, dtype="float64"), PointwiseConv2d(5, 2, dtype="float64")).set_names()
    x = np.zeros((1, 2, 2, 3))
    for _ in range(2):
        with pytest.raises(ValueError, match=r"PointwiseConv2d\(1\): expected input with 5 channels, got 4"):
            net(x)


def test_label_follows_the_name():
    layer = PointwiseConv2d(3, 4)
    assert layer.label == "PointwiseConv2d"
    Sequential(Sequential(layer)).set_names("body")       # names the layer inside it
    assert layer.label == "PointwiseConv2d(body.0.0)"
    with pytest.raises(ValueError, match=r"^PointwiseConv2d\(body\.0\.0\): expected input with 3 channels"):
        layer(np.zeros((1, 2, 2, 5), np.float32))


def test_load_state_dict_lists_at_most_ten_problems():
    from numpymnv2.models import MobileNetV2
    wide, narrow = MobileNetV2(num_classes=3, width_mult=1.0), MobileNetV2(num_classes=3, width_mult=0.5)
    with pytest.raises(ValueError) as info:
        narrow.load_state_dict(wide.state_dict())
    message = str(info.value)
    assert message.count("\n  - ") == 11 and "... and " in message and "more" in message
    assert "features.0.0.weight: expected shape (16, 3, 3, 3), got (32, 3, 3, 3)" in message
