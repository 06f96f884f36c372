"""Our MobileNetV2 against an independent PyTorch reference with torchvision's module names.

torchvision itself is not needed: ``TorchMobileNetV2`` below is written from the paper's Table 2 the way
torchvision writes it (same children, so the same state-dict keys), with PyTorch's own layers and autograd.
Weights go torch -> ours through ``from_torchvision`` and gradients ours -> torch through ``to_torchvision``.
"""
import numpy as np
import pytest

from numpymnv2 import softmax_cross_entropy
from numpymnv2.interop import from_torchvision, to_torchvision

torch = pytest.importorskip("torch")
torch.set_num_threads(1)      # the NumPy side uses the cores; two thread pools on 2 cores only contend
nn = torch.nn
F = torch.nn.functional

TABLE = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
CIFAR_TABLE = [(1, 16, 1, 1), (6, 24, 2, 1)] + TABLE[2:]


def divisible(v, d=8):
    rounded = max(d, int(v + d / 2) // d * d)
    return rounded + d if rounded < 0.9 * v else rounded


def conv_bn_relu6(inp, oup, kernel, stride, groups=1):
    return nn.Sequential(nn.Conv2d(inp, oup, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(oup), nn.ReLU6())


class TorchInvertedResidual(nn.Module):
    def __init__(self, inp, oup, stride, t, linear_bottleneck=True, use_shortcut=True):
        super().__init__()
        hidden = int(round(inp * t))
        self.use_res_connect = use_shortcut and stride == 1 and inp == oup
        self.linear_bottleneck = linear_bottleneck
        layers = [conv_bn_relu6(inp, hidden, 1, 1)] if t != 1 else []
        layers += [conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        y = self.conv(x)
        if not self.linear_bottleneck:
            y = F.relu6(y)
        return x + y if self.use_res_connect else y


class TorchMobileNetV2(nn.Module):
    def __init__(self, num_classes, width, table=TABLE, stem_stride=2, **block_kwargs):
        super().__init__()
        c_in = divisible(32 * width)
        last = divisible(1280 * max(1.0, width))
        layers = [conv_bn_relu6(3, c_in, 3, stem_stride)]
        for t, c, n, s in table:
            for i in range(n):
                layers.append(TorchInvertedResidual(c_in, divisible(c * width), s if i == 0 else 1, t,
                                                    **block_kwargs))
                c_in = divisible(c * width)
        layers.append(conv_bn_relu6(c_in, last, 1, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.0), nn.Linear(last, num_classes))

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.classifier(x)


def randomized_torch_model(config, dtype, seed):
    """A reference model with random weights and non-trivial BatchNorm parameters and statistics."""
    torch.manual_seed(seed)
    width, kwargs = config["width"], dict(config.get("block", {}))
    table, stem = (CIFAR_TABLE, 1) if config.get("cifar") else (TABLE, 2)
    model = TorchMobileNetV2(config["classes"], width, table, stem, **kwargs).to(dtype)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g, dtype=dtype) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g, dtype=dtype) * 0.6 - 0.3)
                m.running_mean.copy_(torch.rand(n, generator=g, dtype=dtype) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(n, generator=g, dtype=dtype) + 0.5)
                m.num_batches_tracked.fill_(seed % 5)
            elif isinstance(m, nn.Linear):
                m.weight.normal_(0, 0.3, generator=g)
                m.bias.normal_(0, 0.1, generator=g)
    return model


def ours_from(tmodel, config, dtype):
    state = {k: v.detach().numpy() for k, v in tmodel.state_dict().items()}
    extra = dict(config.get("block", {}))
    if config.get("cifar"):
        extra.update(stem_stride=1, inverted_residual_setting=CIFAR_TABLE)
    return from_torchvision(state, num_classes=config["classes"], width_mult=config["width"], dtype=dtype,
                            dropout=0.0, **extra)


def rel(a, b):
    """Normwise relative difference ``max|a - b| / max|b|``."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def grad_rel(a, b, floor):
    """:func:`rel` with the denominator at least ``floor``."""
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), floor))


CONFIGS = {
    "w0.35 imagenet 64px": dict(width=0.35, classes=10, res=64, batch=3),
    "w0.5 cifar 32px": dict(width=0.5, classes=10, res=32, batch=2, cifar=True),
    "w0.35 ablations 64px": dict(width=0.35, classes=7, res=64, batch=2,
                                 block=dict(linear_bottleneck=False, use_shortcut=False)),
}
TOLERANCE = {"float64": 1e-10, "float32": 1e-4}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_eval_logits_agree(name, dtype):
    config = CONFIGS[name]
    tdtype = getattr(torch, dtype)
    tmodel = randomized_torch_model(config, tdtype, seed=1).eval()
    ours = ours_from(tmodel, config, dtype)
    x = np.random.default_rng(0).uniform(-1, 1, (config["batch"], config["res"], config["res"], 3)).astype(dtype)
    with torch.no_grad():
        expected = tmodel(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    got = ours(x)
    assert got.dtype == dtype
    assert rel(got, expected) < TOLERANCE[dtype]
    assert rel(ours.fuse()(x), expected) < TOLERANCE[dtype]


def training_step(config, dtype, seed=2):
    """One training-mode step of both models: their (loss, dL/dx, parameter gradients, state) as numpy."""
    tmodel = randomized_torch_model(config, getattr(torch, dtype), seed=seed).train()
    ours = ours_from(tmodel, config, dtype).train()
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (config["batch"], config["res"], config["res"], 3)).astype(dtype)
    labels = rng.integers(0, config["classes"], config["batch"])

    tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    tloss = F.cross_entropy(tmodel(tx), torch.from_numpy(labels))
    tloss.backward()
    theirs = (tloss.item(), tx.grad.numpy().transpose(0, 2, 3, 1),
              {k: p.grad.numpy() for k, p in tmodel.named_parameters()},
              {k: v.numpy() for k, v in tmodel.state_dict().items()})

    ours.zero_grad()
    loss, dlogits = softmax_cross_entropy(ours(x), labels)
    dx = ours.backward(dlogits)
    assert dx.dtype == dtype
    return (float(loss), dx, to_torchvision(ours, grads=True), to_torchvision(ours)), theirs


def compare_step(ours, theirs, value_tol, grad_tol, noise_floor):
    """Worst relative differences of a training step; asserts the forward quantities within ``value_tol``."""
    (loss, dx, grads, state), (tloss, tdx, tgrads, tstate) = ours, theirs
    assert abs(loss - tloss) <= value_tol * abs(tloss)
    assert list(grads) == list(tgrads) and list(state) == list(tstate)
    for k, v in tstate.items():
        if k.endswith(("running_mean", "running_var")):
            assert rel(state[k], v) < value_tol, k
        elif k.endswith("num_batches_tracked"):
            assert state[k].dtype == np.int64 and state[k].shape == () and int(state[k]) == int(v), k
    # Gradients that are exactly zero in exact arithmetic (the bias of a BatchNorm whose output reaches only
    # training-mode BatchNorms, which remove any per-channel constant) are rounding noise on both sides, so each
    # error is relative to at least `noise_floor` times the network's largest gradient.
    floor = noise_floor * max(np.abs(g).max() for g in tgrads.values())
    worst = max((grad_rel(grads[k], tgrads[k], floor), k) for k in grads)
    dx_err = rel(dx, tdx)
    assert dx_err < grad_tol and worst[0] < grad_tol, (dx_err, worst)
    return dx_err, worst


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_training_step_agrees_float64(name):
    """Loss, every parameter gradient, the input gradient and the updated running statistics, in float64.

    Measured: gradients agree to a few 1e-10 (errors grow through the training-mode BatchNorms)."""
    compare_step(*training_step(CONFIGS[name], "float64"), value_tol=1e-10, grad_tol=1e-8, noise_floor=1e-6)


@pytest.mark.parametrize("name", ["w0.35 imagenet 64px", "w0.5 cifar 32px"])
def test_training_step_agrees_float32(name):
    """The same in float32, where the whole-network gradients are ill-conditioned for *both* implementations.

    A ReLU6 input within float32 rounding of 0 or 6 takes the other branch in one implementation, and a
    training-mode BatchNorm over a small batch spreads that over its channel: torch's own float32 gradients
    differ from its float64 ones by up to ~5e-2 on such random networks. So here the forward quantities (loss,
    running statistics) are held to 1e-4 and the gradients only to a level that catches layout or formula
    errors; the float32 backward of each block is held to 1e-4 in test_block_training_agrees_float32.
    """
    compare_step(*training_step(CONFIGS[name], "float32"), value_tol=1e-4, grad_tol=0.2, noise_floor=1e-3)


BLOCKS = {"t=1": (8, 6, 1, 1), "stride 2": (6, 8, 2, 6), "residual": (8, 8, 1, 6)}


def block_step(kind, ablation, dtype, torch_dtype):
    """Training-mode forward and backward of one block: {name: array} in torchvision's layouts."""
    from numpymnv2.models import InvertedResidual

    inp, oup, stride, t = BLOCKS[kind]
    torch.manual_seed(5)
    tblock = TorchInvertedResidual(inp, oup, stride, t, **ablation).double().train()
    block = InvertedResidual(inp, oup, stride, t, dtype=dtype, **ablation).train()
    block.load_state_dict(from_torchvision_block(tblock, block))
    tblock = tblock.to(getattr(torch, torch_dtype))
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, (4, 9, 9, inp))
    tx = torch.from_numpy(x.transpose(0, 3, 1, 2).astype(torch_dtype)).requires_grad_(True)
    tout = tblock(tx)
    dout = rng.standard_normal(tout.shape)
    tout.backward(torch.from_numpy(dout.astype(torch_dtype)))
    theirs = {"out": tout.detach().numpy().transpose(0, 2, 3, 1), "dx": tx.grad.numpy().transpose(0, 2, 3, 1)}
    theirs |= {k: p.grad.numpy() for k, p in tblock.named_parameters()}
    theirs |= {k: v.numpy() for k, v in tblock.state_dict().items() if k.endswith(("mean", "var"))}
    ours = {"out": block(x.astype(dtype)), "dx": block.backward(dout.transpose(0, 2, 3, 1).astype(dtype))}
    ours |= to_torchvision(block, grads=True)
    ours |= {k: v for k, v in to_torchvision(block).items() if k.endswith(("mean", "var"))}
    return ours, theirs


@pytest.mark.parametrize("ablation", [{}, {"linear_bottleneck": False}, {"use_shortcut": False}])
@pytest.mark.parametrize("kind", sorted(BLOCKS))
def test_block_training_agrees(kind, ablation):
    """One InvertedResidual of each kind in training mode: output, dL/dx, every gradient, running statistics.

    float64 agrees with torch's float64 to 1e-10. In float32 some gradients are sums that nearly cancel (the
    expansion BatchNorm's gamma), so float32 is judged against the float64 truth: our error must be below 1e-4
    or at most 4 times torch's own float32 error.
    """
    ours64, truth = block_step(kind, ablation, "float64", "float64")
    for k in truth:
        assert rel(ours64[k], truth[k]) < TOLERANCE["float64"], k
    ours32, torch32 = block_step(kind, ablation, "float32", "float32")
    for k in truth:
        assert ours32[k].dtype == np.float32
        assert rel(ours32[k], truth[k]) <= max(TOLERANCE["float32"], 4 * rel(torch32[k], truth[k])), k


def from_torchvision_block(tblock, block):
    """A torch block's state in our layouts (the same conversion from_torchvision applies to a whole model)."""
    from numpymnv2.interop import torch_to_ours
    from numpymnv2.interop.torchvision import _layouts

    layouts = _layouts(block)
    return {k: torch_to_ours(v.detach().numpy(), layouts[k]) for k, v in tblock.state_dict().items()}


def test_state_dict_round_trip_is_exact():
    config = CONFIGS["w0.35 imagenet 64px"]
    tmodel = randomized_torch_model(config, torch.float32, seed=3)
    sd = {k: v.numpy() for k, v in tmodel.state_dict().items()}
    back = to_torchvision(from_torchvision(sd, num_classes=10, width_mult=0.35))
    assert list(back) == list(sd)
    for k, v in sd.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
        np.testing.assert_array_equal(back[k], v)
    # tensors are accepted as they are, and the export loads into the torch model strictly
    ours = from_torchvision(tmodel.state_dict(), num_classes=None, width_mult=0.35)
    assert ours.num_classes == 10
    tmodel.load_state_dict({k: torch.from_numpy(v) for k, v in to_torchvision(ours).items()}, strict=True)
