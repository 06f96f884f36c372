"""Every layer: gradients through the Module interface, initialisation, modes, and bad input named by layer."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numpymnv2.nn import (BatchNorm2d, BatchNormAct2d, Conv2d, ConvBNAct, DepthwiseConv2d, Dropout, GlobalAvgPool2d,
                          Linear, PointwiseConv2d, ReLU, ReLU6, Sequential)
from strategies import away_from_kinks, check_grads, nhwc_shapes, randomize_bn

F64 = "float64"


# name -> (factory(dtype), input shape); the input is uniform in [-1, 1] (x 8 and off the kinks for ReLU6)
LAYERS = {
    "Conv2d": (lambda dt: Conv2d(3, 4, 3, 2, 1, rng=0, dtype=dt), (2, 7, 6, 3)),
    "Conv2d-k2-p0": (lambda dt: Conv2d(2, 3, 2, 1, 0, rng=0, dtype=dt), (2, 4, 5, 2)),
    "DepthwiseConv2d": (lambda dt: DepthwiseConv2d(4, 3, 1, 1, rng=0, dtype=dt), (2, 5, 6, 4)),
    "DepthwiseConv2d-s2": (lambda dt: DepthwiseConv2d(4, 3, 2, 1, rng=0, dtype=dt), (2, 5, 6, 4)),
    "PointwiseConv2d": (lambda dt: PointwiseConv2d(4, 6, rng=0, dtype=dt), (2, 3, 5, 4)),
    "BatchNorm2d": (lambda dt: randomize_bn(BatchNorm2d(4, dtype=dt)), (3, 4, 5, 4)),
    "BatchNormAct2d-relu6": (lambda dt: randomize_bn(BatchNormAct2d(4, "relu6", dtype=dt)), (3, 4, 5, 4)),
    "BatchNormAct2d-relu": (lambda dt: randomize_bn(BatchNormAct2d(4, "relu", dtype=dt)), (3, 4, 5, 4)),
    "ReLU6": (lambda dt: ReLU6(), (2, 3, 4, 5)),
    "ReLU": (lambda dt: ReLU(), (2, 3, 4, 5)),
    "GlobalAvgPool2d": (lambda dt: GlobalAvgPool2d(), (2, 3, 4, 5)),
    "Dropout": (lambda dt: Dropout(0.3, rng=0), (2, 6)),
    "Linear": (lambda dt: Linear(6, 3, rng=0, dtype=dt), (4, 6)),
    "ConvBNAct-relu6": (lambda dt: ConvBNAct(Conv2d(3, 4, 3, 1, 1, rng=0, dtype=dt), 4, "relu6"), (2, 5, 5, 3)),
    "ConvBNAct-linear": (lambda dt: ConvBNAct(PointwiseConv2d(3, 4, rng=0, dtype=dt), 4, None), (2, 5, 5, 3)),
}


def layer_input(name, shape, dtype=np.float64, seed=0):
    x = np.random.default_rng(seed).uniform(-1, 1, shape)
    if name.startswith("ReLU"):
        x = away_from_kinks(x * 8)
    return x.astype(dtype)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_gradcheck(name, mode):
    factory, shape = LAYERS[name]
    layer = factory(F64).set_names("layer")
    if name == "Dropout" and mode == "train":
        layer = Dropout(0.0)                     # a random mask is not a function of the input; p = 0 is
    if name.startswith("ConvBNAct"):
        randomize_bn(layer.bn)
    getattr(layer, mode)()
    check_grads(f"{name}[{mode}]", layer, layer_input(name, shape))


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_preserves_float32(name):
    factory, shape = LAYERS[name]
    layer = factory("float32")
    out = layer(layer_input(name, shape, np.float32))
    assert out.dtype == np.float32
    dx = layer.backward(np.ones_like(out))
    assert dx.dtype == np.float32 and dx.shape == shape
    assert all(p.grad.dtype == np.float32 for p in layer.parameters())


def batchnorm(activation, C, dtype=F64):
    """The BatchNorm layer MobileNetV2 uses for ``activation``: BatchNormAct2d, or BatchNorm2d when linear."""
    return BatchNorm2d(C, dtype=dtype) if activation is None else BatchNormAct2d(C, activation, dtype=dtype)


@pytest.mark.parametrize("activation", ["relu6", "relu", None])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_batchnorm_gradients_including_residual(activation, mode):
    # the residual's gradient is dout itself: check it and dL/dx through one function of (x, residual)
    rng = np.random.default_rng(3)
    layer = randomize_bn(batchnorm(activation, 4))
    getattr(layer, mode)()

    def forward(x, residual):
        return layer(x, residual=residual), None

    def backward(dout, _):
        return layer.backward(dout), dout

    x = rng.uniform(-1, 1, (2, 5, 6, 4))
    residual = rng.uniform(-1, 1, x.shape)
    check_grads(f"{layer.label}[{activation},{mode},residual]", (forward, backward), (x, residual))
    # and the parameters, through the module form
    check_grads(f"{layer.label}[{activation},{mode}]", layer, x)


@given(nhwc_shapes(min_side=1, max_side=6), st.sampled_from([1, 2]), st.sampled_from(["relu6", "relu", None]))
def test_conv_bn_act_gradients_over_shapes(shape, stride, activation):
    N, H, W, C = shape
    layer = ConvBNAct(DepthwiseConv2d(C, 3, stride, 1, rng=0, dtype=F64), C, activation).eval()
    randomize_bn(layer.bn)
    x = np.random.default_rng(N * H * W * C).uniform(-1, 1, shape)
    check_grads(f"ConvBNAct[{activation},eval,hypothesis]", layer, x)


def test_conv_bn_act_equals_separate_layers():
    rng = np.random.default_rng(4)
    x = rng.uniform(-1, 1, (2, 5, 5, 3))
    fused = ConvBNAct(Conv2d(3, 4, 3, 1, 1, rng=0, dtype=F64), 4, "relu6")
    separate = Sequential(Conv2d(3, 4, 3, 1, 1, rng=0, dtype=F64), BatchNorm2d(4, dtype=F64), ReLU6())
    randomize_bn(fused.bn, 1)
    randomize_bn(separate[1], 1)
    for mode in ("train", "eval"):
        getattr(fused, mode)(), getattr(separate, mode)()
        np.testing.assert_allclose(fused(x), separate(x), rtol=1e-12, atol=1e-12)
        dout = rng.standard_normal((2, 5, 5, 4))
        np.testing.assert_allclose(fused.backward(dout), separate.backward(dout), rtol=1e-12, atol=1e-12)
    for (n1, p1), (n2, p2) in zip(fused.named_parameters(), separate.named_parameters()):
        assert n1 == n2
        np.testing.assert_allclose(p1.grad, p2.grad, rtol=1e-12, atol=1e-12)
    assert list(fused.state_dict()) == list(separate.state_dict())        # torchvision's keys 0.weight, 1.*
    np.testing.assert_allclose(fused.bn.running_var, separate[1].running_var, rtol=1e-14)


@pytest.mark.parametrize("make", [lambda: BatchNorm2d(3, dtype=F64),
                                  lambda: ConvBNAct(PointwiseConv2d(3, 3, rng=0, dtype=F64), 3)])
def test_num_batches_tracked_increments_only_in_train(make):
    layer = make()
    bn = layer if isinstance(layer, BatchNorm2d) else layer.bn
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 3, 3))
    layer(x), layer(x)
    assert int(bn.num_batches_tracked) == 2 and bn.num_batches_tracked.dtype == np.int64
    assert layer.state_dict()[("" if bn is layer else "1.") + "num_batches_tracked"] == 2
    mean = bn.running_mean.copy()
    layer.eval()
    layer(x)
    assert int(bn.num_batches_tracked) == 2
    np.testing.assert_array_equal(bn.running_mean, mean)


def test_initialisation_follows_torchvision():
    conv = Conv2d(16, 64, 3, rng=0, dtype=F64)
    assert abs(conv.weight.data.std() - np.sqrt(2 / (64 * 9))) < 0.05 * np.sqrt(2 / (64 * 9))
    dw = DepthwiseConv2d(256, 3, rng=0, dtype=F64)
    assert abs(dw.weight.data.std() - np.sqrt(2 / (256 * 9))) < 0.05 * np.sqrt(2 / (256 * 9))
    pw = PointwiseConv2d(64, 128, rng=0, dtype=F64)
    assert abs(pw.weight.data.std() - np.sqrt(2 / 128)) < 0.05 * np.sqrt(2 / 128)
    lin = Linear(512, 100, rng=0, dtype=F64)
    assert abs(lin.weight.data.std() - 0.01) < 0.0005 and not lin.bias.data.any()
    bn = BatchNorm2d(5)
    assert np.all(bn.weight.data == 1) and np.all(bn.bias.data == 0)
    assert np.all(bn.running_mean == 0) and np.all(bn.running_var == 1)
    # seeded: the same seed gives the same weights, dtype float32 by default
    np.testing.assert_array_equal(Conv2d(3, 4, rng=7).weight.data, Conv2d(3, 4, rng=7).weight.data)
    assert Conv2d(3, 4).weight.dtype == np.float32


def test_dropout_layer_modes():
    layer = Dropout(0.5, rng=0)
    x = np.ones((4, 100))
    y = layer(x)
    assert set(np.unique(y)) == {0.0, 2.0}
    np.testing.assert_array_equal(layer.backward(np.ones_like(y)), y)
    layer.eval()
    np.testing.assert_array_equal(layer(x), x)
    with pytest.raises(ValueError, match="Dropout: expected p in \\[0, 1\\], got 1.5"):
        Dropout(1.5)


# ---------------------------------------------------------------------------------------------------------
# bad input: a ValueError/TypeError that names the layer, what it expected and what it got

LBL = r"\(features\.3(\.[01])?\)"    # the layer, or for ConvBNAct the child that rejects: features.3.0 or .1


def named(layer):
    return layer.set_names("features.3")


@pytest.mark.parametrize("name", ["Conv2d", "DepthwiseConv2d", "PointwiseConv2d", "BatchNorm2d", "GlobalAvgPool2d",
                                  "ConvBNAct-relu6"])
def test_wrong_ndim(name):
    layer = named(LAYERS[name][0](F64))
    with pytest.raises(ValueError, match=LBL + r": expected a 4-D input \(N, H, W, C\), got 3-D with "
                                         r"shape \(5, 5, 4\)"):
        layer(np.zeros((5, 5, 4)))


def test_linear_wrong_ndim():
    with pytest.raises(ValueError, match=r"Linear\(features\.3\): expected a 2-D input, got 4-D"):
        named(Linear(6, 3, dtype=F64))(np.zeros((2, 1, 1, 6)))


@pytest.mark.parametrize("name,expected", [("Conv2d", 3), ("DepthwiseConv2d", 4), ("PointwiseConv2d", 4),
                                           ("BatchNorm2d", 4), ("Linear", 6), ("ConvBNAct-relu6", 3)])
def test_channel_mismatch(name, expected):
    factory, shape = LAYERS[name]
    layer = named(factory(F64))
    bad = shape[:-1] + (expected + 2,)
    with pytest.raises(ValueError, match=LBL + rf": expected input with {expected} channels, got "
                                         rf"{expected + 2} \(shape {re_shape(bad)}\)"):
        layer(np.zeros(bad))


def re_shape(shape):
    return str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_integer_input(name):
    factory, shape = LAYERS[name]
    layer = named(factory(F64))
    with pytest.raises(TypeError, match=LBL + r": expected a float32 or float64 input, got dtype int64"):
        layer(np.zeros(shape, np.int64))


@pytest.mark.parametrize("name", [n for n in sorted(LAYERS) if not n.startswith(("ReLU", "Dropout", "Global"))])
def test_float32_input_to_float64_layer(name):
    factory, shape = LAYERS[name]
    layer = named(factory(F64))
    with pytest.raises(TypeError, match=LBL + r": expected a float64 input to match the layer's "
                                        r"parameters, got float32"):
        layer(np.zeros(shape, np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_non_finite_input(name, bad):
    factory, shape = LAYERS[name]
    layer = named(factory(F64))
    x = np.zeros(shape)
    x.flat[1] = bad
    with pytest.raises(ValueError, match=LBL + r": the input contains 1 NaN or infinite value\(s\)"):
        layer(x)


def test_non_array_and_empty_input():
    layer = named(PointwiseConv2d(3, 2, dtype=F64))
    with pytest.raises(TypeError, match=r"PointwiseConv2d\(features\.3\): expected the input to be a "
                                        r"numpy.ndarray, got list"):
        layer([[[[0.0, 0.0, 0.0]]]])
    with pytest.raises(ValueError, match=r"got an empty input with shape \(0, 2, 2, 3\)"):
        layer(np.zeros((0, 2, 2, 3)))


@pytest.mark.parametrize("layer,shape,axis", [
    (lambda: Conv2d(3, 4, 5, 1, 0, dtype=F64), (1, 4, 9, 3), "H=4 with kernel_size=5, stride=1, padding=0"),
    (lambda: Conv2d(3, 4, 3, 2, 0, dtype=F64), (1, 9, 2, 3), "W=2 with kernel_size=3, stride=2, padding=0"),
    (lambda: DepthwiseConv2d(3, 5, 1, 1, dtype=F64), (1, 2, 8, 3), "H=2 with kernel_size=5, stride=1, padding=1"),
    (lambda: ConvBNAct(Conv2d(3, 4, 3, dtype=F64), 4), (2, 2, 2, 3), "H=2 with kernel_size=3, stride=1, padding=0"),
])
def test_empty_output_names_the_layer(layer, shape, axis):
    m = named(layer())
    with pytest.raises(ValueError, match=LBL + rf": input {axis} gives an empty output"):
        m(np.zeros(shape))


def test_batchnorm_training_needs_two_values_per_channel():
    for layer in (BatchNorm2d(3, dtype=F64), ConvBNAct(PointwiseConv2d(3, 3, dtype=F64), 3)):
        named(layer)
        with pytest.raises(ValueError, match=LBL + r": training mode needs more than one value per "
                                             r"channel.*got input shape \(1, 1, 1, 3\)"):
            layer(np.ones((1, 1, 1, 3)))
        layer.eval()(np.ones((1, 1, 1, 3)))                 # evaluation mode is fine


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_backward_errors_name_the_layer(name):
    factory, shape = LAYERS[name]
    layer = named(factory(F64))
    with pytest.raises(ValueError, match=LBL + r": backward called before forward"):
        layer.backward(np.zeros(shape))
    out = layer(layer_input(name, shape))
    with pytest.raises(ValueError, match=LBL + rf": expected a gradient of shape {re_shape(out.shape)}"):
        layer.backward(np.zeros(out.shape + (1,)))
    with pytest.raises(TypeError, match=LBL + r": expected a float64 gradient"):
        layer.backward(np.zeros(out.shape, np.float32))


@pytest.mark.parametrize("make,message", [
    (lambda: Conv2d(3, 4, 0), "Conv2d: expected kernel_size >= 1, got 0"),
    (lambda: Conv2d(3, 4, 3, stride=0), "Conv2d: expected stride >= 1, got 0"),
    (lambda: Conv2d(3, 4, 3, padding=-1), "Conv2d: expected padding >= 0, got -1"),
    (lambda: Conv2d(0, 4), "Conv2d: expected in_channels >= 1, got 0"),
    (lambda: DepthwiseConv2d(4, stride=0), "DepthwiseConv2d: expected stride >= 1, got 0"),
    (lambda: PointwiseConv2d(4, 0), "PointwiseConv2d: expected out_channels >= 1, got 0"),
    (lambda: BatchNorm2d(0), "BatchNorm2d: expected num_features >= 1, got 0"),
    (lambda: Linear(0, 3), "Linear: expected in_features >= 1, got 0"),
    (lambda: ConvBNAct(PointwiseConv2d(3, 4), 5), "ConvBNAct: out_channels=5 but the convolution"),
    (lambda: ConvBNAct(PointwiseConv2d(3, 4), 4, "tanh"), "ConvBNAct: activation must be"),
])
def test_bad_constructor_arguments(make, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make()


def test_bad_constructor_types():
    with pytest.raises(TypeError, match="Conv2d: expected an integer stride, got 1.5"):
        Conv2d(3, 4, 3, stride=1.5)
    with pytest.raises(TypeError, match="dtype must be 'float32' or 'float64', got int32"):
        Linear(3, 4, dtype="int32")
    with pytest.raises(TypeError, match="ConvBNAct: dtype=float32 but the convolution's parameters are float64"):
        ConvBNAct(PointwiseConv2d(3, 4, dtype=F64), 4, dtype="float32")


def test_conv_bn_act_dtype_follows_the_convolution():
    layer = ConvBNAct(PointwiseConv2d(3, 4, dtype=F64), 4)
    assert layer.bn.weight.dtype == layer.bn.running_var.dtype == np.float64
    assert ConvBNAct(PointwiseConv2d(3, 4), 4).bn.weight.dtype == np.float32


@pytest.mark.parametrize("activation", ["relu6", None])
def test_batchnorm_residual_errors_name_the_layer(activation):
    layer = named(batchnorm(activation, 4))
    x = np.zeros((2, 3, 3, 4))
    with pytest.raises(ValueError, match=rf"{type(layer).__name__}\(features\.3\): expected a residual of shape "
                                         r"\(2, 3, 3, 4\) \(the output's shape\), got \(2, 3, 3, 3\)"):
        layer(x, residual=np.zeros((2, 3, 3, 3)))
    with pytest.raises(TypeError, match=rf"{type(layer).__name__}\(features\.3\): expected a float64 residual"):
        layer(x, residual=np.zeros((2, 3, 3, 4), np.float32))


def test_conv_bn_act_follows_its_batchnorm_mode():
    layer = ConvBNAct(PointwiseConv2d(3, 3, rng=0, dtype=F64), 3, None)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 2, 2, 3))
    layer.bn.eval()                      # only the BatchNorm child in evaluation mode
    out = layer(x)
    assert int(layer.bn.num_batches_tracked) == 0
    np.testing.assert_allclose(out, layer.conv(x) / np.sqrt(1 + 1e-5), rtol=1e-12)


# Layers with parameters at sizes that take every path of the fast backend's products (split by rows with
# partial sums, by columns, over the inner dimension, unsplit) and of its other kernels.
GRADIENT_LAYERS = {
    "pointwise-1x1": (lambda dt: PointwiseConv2d(320, 1280, rng=0, dtype=dt), (32, 1, 1, 320)),
    "pointwise-2x2": (lambda dt: PointwiseConv2d(96, 576, rng=0, dtype=dt), (32, 2, 2, 96)),
    "pointwise-16x16": (lambda dt: PointwiseConv2d(16, 96, rng=0, dtype=dt), (8, 16, 16, 16)),
    "pointwise-small": (lambda dt: PointwiseConv2d(4, 6, rng=0, dtype=dt), (2, 3, 5, 4)),
    "stem": (lambda dt: Conv2d(3, 32, 3, 2, 1, rng=0, dtype=dt), (4, 32, 32, 3)),
    "depthwise": (lambda dt: DepthwiseConv2d(144, 3, 1, 1, rng=0, dtype=dt), (8, 8, 8, 144)),
    "batchnorm-act": (lambda dt: BatchNormAct2d(144, "relu6", dtype=dt), (8, 8, 8, 144)),
    "linear": (lambda dt: Linear(1280, 10, rng=0, dtype=dt), (32, 1280)),
}


@pytest.mark.parametrize("backend", ["fast", "reference"])
@pytest.mark.parametrize("name", sorted(GRADIENT_LAYERS))
def test_gradients_stay_in_their_arrays_over_steps_and_accumulate(name, backend):
    """Whether a layer writes its gradient straight into ``Parameter.grad`` (after ``zero_grad``) or adds it,
    ``grad`` stays the same array, holds this step's gradient after ``zero_grad`` and the sum of the steps
    without it, and a kept view of it (a flat buffer of all gradients, as data-parallel training keeps) sees
    every value."""
    import numpymnv2 as mn
    factory, shape = GRADIENT_LAYERS[name]
    rng = np.random.default_rng(0)
    layer = factory("float32")
    params = list(layer.parameters())
    arrays = [p.grad for p in params]
    flat = np.zeros(sum(g.size for g in arrays), np.float32)
    views, offset = [], 0
    for p in params:
        p.grad = flat[offset:offset + p.grad.size].reshape(p.shape)
        views.append(p.grad)
        offset += p.grad.size
    x = [rng.standard_normal(shape).astype(np.float32) for _ in range(3)]
    with mn.use_backend(backend):
        out = layer(x[0])
        douts = [rng.standard_normal(out.shape).astype(np.float32) for _ in range(3)]

        def gradients(step, zero=True):
            if zero:
                layer.zero_grad()
            layer(x[step])
            layer.backward(douts[step])
            return [p.grad.copy() for p in params]

        alone = [gradients(step) for step in range(3)]
        layer.zero_grad()
        for step in range(3):
            summed = gradients(step, zero=False)
        again = gradients(1)
    for p, view in zip(params, views):
        assert p.grad is view
    for i, view in enumerate(views):
        scale = max(1.0, float(np.abs(alone[0][i]).max()))
        np.testing.assert_allclose(summed[i], alone[0][i] + alone[1][i] + alone[2][i], rtol=1e-5, atol=1e-5 * scale)
        np.testing.assert_array_equal(again[i], alone[1][i])
        np.testing.assert_array_equal(view, alone[1][i])
