"""The "derivative" convolution of Liu-Shao-Bai §5.1: a depthwise 3×3 conv that turns each input channel
u_j into m channels, one per learned difference operator (∂/∂x, ∂/∂y, ... made trainable).

With weight sharing ("ws", the paper's default) a single m×1×3×3 kernel is stored once and repeated over
the channels at run time, so output channel m·j + d is kernel d applied to u_j for every j: the same
operators act on every channel, which is what makes channel mixing commute with them. Without weight
sharing ("no ws") every output channel has its own kernel (a plain depthwise conv).

Padding (the boundary condition, §3 and Appendix of the paper): 'zeros' (Dirichlet-like), 'reflect' or
'replicate' (Neumann-like) or 'circular' (periodic).
"""

from __future__ import annotations

import math

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_function

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def check_padding_mode(mode: str) -> str:
    if mode not in PADDING_MODES:
        raise ValueError(f"unknown padding mode {mode!r}; expected one of {', '.join(PADDING_MODES)}")
    return mode


def pad_conv2d(
    x: torch.Tensor, weight: torch.Tensor, stride: int = 1, padding_mode: str = "zeros", groups: int = 1,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``F.conv2d`` with 'same' padding of an odd kernel under any of :data:`PADDING_MODES`."""
    p = weight.shape[-1] // 2
    if padding_mode == "zeros" or p == 0:
        return F.conv2d(x, weight, bias, stride, p, 1, groups)
    x = F.pad(x, (p, p, p, p), mode=padding_mode)
    return F.conv2d(x, weight, bias, stride, 0, 1, groups)


# A leaf of torch.fx graphs (plain symbolic_trace: torch.fx.wrap, which patches this module's calls; timm's and
# torchvision's tracers: timm's registry, which covers every caller): its branch reads the padding mode and the
# kernel size, fixed by the module, not data; traced through, `weight.shape[-1]` would be a Proxy
# (docs/design.md §12).
torch.fx.wrap("pad_conv2d")
register_notrace_function(pad_conv2d)


class DerivativeConv(nn.Module):
    """Depthwise 3×3 "derivative" conv, n → m·n channels (Liu-Shao-Bai §5.1, Fig. 1).

    Args:
        channels: n, the number of input channels.
        multiplier: m, derivative channels per input channel (2, 4 or 6 in the paper's experiments).
        weight_sharing: store one m×1×k×k kernel shared by all channels (``True``) or n·m kernels.
        stride: 1, or 2 in the downsampling block of a stage.
        padding_mode: boundary condition, one of :data:`PADDING_MODES`.
        interleave: output channel order. ``'channel'`` (default): channel m·j + d is kernel d applied to
            u_j. ``'kernel'``: the input already has m·n' channels laid out as (d, j) and channel d·n' + j
            uses kernel d (used by Eq. (7), whose derivative acts on products; then ``multiplier`` of
            the conv itself is 1 and ``kernels`` gives the number of shared kernels).
    """

    def __init__(
        self,
        channels: int,
        multiplier: int = 4,
        weight_sharing: bool = True,
        stride: int = 1,
        padding_mode: str = "zeros",
        kernel_size: int = 3,
        interleave: str = "channel",
        kernels: int | None = None,
    ) -> None:
        super().__init__()
        if channels < 1 or multiplier < 1:
            raise ValueError(f"channels and multiplier must be positive, got {channels} and {multiplier}")
        if interleave not in ("channel", "kernel"):
            raise ValueError(f"interleave must be 'channel' or 'kernel', got {interleave!r}")
        if interleave == "kernel":
            if kernels is None or channels % kernels:
                raise ValueError(f"interleave='kernel' needs `kernels` dividing channels={channels}")
            if multiplier != 1:
                raise ValueError("interleave='kernel' is a one-to-one depthwise conv: multiplier must be 1")
        self.channels = channels
        self.multiplier = multiplier
        self.out_channels = channels * multiplier
        self.weight_sharing = weight_sharing
        self.stride = stride
        self.padding_mode = check_padding_mode(padding_mode)
        self.interleave = interleave
        self.kernels = kernels if interleave == "kernel" else multiplier
        n_kernels = self.kernels if weight_sharing else self.out_channels
        self.weight = nn.Parameter(torch.empty(n_kernels, 1, kernel_size, kernel_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Kaiming-normal with fan_out as timm's ResNet init does for convs: fan_out = (out/groups)·k².
        fan_out = self.multiplier * self.weight.shape[-1] ** 2
        nn.init.normal_(self.weight, 0.0, math.sqrt(2.0 / fan_out))

    def derivative_stencils(self) -> torch.Tensor:
        """The stored stencils (m×1×k×k with weight sharing, else one per output channel): what
        :func:`pdenets.pde.operators.kernel_report` expresses in the operator basis."""
        return self.weight

    def full_weight(self) -> torch.Tensor:
        """The (m·n)×1×k×k depthwise kernel actually applied (shared kernels expanded)."""
        if not self.weight_sharing:
            return self.weight
        if self.interleave == "channel":
            return self.weight.repeat(self.channels, 1, 1, 1)
        return self.weight.repeat_interleave(self.channels // self.kernels, dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pad_conv2d(x, self.full_weight(), self.stride, self.padding_mode, groups=self.channels)

    def extra_repr(self) -> str:
        return (
            f"{self.channels}, {self.out_channels}, ws={self.weight_sharing}, stride={self.stride}, "
            f"padding_mode={self.padding_mode!r}, stored_kernels={self.weight.shape[0]}"
        )
