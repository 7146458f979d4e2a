"""Helpers shared by the tests (importable because pytest puts tests/ on sys.path)."""

from __future__ import annotations

import torch
import torch.nn as nn


class one_thread:
    """Context manager: torch on one thread (tiny models and small grids are slower with two)."""

    def __enter__(self):
        self.n = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.n)


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random running statistics and affine parameters (in each buffer's dtype), so
    that checks involving BN cannot pass by its identity initialisation. The train/eval mode is unchanged."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g, dtype=m.running_mean.dtype))
            m.running_var.copy_(torch.rand(c, generator=g, dtype=m.running_var.dtype) + 0.5)
            m.weight.data.copy_(torch.randn(c, generator=g, dtype=m.weight.dtype))
            m.bias.data.copy_(torch.randn(c, generator=g, dtype=m.bias.dtype))
    return model
