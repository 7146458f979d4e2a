"""Activations of Liu-Shao-Bai §3: hardtanh and the radial "hardball" and "softball".

For a feature map x of shape (N, C, H, W) (or (N, C)) the radial activations act on the vector of the C
channels at each pixel, with |x| the Euclidean norm over the channel dimension:

    hardball(x) = x                 if |x| <  R
                = R x / |x|         if |x| >= R
    softball(x) = x / sqrt(1 + |x|^2 / R^2)

with R = sqrt(C) by default. Both depend on x only through |x| and the direction x/|x|, so they are
O(C)-equivariant: act(Q x) = Q act(x) for every orthogonal Q acting on channels (the reason §4 of the
paper finds an O(n) symmetry).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from pdenets.layers.tracing import is_symbolic_tracing

ACTIVATIONS = ("none", "relu", "hardtanh", "hardball", "softball")


def _sq_norm(x: torch.Tensor) -> torch.Tensor:
    return (x * x).sum(dim=1, keepdim=True)


def hardball(x: torch.Tensor, radius: float) -> torch.Tensor:
    """Project each pixel's channel vector onto the ball of radius ``radius``.

    Written as x * R / max(|x|, R): the maximum is never below R, so neither the value nor the gradient
    can divide by zero (a naive R x/|x| branch gives NaN gradients at x = 0 even when unused).
    """
    r2 = radius * radius
    return x * (radius * torch.rsqrt(torch.clamp(_sq_norm(x), min=r2)))


def softball(x: torch.Tensor, radius: float) -> torch.Tensor:
    """x / sqrt(1 + |x|^2 / R^2), the smooth version of :func:`hardball`."""
    return x * torch.rsqrt(1.0 + _sq_norm(x) / (radius * radius))


class _Radial(nn.Module):
    def __init__(self, channels: int | None = None, radius: float | None = None) -> None:
        super().__init__()
        if radius is None:
            if channels is None:
                raise ValueError("a radial activation needs `channels` (R = sqrt(channels)) or `radius`")
            radius = math.sqrt(channels)
        if not radius > 0:
            raise ValueError(f"radius must be positive, got {radius}")
        self.radius = float(radius)
        self.channels = channels

    def extra_repr(self) -> str:
        return f"radius={self.radius:.4g}"

    def _check(self, x: torch.Tensor) -> None:
        """The input check (not while torch.fx traces, whose shapes are symbolic; TorchScript skips the call)."""
        if is_symbolic_tracing():
            return
        if x.dim() < 2:
            raise ValueError(f"expected a tensor of shape (N, C, ...), got shape {tuple(x.shape)}")


class HardBall(_Radial):
    """Module form of :func:`hardball` (Liu-Shao-Bai §3); R = sqrt(channels) unless ``radius`` is given."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            self._check(x)
        return hardball(x, self.radius)


class SoftBall(_Radial):
    """Module form of :func:`softball` (Liu-Shao-Bai §3); R = sqrt(channels) unless ``radius`` is given."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            self._check(x)
        return softball(x, self.radius)


def create_act(
    name: str | None, channels: int | None = None, radius: float | None = None, inplace: bool = False
) -> nn.Module:
    """Build an activation by name: none, relu, hardtanh (clip to ±1), hardball, softball."""
    name = (name or "none").lower()
    if name in ("none", "identity"):
        return nn.Identity()
    if name == "relu":
        return nn.ReLU(inplace=inplace)
    if name == "hardtanh":
        return nn.Hardtanh(-1.0, 1.0, inplace=inplace)
    if name == "hardball":
        return HardBall(channels, radius)
    if name == "softball":
        return SoftBall(channels, radius)
    raise ValueError(f"unknown activation {name!r}; expected one of {', '.join(ACTIVATIONS)}")


def parse_act_spec(spec: str) -> tuple[str, str]:
    """Split the paper's notation 'softball@ds' into ('softball', 'ds'); a bare name means '@ds'."""
    name, _, placement = spec.partition("@")
    placement = placement or "ds"
    if name.lower() not in ACTIVATIONS + ("identity",):
        raise ValueError(f"unknown activation {name!r}; expected one of {', '.join(ACTIVATIONS)}")
    if placement not in ("ds", "all"):
        raise ValueError(f"unknown activation placement {placement!r}; expected 'ds' or 'all'")
    return name.lower(), placement


__all__ = ["ACTIVATIONS", "HardBall", "SoftBall", "create_act", "hardball", "parse_act_spec", "softball"]
