"""The PyTorch side of ``numpymnv2 bench``: its own MobileNetV2 (torchvision's architecture, so torchvision is
not needed), a train step and the per-op functions, in NCHW or ``channels_last``.

torch is imported only when these functions run, inside the benchmark's PyTorch worker processes.
"""
from __future__ import annotations


def load_torch():
    """Import torch (the benchmark's PyTorch workers only)."""
    import torch
    return torch


def runtime_info() -> dict:
    torch = load_torch()
    return {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def mobilenetv2(num_classes, width_mult, cifar):
    import torch.nn as tnn

    def make_divisible(v, d=8):
        new_v = max(d, int(v + d / 2) // d * d)
        return new_v + d if new_v < 0.9 * v else new_v

    def cba(i, o, k=3, s=1, groups=1, act=True):
        layers = [tnn.Conv2d(i, o, k, s, (k - 1) // 2, groups=groups, bias=False), tnn.BatchNorm2d(o)]
        if act:
            layers.append(tnn.ReLU6(inplace=True))
        return tnn.Sequential(*layers)

    class Block(tnn.Module):
        def __init__(self, inp, oup, stride, t):
            super().__init__()
            hidden = int(round(inp * t))
            self.use_res = stride == 1 and inp == oup
            layers = [cba(inp, hidden, 1)] if t != 1 else []
            layers += [cba(hidden, hidden, 3, stride, groups=hidden), cba(hidden, oup, 1, act=False)]
            self.conv = tnn.Sequential(*layers)

        def forward(self, x):
            return x + self.conv(x) if self.use_res else self.conv(x)

    setting = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2],
               [6, 320, 1, 1]]
    if cifar:
        setting[1][3] = 1
    inp = make_divisible(32 * width_mult)
    last = make_divisible(1280 * max(1.0, width_mult))
    feats = [cba(3, inp, 3, 1 if cifar else 2)]
    for t, c, n, s in setting:
        out = make_divisible(c * width_mult)
        for i in range(n):
            feats.append(Block(inp, out, s if i == 0 else 1, t))
            inp = out
    feats.append(cba(inp, last, 1))
    return tnn.Sequential(*feats, tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Dropout(0.2),
                          tnn.Linear(last, num_classes))


def _setup(side):
    torch = load_torch()
    torch.manual_seed(0)
    fmt = torch.channels_last if side == "torch-cl" else torch.contiguous_format
    return torch, fmt


def step_fn(row, side):
    torch, fmt = _setup(side)
    _, N, res, wm, nc, variant, mode = row
    model = mobilenetv2(nc, wm, variant == "cifar").to(memory_format=fmt)
    x = torch.randn(N, 3, res, res).contiguous(memory_format=fmt)
    labels = torch.randint(0, nc, (N,))
    if mode == "infer":
        model.eval()

        def infer():
            with torch.no_grad():
                model(x)
        return infer, {}
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad()
        loss_fn(model(x), labels).backward()
        opt.step()
    return step, {"optimizer": "torch.optim.SGD"}


def op_fns(spec, side):
    torch, fmt = _setup(side)
    fns = {}

    def nchw(N, H, W, C, grad=True):
        t = torch.randn(N, C, H, W).contiguous(memory_format=fmt)
        return t.requires_grad_(grad)

    for N, H, W, C, s in spec["depthwise"]:
        conv = torch.nn.Conv2d(C, C, 3, s, 1, groups=C, bias=False).to(memory_format=fmt)
        x = nchw(N, H, W, C)
        dout = torch.randn_like(conv(x)).contiguous(memory_format=fmt)

        def f(conv=conv, x=x, dout=dout):
            x.grad = None
            conv.weight.grad = None
            conv(x).backward(dout)
        fns[f"dw {N}x{H}x{W}x{C} s{s}"] = f
    for N, H, W, C in spec["bn"]:
        bn = torch.nn.BatchNorm2d(C)
        act = torch.nn.ReLU6()
        x = nchw(N, H, W, C)
        dout = torch.randn_like(x).contiguous(memory_format=fmt)

        def f(bn=bn, act=act, x=x, dout=dout):
            x.grad = None
            bn.weight.grad = bn.bias.grad = None
            act(bn(x)).backward(dout)
        fns[f"bn+relu6 {N}x{H}x{W}x{C}"] = f
    for N, H, W, Ci, Co in spec["pointwise"]:
        conv = torch.nn.Conv2d(Ci, Co, 1, bias=False).to(memory_format=fmt)
        x = nchw(N, H, W, Ci)
        dout = torch.randn_like(conv(x)).contiguous(memory_format=fmt)

        def f(conv=conv, x=x, dout=dout):
            x.grad = None
            conv.weight.grad = None
            conv(x).backward(dout)
        fns[f"pw {N}x{H}x{W} {Ci}->{Co}"] = f
    return fns


def export_onnx(weights: dict, num_classes: int, width_mult: float, cifar: bool, path: str) -> dict:
    """PyTorch's ONNX export of :func:`mobilenetv2` carrying ``weights``, for the onnxruntime benchmark.

    ``weights`` is :func:`numpymnv2.interop.to_torchvision` of a numpymnv2 model: torchvision's keys, whose
    parameters and buffers come in the same order as this module's own ``state_dict`` (only the prefixes differ,
    ``features.3.`` here is ``3.``), so they are matched by position and ``load_state_dict`` checks every shape.
    The export is ``torch.onnx.export`` in evaluation mode with a dynamic batch, height and width, as a user
    calls it: torch 2.13's default exporter (``dynamo=True``, which needs the onnxscript package) or, when
    onnxscript is not installed, the TorchScript exporter (``dynamo=False``). Returns which one ran and its opset.
    """
    torch = load_torch()
    model = mobilenetv2(num_classes, width_mult, cifar).eval()
    own = model.state_dict()
    if len(own) != len(weights):
        raise ValueError(f"export_onnx: {len(weights)} weights for a model with {len(own)} entries")
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in zip(own, weights.values())})
    x = torch.randn(1, 3, 224, 224)
    try:
        import onnxscript  # noqa: F401  the dynamo exporter's dependency
        dynamo = True
    except ImportError:
        dynamo = False
    kwargs = {"input_names": ["input"], "output_names": ["logits"]}
    if dynamo:
        dim = torch.export.Dim
        shapes = {"input": {0: dim("batch"), 2: dim("height", min=32), 3: dim("width", min=32)}}
        program = torch.onnx.export(model, (x,), path, dynamo=True, dynamic_shapes=shapes, **kwargs)
        del program
    else:
        axes = {"input": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}}
        torch.onnx.export(model, (x,), path, dynamo=False, dynamic_axes=axes, opset_version=17, **kwargs)
    import onnx
    opset = next(o.version for o in onnx.load(path, load_external_data=False).opset_import if o.domain == "")
    return {"exporter": "dynamo (torch.onnx.export default)" if dynamo else "TorchScript (dynamo=False)",
            "opset": int(opset), "torch": torch.__version__}
