"""Module statistics: parameter counts and multiply-accumulates (MACs) via ``torch.utils.flop_counter``.

MACs are counted on the meta device, so even ResNet-50-sized models cost no memory or compute.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass on a tensor of ``input_shape`` (batch included).

    FlopCounterMode counts 2 FLOPs per MAC of convolutions and matmuls; elementwise work is not counted.
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros(input_shape, device=device)
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() // 2



@torch.no_grad()
def randomize_bn_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every ``BatchNorm2d`` random running statistics and affine weights (seeded), in place, and return the
    model in eval mode. An untrained network's BN is the identity (and the last BN of a residual branch has γ = 0),
    so checks on untrained models (export, quantisation, latency) would otherwise see a degenerate function."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.copy_(1 + 0.2 * torch.randn(c, generator=g))
            m.bias.copy_(0.2 * torch.randn(c, generator=g))
    return model.eval()
