"""Inference copies of a trained model: the same function, cheaper to evaluate.

Used by `explain` / `quantify` (50 forward and backward passes per image) and `predict`.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def fold_batchnorm(model: nn.Module, size: int) -> nn.Module:
    """An inference copy of a SeverityModel with each BatchNorm folded into the conv before it.

    In eval mode a BatchNorm is a fixed per-channel affine map, so `conv -> bn` equals one conv
    with rescaled weights and a bias (`torch.fx.experimental.optimization.fuse`, which traces the
    timm network with torch.fx). Same outputs to float rounding, same gradients, so the same IG;
    but each image (and each IG path point) skips the BatchNorm in the forward and the backward
    pass: 1.1-1.55x faster IG for a ResNet on the CPU (bench/ig.py). Only exact
    `nn.Conv2d -> nn.BatchNorm2d` pairs whose conv output feeds nothing else are folded; other
    layers stay as they are.

    The model is returned unchanged when the network cannot be traced (data-dependent Python
    control flow) or when the folded copy's outputs on a probe input differ from the model's by
    more than float rounding: folding is an optimisation and never changes a result.

    Args:
        model: a SeverityModel (`net` then `readout`), in eval mode; it is not modified.
        size: the model's input side, for the probe.
    """
    from torch.fx.experimental.optimization import fuse

    net, readout = getattr(model, "net", None), getattr(model, "readout", None)
    if net is None or readout is None or not any(isinstance(m, nn.BatchNorm2d) for m in net.modules()):
        return model
    try:
        folded = nn.Sequential(fuse(net.eval()), copy.deepcopy(readout)).eval()  # SeverityModel: readout(net(x))
    except Exception:  # torch.fx raises many kinds on untraceable code: keep the model as it is
        return model
    device = next(model.parameters()).device
    probe = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)  # [2, 3, S, S]
    with torch.no_grad():
        want, got = model(probe).float(), folded(probe).float()
    if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-3, atol=1e-3 * (1 + want.abs().max().item())):
        return model
    return folded
