"""Standard ResNet blocks on the QL skeleton: the baseline rows of Liu-Shao-Bai Table 1 (docs/design.md §15).

Table 1 compares the blocks of Eqs. (3)-(7) with ResNet50 under one training strategy. To isolate the block, the
baselines here are plain ResNet blocks (He et al. 2016; timm's ``BasicBlock`` and ``Bottleneck``: ReLU, BatchNorm,
bias-free convs) built on :class:`~pdenets.models.qlnet.QLNet`'s skeleton through the same block selection as the
QL blocks (``QLNet(block='resnet_basic' | 'resnet_bottleneck', act='relu', act_placement='all')``), so the stem,
stage widths, strides, stride-2 1×1 skips, pooling and head are the QL networks' own.

* :class:`ResNetBasicBlock` (expansion 1): F(u) = BN(W₂ ReLU(BN(W₁ u))), W₁, W₂ full 3×3 convs (W₁ with stride s).
* :class:`ResNetBottleneck` (expansion 4): F(u) = BN(W₃ ReLU(BN(W₂ ReLU(BN(W₁ u))))), W₁ 1×1 o → p
  (p = o/4, the stage's ``width``), W₂ 3×3 p → p with stride s, W₃ 1×1 p → o — the block of ResNet-50.

``QLNet`` multiplies the stage widths by the block's ``expansion``: with the bottleneck, ``widths=(64, 128, 256,
512)`` are the bottleneck widths and the residual stream is 256/512/1024/2048 wide, exactly as in timm's
``resnet50``; module names follow timm's (``conv1``/``bn1``/... and ``downsample.0/1``), so a timm ResNet's state
dict loads into the equivalent model (``tests/test_resnet_baselines.py``). Weights are initialised by QLNet as
timm does (Kaiming normal, fan-out; the last BN's γ zero with ``zero_init_last``).

Weight-space symmetry (Liu-Shao-Bai §4, docs/design.md §3): every conv is linear in the channels, so W₁ reads the
stream (W → W T⁻¹) and the last conv writes it (W → T W, its folded bias b → T b) for any T; the ReLU after
every addition (``act_placement='all'``) leaves only permutation × positive diagonal T, the well-known ResNet
rescaling symmetry. The blocks declare this like the QL blocks (:meth:`stream_touches`), so ``pdenets symmetry
analyze`` reports a positive-monomial group for every segment, and ``verify``/``transform`` work on them.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from pdenets.layers.ql_blocks import QLBlock, conv1x1
from pdenets.layers.stream import BNFold, Touch

__all__ = ["RESNET_BLOCKS", "ResNetBasicBlock", "ResNetBlock", "ResNetBottleneck"]


def conv3x3(in_chs: int, out_chs: int, stride: int = 1, padding_mode: str = "zeros") -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False, padding_mode=padding_mode)


class ResNetBlock(QLBlock):
    """Common part of the ResNet blocks: :class:`~pdenets.layers.ql_blocks.QLBlock`'s skip (identity, or a 1×1
    conv + BN when the stride or width changes), drop-path and activation after the addition.

    Args:
        in_chs, out_chs, stride: as for the QL blocks (out_chs is the block's output, the residual stream).
        multiplier, weight_sharing, var_coef: options of the derivative convs of Eqs. (3)-(7); a ResNet block has
            none, so only their defaults (4, True, None) are accepted and anything else is refused.
        padding_mode: boundary condition of the 3×3 convs.  Other keywords: see ``QLBlock``.
    """

    expansion: int = 1
    last_bn: str = ""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, multiplier: int = 4, weight_sharing: bool = True,
                 var_coef: str | None = None, **kwargs) -> None:
        bad = {k: v for k, v, d in (("multiplier", multiplier, 4), ("weight_sharing", weight_sharing, True),
                                    ("var_coef", var_coef, None)) if v != d}
        if bad:
            raise ValueError(f"{', '.join(f'{k}={v!r}' for k, v in bad.items())}: an option of the derivative convs "
                             f"of Eqs. (3)-(7); the ResNet block {self.equation!r} has no derivative convs")
        super().__init__(in_chs, out_chs, stride, **kwargs)

    def init_last_bn(self) -> None:
        """γ of the branch's last BN to zero (timm's ``zero_init_last``): the block starts as the identity."""
        bn = getattr(self, self.last_bn, None)
        if self.zero_init_last and isinstance(bn, nn.BatchNorm2d):
            nn.init.zeros_(bn.weight)

    def extra_repr(self) -> str:
        return f"{self.equation}: n={self.in_chs}, o={self.out_chs}, s={self.stride}"


class ResNetBasicBlock(ResNetBlock):
    """ResNet basic block (ResNet-18/34): F(u) = BN(W₂ ReLU(BN(W₁ u))) with 3×3 convs W₁ (n → o, stride s) and
    W₂ (o → o). Parameters: 9no + 9o² + 4o (+ no + 2o for a 1×1 skip)."""

    equation = "resnet_basic"
    expansion = 1
    last_bn = "bn2"

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, **kwargs) -> None:
        super().__init__(in_chs, out_chs, stride, **kwargs)
        self.conv1 = conv3x3(in_chs, out_chs, stride, self.padding_mode)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(out_chs, out_chs, 1, self.padding_mode)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.init_last_bn()

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))

    def stream_touches(self) -> tuple[Touch, ...]:
        """W₁ reads the stream (W₁ → W₁ T⁻¹ over its input channels), W₂ writes it (W₂ → T W₂, bias → T b)."""
        return (Touch("conv1", "read"), Touch("conv2", "write", bias="conv2.bias", bn="bn2"))

    def bn_folds(self) -> tuple[BNFold, ...]:
        return (BNFold("conv1", "bn1"), BNFold("conv2", "bn2"))


class ResNetBottleneck(ResNetBlock):
    """ResNet bottleneck block (ResNet-50): F(u) = BN(W₃ ReLU(BN(W₂ ReLU(BN(W₁ u))))), W₁ 1×1 n → p, W₂ 3×3 p → p
    (stride s), W₃ 1×1 p → o with p = o / 4. Parameters: np + 9p² + po + 4p + 2o (+ no + 2o for a 1×1 skip)."""

    equation = "resnet_bottleneck"
    expansion = 4
    last_bn = "bn3"

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, **kwargs) -> None:
        super().__init__(in_chs, out_chs, stride, **kwargs)
        if out_chs % self.expansion:
            raise ValueError(f"a bottleneck block's output width must be a multiple of {self.expansion}, "
                             f"got {out_chs}")
        mid = out_chs // self.expansion
        self.conv1 = conv1x1(in_chs, mid)
        self.bn1 = nn.BatchNorm2d(mid)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(mid, mid, stride, self.padding_mode)
        self.bn2 = nn.BatchNorm2d(mid)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = conv1x1(mid, out_chs)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.init_last_bn()

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        return self.bn3(self.conv3(x))

    def stream_touches(self) -> tuple[Touch, ...]:
        """W₁ reads the stream (W₁ → W₁ T⁻¹), W₃ writes it (W₃ → T W₃, bias → T b)."""
        return (Touch("conv1", "read"), Touch("conv3", "write", bias="conv3.bias", bn="bn3"))

    def bn_folds(self) -> tuple[BNFold, ...]:
        return (BNFold("conv1", "bn1"), BNFold("conv2", "bn2"), BNFold("conv3", "bn3"))


RESNET_BLOCKS: dict[str, type[ResNetBlock]] = {
    "resnet_basic": ResNetBasicBlock,
    "resnet_bottleneck": ResNetBottleneck,
}
