"""Independent references: the pre-activations recomputed by hand, out of place, no hooks.

Each function re-derives a layer's value from the model's parameters with explicit functional
calls, the way a reader of the architecture's source would, so that the capture mechanism is
checked against something that does not share its code.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def out_of_place(model: nn.Module) -> nn.Module:
    """A copy whose activation modules do not modify their input."""
    clone = copy.deepcopy(model).eval()
    for module in clone.modules():
        if hasattr(module, "inplace"):
            module.inplace = False
    return clone


def numpy_stats(values: np.ndarray, eps: float = 0.0) -> dict[str, np.ndarray]:
    """min/mean/max over space and fraction > 0, per image and unit, with a float64 NumPy loop.

    With ``eps`` > 0 also ``area_low``/``area_high``: the fractions > eps and > -eps, which bracket
    the area of any computation of the same values that differs from this one by less than eps
    (another memory format or kernel rounds near-zero positions either way).
    """
    values = np.asarray(values, dtype=np.float64)
    n, c = values.shape[:2]
    keys = ("min", "mean", "max", "area", "area_low", "area_high")
    out = {k: np.empty((n, c)) for k in keys}
    for i in range(n):
        for j in range(c):
            m = values[i, j].ravel()
            out["min"][i, j], out["mean"][i, j], out["max"][i, j] = m.min(), m.mean(), m.max()
            out["area"][i, j] = np.count_nonzero(m > 0) / m.size
            out["area_low"][i, j] = np.count_nonzero(m > eps) / m.size
            out["area_high"][i, j] = np.count_nonzero(m > -eps) / m.size
    return out


def bn(module: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    return F.batch_norm(x, module.running_mean, module.running_var, module.weight, module.bias, False, 0.0, module.eps)


# -- torchvision -------------------------------------------------------------------------------------------
def alexnet_like(model: nn.Module, x: torch.Tensor, layer: str, post: bool) -> torch.Tensor:
    """AlexNet/VGG: ``features.N`` / ``classifier.N`` in a Sequential with ReLU(inplace=True)."""
    m = out_of_place(model)
    part, index = layer.split(".")
    index = int(index)
    if part == "features":
        value = m.features[: index + 1](x)
    else:
        h = torch.flatten(m.avgpool(m.features(x)), 1)
        value = m.classifier[: index + 1](h)
    block = getattr(m, part)[index]
    if isinstance(block, nn.ReLU) and not post:  # the ReLU module itself: its input
        value = (m.features[:index](x) if part == "features"
                 else m.classifier[:index](torch.flatten(m.avgpool(m.features(x)), 1)))
    return value


def resnet_block(model: nn.Module, x: torch.Tensor, stage: int, block: int, post: bool) -> torch.Tensor:
    """torchvision BasicBlock ``layer{stage}.{block}``: the residual sum bn2(conv2(...)) + identity."""
    m = out_of_place(model)
    h = m.maxpool(F.relu(bn(m.bn1, m.conv1(x))))
    for s in range(1, stage + 1):
        layer = getattr(m, f"layer{s}")
        for b, unit in enumerate(layer):
            if s == stage and b == block:
                out = F.relu(bn(unit.bn1, unit.conv1(h)))
                out = bn(unit.bn2, unit.conv2(out))
                identity = unit.downsample(h) if unit.downsample is not None else h
                total = out + identity
                return F.relu(total) if post else total
            h = unit(h)
    raise ValueError("no such block")


def googlenet_until(m: nn.Module, x: torch.Tensor, name: str) -> torch.Tensor:
    """Input of GoogLeNet child ``name`` (torchvision forward order, out of place)."""
    if m.transform_input:
        x = m._transform_input(x)
    for child in ["conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b", "maxpool3",
                  "inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4",
                  "inception5a", "inception5b"]:
        if child == name:
            return x
        x = getattr(m, child)(x)
    raise ValueError(name)


def basic_conv_pre(unit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """BasicConv2d without its functional in-place ReLU: bn(conv(x))."""
    return bn(unit.bn, unit.conv(x))


def googlenet_inception(model: nn.Module, x: torch.Tensor, name: str, post: bool) -> torch.Tensor:
    """Concatenation of the four branches' pre-activations (or their ReLU outputs)."""
    m = out_of_place(model)
    h = googlenet_until(m, x, name)
    block = getattr(m, name)
    b1 = basic_conv_pre(block.branch1, h)
    b2 = basic_conv_pre(block.branch2[1], F.relu(basic_conv_pre(block.branch2[0], h)))
    b3 = basic_conv_pre(block.branch3[1], F.relu(basic_conv_pre(block.branch3[0], h)))
    b4 = basic_conv_pre(block.branch4[1], block.branch4[0](h))
    parts = [b1, b2, b3, b4]
    return torch.cat([F.relu(p) for p in parts] if post else parts, 1)


def googlenet_conv(model: nn.Module, x: torch.Tensor, name: str, post: bool) -> torch.Tensor:
    m = out_of_place(model)
    pre = basic_conv_pre(getattr(m, name), googlenet_until(m, x, name))
    return F.relu(pre) if post else pre


# -- timm EfficientNet ---------------------------------------------------------------------------------------
def effnet_stem(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.relu6(bn(m.bn1, m.conv_stem(x)))


def effnet_blocks(model: nn.Module, x: torch.Tensor, upto: int) -> torch.Tensor:
    """Output of ``blocks.{upto}`` (stages end in a linear bottleneck: no final nonlinearity)."""
    m = out_of_place(model)
    return m.blocks[: upto + 1](effnet_stem(m, x))


def effnet_head_bn(model: nn.Module, x: torch.Tensor, post: bool) -> torch.Tensor:
    """``bn2``: BatchNorm of conv_head, before (or after) its ReLU6."""
    m = out_of_place(model)
    pre = bn(m.bn2, m.conv_head(m.blocks(effnet_stem(m, x))))
    return F.relu6(pre) if post else pre


def effnet_block_bn2(model: nn.Module, x: torch.Tensor, stage: int, block: int, post: bool) -> torch.Tensor:
    """``blocks.S.B.bn2``: BatchNorm after the depthwise conv of an InvertedResidual."""
    m = out_of_place(model)
    h = m.blocks[:stage](effnet_stem(m, x))
    for b in range(block):
        h = m.blocks[stage][b](h)
    unit = m.blocks[stage][block]
    h = F.relu6(bn(unit.bn1, unit.conv_pw(h)))
    pre = bn(unit.bn2, unit.conv_dw(h))
    return F.relu6(pre) if post else pre


# -- any traceable model: the pre-activation read off its FX graph -----------------------------------------
FX_ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh,
                         nn.ELU, nn.LeakyReLU, nn.Mish, nn.Hardtanh, nn.PReLU, nn.SELU, nn.CELU, nn.Softplus)
FX_ACTIVATION_NAMES = {"relu", "relu6", "gelu", "silu", "hardswish", "hardsigmoid", "sigmoid", "tanh", "elu",
                       "leaky_relu", "mish", "hardtanh", "prelu", "selu", "celu", "softplus"}


def _fx_tracer(model: nn.Module):
    """torchvision's NodePathTracer (qualified names per node), with timm's leaf modules and wrapped functions."""
    from torchvision.models.feature_extraction import NodePathTracer

    try:
        from timm.layers import _fx
    except ImportError:
        return NodePathTracer()
    # timm's norm+activation modules are traced through, so that the activation inside them is a node
    leaves = [m for m in _fx._leaf_modules if "NormAct" not in m.__name__]
    return NodePathTracer(leaf_modules=leaves, autowrap_functions=list(_fx._autowrap_functions))


def _is_activation(node, modules) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], FX_ACTIVATION_MODULES)
    name = getattr(node.target, "__name__", str(node.target)).strip("_")
    return node.op in ("call_function", "call_method") and name in FX_ACTIVATION_NAMES


def fx_preactivations(model: nn.Module, layers, x: torch.Tensor, post: bool = False) -> dict[str, torch.Tensor]:
    """The value of each layer read off the model's FX graph: its output node (the last node inside the layer),
    traced back through a final activation (its input) and channel concatenations (of the traced inputs),
    each value cloned the moment its node runs, so that later in-place ops cannot touch it. Shares no code
    with :mod:`neuroprobe.models.capture` (which follows eager calls under a TorchFunctionMode)."""
    tracer = _fx_tracer(model)
    graph = tracer.trace(model.eval())
    names = tracer.node_to_qualname
    modules = dict(model.named_modules())

    def back(node):
        if post:
            return node
        if _is_activation(node, modules) or \
                node.op == "call_module" and isinstance(modules[node.target], (nn.Identity, nn.Dropout)):
            return back(node.args[0])
        if node.op == "call_function" and getattr(node.target, "__name__", "") == "cat":
            dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
            if dim == 1:
                return ("cat", [back(a) for a in node.args[0]])
        return node

    wanted, leaves = {}, set()

    def collect(item):
        if isinstance(item, tuple):
            for part in item[1]:
                collect(part)
        else:
            leaves.add(item)

    for layer in layers:
        # a module call is placed by its target (the qualified names torchvision's tracer gives can be off by one)
        where = {n: n.target if n.op == "call_module" else str(names.get(n, "")) for n in graph.nodes}
        inside = [n for n in graph.nodes if where[n] == layer or where[n].startswith(layer + ".")]
        if not inside:
            raise LookupError(f"no FX node for {layer}")
        wanted[layer] = back(inside[-1])
        collect(wanted[layer])
    values = {}

    class Grab(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n in leaves:
                values[n] = out.detach().clone()
            return out

    with torch.no_grad():
        Grab(torch.fx.GraphModule(tracer.root, graph)).run(x)

    def assemble(item):
        if isinstance(item, tuple):
            return torch.cat([assemble(p) for p in item[1]], dim=1)
        return values[item]

    return {layer: assemble(item) for layer, item in wanted.items()}
