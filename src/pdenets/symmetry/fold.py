"""Canonical eval form: fold every BatchNorm into its neighbouring convolution.

In eval mode a BatchNorm is the per-channel affine map ``y = s ⊙ x + b`` with ``s = γ / sqrt(var + eps)`` and
``b = β − s ⊙ mean``. Folding it into the conv that precedes it leaves the function unchanged and leaves the
residual stream read and written only by affine maps (docs/design.md §3), which is the form in which the change
of basis T of Liu-Shao-Bai §4 acts (readers W → W T⁻¹, writers A → T A).

What :func:`fold_bn` does is declared by the model and its blocks (``stream_spec().folds``,
:class:`~pdenets.layers.stream.BNFold`; :mod:`pdenets.layers.ql_blocks`):

* ``'conv'`` — the stem ``conv1 + bn1``, every skip ``Sequential(conv1x1, BN)``, ``conv_a + bn_a`` (Eqs. 3, 3p,
  6, 7): the conv gets the scale and a bias, the BN becomes ``Identity``;
* ``'depthwise'`` — ``conv_d + bn_d`` (all equations): the derivative conv becomes a :class:`FoldedDepthwise`
  with one kernel per output channel and a bias — a per-channel BN scale un-shares the "ws" kernels;
* ``'product'`` — Eq. (4), where ``bn_a`` follows the elementwise product ``A[BN(D u)] ⊙ (C u)``: the scale goes
  into the rows of ``conv_a`` (the product is bilinear) and the shift stays as a :class:`ChannelBias`.

Any other module laid out as timm's ResNet (``convK`` followed by ``bnK`` in the same module, or a
``Sequential(conv, BN)``) is folded by the same rule, so timm ``resnet*`` models fold too.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from pdenets.artifacts import add_edit
from pdenets.layers.derivative import DerivativeConv, pad_conv2d
from pdenets.layers.stream import BNFold

__all__ = ["ChannelBias", "FoldedDepthwise", "bn_scale_shift", "fold_bn", "is_folded"]


class FoldedDepthwise(nn.Module):
    """A derivative conv with its BatchNorm folded: depthwise 3×3, per-channel scale and bias.

    ``weight`` holds either one kernel per output channel (``shared=False``; the BN scale is multiplied in and
    ``scale`` is ``None``) or the shared "ws" kernels (``shared=True``; then output channel c applies kernel
    ``kernel_index[c]`` times ``scale[c]``, which keeps the parameter count of the unfolded conv + BN).
    Output channel c reads input channel ``c // (out_channels // groups)`` (``groups`` = input channels).
    """

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor, groups: int, stride: int, padding_mode: str,
        scale: torch.Tensor | None = None, kernel_index: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias)
        self.scale = nn.Parameter(scale) if scale is not None else None
        self.shared = scale is not None
        if self.shared:
            self.register_buffer("kernel_index", kernel_index.clone(), persistent=False)
        self.groups, self.stride, self.padding_mode = groups, stride, padding_mode

    def artifact_config(self) -> dict:
        """Shapes and settings to rebuild this module from an artifact (:mod:`pdenets.artifacts`)."""
        return dict(weight=list(self.weight.shape), channels=self.bias.shape[0], groups=self.groups,
                    stride=self.stride, padding_mode=self.padding_mode, shared=self.shared,
                    kernel_index=self.kernel_index.tolist() if self.shared else None)

    @classmethod
    def from_artifact_config(cls, c: dict) -> FoldedDepthwise:
        n = c["channels"]
        return cls(torch.zeros(c["weight"]), torch.zeros(n), c["groups"], c["stride"], c["padding_mode"],
                   scale=torch.zeros(n) if c["shared"] else None,
                   kernel_index=torch.tensor(c["kernel_index"]) if c["shared"] else None)

    def derivative_stencils(self) -> torch.Tensor:
        """The stencils of the folded derivative conv (the shared kernels, or one per channel with its BN
        scale multiplied in): read by :func:`pdenets.pde.operators.kernel_report`."""
        return self.weight

    def full_weight(self) -> torch.Tensor:
        if not self.shared:
            return self.weight
        return self.weight[self.kernel_index] * self.scale.view(-1, 1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pad_conv2d(x, self.full_weight(), self.stride, self.padding_mode, groups=self.groups, bias=self.bias)

    def extra_repr(self) -> str:
        return (f"{self.groups}, {self.bias.shape[0]}, stride={self.stride}, padding_mode={self.padding_mode!r}, "
                f"shared={self.shared}")


class ChannelBias(nn.Module):
    """Adds a per-channel bias (the shift of a BN folded after an elementwise product, Eq. (4))."""

    def __init__(self, bias: torch.Tensor) -> None:
        super().__init__()
        self.bias = nn.Parameter(bias)

    def artifact_config(self) -> dict:
        return dict(channels=self.bias.shape[0])

    @classmethod
    def from_artifact_config(cls, c: dict) -> ChannelBias:
        return cls(torch.zeros(c["channels"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x + self.bias.view(shape)


def bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, b) with BN(x) = s ⊙ x + b in eval mode."""
    if bn.running_var is None or bn.running_mean is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    s = torch.rsqrt(bn.running_var + bn.eps)
    w = bn.weight if bn.weight is not None else torch.ones_like(s)
    b = bn.bias if bn.bias is not None else torch.zeros_like(s)
    s = w * s
    return s.detach().clone(), (b - s * bn.running_mean).detach().clone()


def _fold_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    s, b = bn_scale_shift(bn)
    with torch.no_grad():
        conv.weight.mul_(s.view(-1, 1, 1, 1).to(conv.weight.dtype))
        old = conv.bias.detach() * s if conv.bias is not None else torch.zeros_like(s)
        conv.bias = nn.Parameter((old + b).to(conv.weight.dtype))


def _kernel_index(conv: DerivativeConv) -> torch.Tensor:
    idx = torch.arange(conv.weight.shape[0])
    if conv.interleave == "channel":
        return idx.repeat(conv.channels)
    return idx.repeat_interleave(conv.channels // conv.kernels)


def _fold_derivative(conv: DerivativeConv, bn: nn.BatchNorm2d, share_kernels: bool) -> FoldedDepthwise:
    s, b = bn_scale_shift(bn)
    dt = conv.weight.dtype
    s, b = s.to(dt), b.to(dt)
    if share_kernels and conv.weight_sharing:
        return FoldedDepthwise(conv.weight.detach().clone(), b, conv.channels, conv.stride, conv.padding_mode,
                               scale=s, kernel_index=_kernel_index(conv))
    w = conv.full_weight().detach().clone() * s.view(-1, 1, 1, 1)
    return FoldedDepthwise(w, b, conv.channels, conv.stride, conv.padding_mode)


def _set_submodule(root: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, attr = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, new)


def _fold_declared(module: nn.Module, folds: tuple[BNFold, ...], share_kernels: bool) -> None:
    """Apply the BN folds a block (or the network) declares (:class:`~pdenets.layers.stream.BNFold`)."""
    for f in folds:
        bn = module.get_submodule(f.bn)
        if not isinstance(bn, nn.BatchNorm2d):
            continue  # already folded
        conv = module.get_submodule(f.conv)
        if f.kind == "depthwise":
            _set_submodule(module, f.conv, _fold_derivative(conv, bn, share_kernels))
            _set_submodule(module, f.bn, nn.Identity())
        elif f.kind == "product":
            # BN(a ⊙ c) = (s ⊙ a) ⊙ c + b: scale into the conv's rows, shift kept after the product.
            s, b = bn_scale_shift(bn)
            with torch.no_grad():
                conv.weight.mul_(s.view(-1, 1, 1, 1).to(conv.weight.dtype))
            _set_submodule(module, f.bn, ChannelBias(b.to(conv.weight.dtype)))
        else:
            _fold_into_conv(conv, bn)
            _set_submodule(module, f.bn, nn.Identity())


def _declared_folds(module: nn.Module) -> tuple[BNFold, ...]:
    spec = getattr(module, "stream_spec", None)
    return spec().folds if callable(spec) else ()


def _fold_generic(module: nn.Module) -> None:
    """timm ResNet layout: ``Sequential(conv, BN, ...)`` pairs and ``convK``/``bnK`` attribute pairs."""
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = module._modules[a], module._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                _fold_into_conv(conv, bn)
                module._modules[b] = nn.Identity()
    for name, conv in list(module._modules.items()):
        if isinstance(conv, nn.Sequential) and len(conv) and isinstance(conv[-1], nn.Conv2d):
            conv = conv[-1]  # timm's deep stem: conv1 = Sequential(..., conv) followed by bn1
        if not (isinstance(conv, nn.Conv2d) and name.startswith("conv")):
            continue
        bn_name = "bn" + name[len("conv"):]
        bn = module._modules.get(bn_name)
        if isinstance(bn, nn.BatchNorm2d):
            _fold_into_conv(conv, bn)
            module._modules[bn_name] = nn.Identity()


def fold_bn(model: nn.Module, share_kernels: bool = False) -> nn.Module:
    """Deep copy of ``model`` in eval mode with every BatchNorm folded into its neighbouring conv.

    ``share_kernels=False`` (default) turns a "ws" derivative conv + BN into one kernel per channel with a bias
    (one plain depthwise conv, the fastest form). ``share_kernels=True`` keeps the shared kernels and stores the
    BN scale as a per-channel ``scale`` (same parameter count as the unfolded model: used by compression).

    The outputs are unchanged (up to round-off: ≤ 1e-12 relative in float64). The copy keeps the module
    tree (BNs become ``nn.Identity`` or :class:`ChannelBias`), so names such as ``layer2.0.conv_a`` still
    address the same operation. Raises ``ValueError`` if a BatchNorm is left that has no foldable neighbour.
    """
    model = copy.deepcopy(model).eval()
    for m in list(model.modules()):
        _fold_declared(m, _declared_folds(m), share_kernels)
    for m in list(model.modules()):
        _fold_generic(m)
    left = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if left:
        raise ValueError(f"fold_bn: no conv to fold BatchNorm(s) {', '.join(left[:5])} into")
    add_edit(model, "fold_bn", share_kernels=share_kernels)
    return model


def is_folded(model: nn.Module) -> bool:
    return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
