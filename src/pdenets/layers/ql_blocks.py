"""Residual blocks of the quasi-linear hyperbolic ConvNet (Liu-Shao-Bai, Eqs. (3)-(7), Fig. 1).

Each block computes ``u ↦ act(skip(u) + F(u))``: the residual connection is the forward-Euler time step
of ∂u/∂t = F(u), and F is one of the quasi-linear right-hand sides below. The paper's matrices become
convolutions:

* ``conv_d`` — **D**, the "derivative" conv: depthwise 3×3, each channel u_j → m channels, one per
  learned difference operator (∂/∂x, ∂/∂y, ... ; :class:`~pdenets.layers.derivative.DerivativeConv`);
* ``conv_c`` — **C** (with D's y-part folded in: "C and D stacked into one"), the 1×1 conv producing
  the u-dependent coefficients;
* ``conv_a`` — **A** (with **B** stacked: "A and B stacked into one"), the 1×1 conv mixing back to the
  output channels;
* ``conv_p`` — **P**, the 1×1 premix of :class:`Eq3PBlock` only.

BatchNorm follows the depthwise conv (``bn_d``) and ends the branch (``bn_a``, γ initialised to zero),
never on the 1×1 C branch. All convs are bias-free. Parameter counts reproduce Table 1 of the paper (see
docs/design.md §2 and ``tests/test_param_counts.py``). Notation: n input channels, o output channels,
m derivative channels per input channel (4, or 6 for "x6"), s the stride.

Every block also declares how it touches the residual stream (:meth:`QLBlock.stream_spec`,
:mod:`pdenets.layers.stream`): which 1×1 maps read it (W → W T⁻¹) or write it (A → T A), which operations read
or write it channel by channel (forcing a monomial T, with the rule the internal channels follow), and how its
BatchNorms fold. :mod:`pdenets.symmetry` works from these declarations only (docs/design.md §3).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from timm.layers import DropPath

from pdenets.layers.activations import create_act
from pdenets.layers.derivative import DerivativeConv
from pdenets.layers.fused import auto_fused, conv_bn, fused_derivative_bn, to_direction_major
from pdenets.layers.stream import BlockSpec, BNFold, Channels, Touch
from pdenets.layers.tracing import is_tracing
from pdenets.layers.varcoef import CoordinateCoefficients


def conv1x1(in_chs: int, out_chs: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False)


class QLBlock(nn.Module):
    """Common machinery of the blocks: shortcut, drop-path, the optional activation after the addition.

    Subclasses define :meth:`branch`, the right-hand side F(u) of their equation.

    Args:
        in_chs: n.  out_chs: o.  stride: s (2 in the first block of stages 2-4).
        multiplier: m, derivative channels per input channel.
        weight_sharing: one m×1×3×3 derivative kernel shared by all channels ("ws") or one per channel.
        act: activation applied after the residual addition of this block ('none' for most blocks).
        radius: radius of hardball/softball (default sqrt(o)).
        padding_mode: boundary condition of the derivative conv ('zeros', 'reflect', 'replicate',
            'circular').
        var_coef: None, 'affine' or 'quadratic': multiply the derivative channels by learned functions of
            the pixel coordinates (§3 first bullet; :mod:`pdenets.layers.varcoef`); then ``conv_d`` is
            ``nn.Sequential(DerivativeConv, CoordinateCoefficients)``.
        zero_init_last: initialise the last BN's γ to zero so the block starts as the identity.
        drop_path: stochastic-depth rate.
        fused: compute the derivative conv, its BatchNorm and (Eqs. (3), (3p), (5)) the coefficient product
            with :func:`~pdenets.layers.fused.fused_derivative_bn` (the same function as one custom op,
            ``torch.ops.pdenets.derivative_bn``, computed in channels_last as one multiplier-1 depthwise conv;
            about half the activation memory in training, the BNs folded into the convs at inference; under
            ``torch.compile`` inductor keeps the op whole). ``None`` (default): the path measured fastest for
            the current mode (training / inference, eager / compiled:
            :data:`~pdenets.layers.fused.AUTO_FUSED`, docs/design.md §17), never with ``var_coef`` (its
            coefficients sit between D and its BN); ``True``: always (an error with ``var_coef``); ``False``:
            never (the modules one by one, their forward hooks fire). Speed and memory of both paths:
            ``benchmarks/README.md``. While the model is scripted or traced (``torch.jit``, ``torch.fx``) the
            blocks take the module path whatever ``fused`` says: no such tracer records the custom op with its
            autograd (docs/design.md §12).
    """

    equation: str = ""
    __jit_unused_properties__ = ["use_fused"]  # TorchScript: the scripted blocks always take the module path

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int = 1,
        multiplier: int = 4,
        weight_sharing: bool = True,
        act: str = "none",
        radius: float | None = None,
        padding_mode: str = "zeros",
        var_coef: str | None = None,
        zero_init_last: bool = True,
        drop_path: float = 0.0,
        fused: bool | None = None,
    ) -> None:
        super().__init__()
        if in_chs < 1 or out_chs < 1:
            raise ValueError(f"channel counts must be positive, got in_chs={in_chs}, out_chs={out_chs}")
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if not isinstance(multiplier, int) or multiplier < 1:
            raise ValueError(f"multiplier (expansion) must be a positive integer such as 4 or 6, got {multiplier!r}")
        self.in_chs, self.out_chs, self.stride = in_chs, out_chs, stride
        self.multiplier, self.weight_sharing, self.padding_mode = multiplier, weight_sharing, padding_mode
        self.zero_init_last = zero_init_last
        self.fused = fused
        if stride != 1 or in_chs != out_chs:
            self.downsample: nn.Module | None = nn.Sequential(
                conv1x1(in_chs, out_chs, stride), nn.BatchNorm2d(out_chs)
            )
        else:
            self.downsample = None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.act = create_act(act, out_chs, radius)
        self.act_name = act
        self.var_coef = var_coef

    def _derivative(self, channels: int, stride: int) -> nn.Module:
        return self._with_var_coef(DerivativeConv(
            channels, self.multiplier, self.weight_sharing, stride=stride, padding_mode=self.padding_mode
        ))

    def _with_var_coef(self, conv: DerivativeConv) -> nn.Module:
        """``conv``, followed by the coordinate-dependent coefficients when ``var_coef`` is set."""
        if getattr(self, "var_coef", None) is None:
            return conv
        if getattr(self, "fused", False):
            raise ValueError("var_coef cannot be combined with fused=True")
        return nn.Sequential(conv, CoordinateCoefficients(conv.out_channels, self.var_coef))

    @property
    def use_fused(self) -> bool:
        """Whether :meth:`branch` takes the fused path now (see ``fused``; never while jit- or fx-traced)."""
        if getattr(self, "var_coef", None) is not None:
            return False  # the coordinate coefficients sit between D and its BN: reference path only
        if is_tracing():
            return False  # the traceable module path (docs/design.md §12)
        return auto_fused(self.training) if self.fused is None else bool(self.fused)

    def _fused_a(
        self, xd: torch.Tensor, xc: torch.Tensor | None = None, conv_c: nn.Module | None = None,
        bn: nn.Module | None = None,
    ) -> torch.Tensor:
        """``conv_a(BN(D x_d) [⊙ C x_c])`` on the fused path, followed by ``bn`` when given (folded into A
        in eval mode, :func:`~pdenets.layers.fused.conv_bn`).

        The fused op hands over its m·n channels direction-major (no reordering copy), so A reads them with
        its columns reordered the same way (:func:`~pdenets.layers.fused.to_direction_major`).
        """
        z = fused_derivative_bn(xd, self.conv_d, self.bn_d, xc, conv_c, direction_major=True)
        w = to_direction_major(self.conv_a.weight, z.shape[1] // xd.shape[1], 1)
        if bn is None:
            return self.conv_a._conv_forward(z, w, self.conv_a.bias)
        return conv_bn(self.conv_a, bn, z, weight=w)

    def init_last_bn(self) -> None:
        bn = getattr(self, "bn_a", None)
        if self.zero_init_last and isinstance(bn, nn.BatchNorm2d):
            nn.init.zeros_(bn.weight)

    def branch(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    # ---- how the block touches the residual stream (docs/design.md §3) ---------------------------------------
    def stream_touches(self) -> tuple[Touch, ...]:
        """The touches of the branch F (subclasses): readers, writers, channelwise operations."""
        return ()

    def bn_folds(self) -> tuple[BNFold, ...]:
        """How the branch's BatchNorms fold in eval mode (subclasses)."""
        return ()

    def _raw_read(self, reason: str, fan: int, layout: str = "grouped", **follow: tuple[str, ...]) -> Touch:
        """D or a product reads the raw stream channel by channel: T must be monomial (docs/design.md §3)."""
        return Touch("conv_d", "read_channelwise", reason=reason,
                     channels=Channels("d", fan=fan, layout=layout, **follow))

    def stream_spec(self) -> BlockSpec:
        """The block's declaration: the branch's touches, then the skip (S → T_out S T_in⁻¹), the activation."""
        touches, folds = self.stream_touches(), self.bn_folds()
        if self.downsample is not None:
            touches += (Touch("downsample.0", "read"),
                        Touch("downsample.0", "write", bias="downsample.0.bias", bn="downsample.1"))
            folds += (BNFold("downsample.0", "downsample.1"),)
        return BlockSpec(touches, folds, acts=("act",), label=self.equation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is None:
            shortcut = x
        elif torch.jit.is_scripting():
            shortcut = self.downsample(x)
        elif self.use_fused and isinstance(self.downsample, nn.Sequential) and len(self.downsample) == 2:
            shortcut = conv_bn(self.downsample[0], self.downsample[1], x)  # BN folded in eval mode
        else:
            shortcut = self.downsample(x)
        return self.act(shortcut + self.drop_path(self.branch(x)))

    def extra_repr(self) -> str:
        return f"{self.equation}: n={self.in_chs}, o={self.out_chs}, s={self.stride}, m={self.multiplier}"


class Eq3Block(QLBlock):
    """Eq. (3): ∂u_i/∂t = Σ_j A_ij Σ_k C_jk u_k ∂u_j/∂x + Σ_j B_ij Σ_k D_jk u_k ∂u_j/∂y  (Fig. 1).

    F(u) = BN(A [ BN(D u) ⊙ (C u) ]) with D the derivative conv n → mn (stride s), C a 1×1 conv n → mn
    (stride s) giving the coefficients Σ_k C_jk u_k for each derivative channel, and A a 1×1 conv mn → o.
    Parameters (ws, m = 4): 4n² + 36 + 8n + 4no + 2o.
    """

    equation = "eq3"

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, **kwargs) -> None:
        super().__init__(in_chs, out_chs, stride, **kwargs)
        mid = in_chs * self.multiplier
        self.conv_d = self._derivative(in_chs, stride)
        self.bn_d = nn.BatchNorm2d(mid)
        self.conv_c = conv1x1(in_chs, mid, stride)
        self.conv_a = conv1x1(mid, out_chs)
        self.bn_a = nn.BatchNorm2d(out_chs)
        self.init_last_bn()

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():  # its own `if`: TorchScript compiles only the module path
            if self.use_fused:
                return self._fused_a(x, x, self.conv_c, bn=self.bn_a)
        return self.bn_a(self.conv_a(self.bn_d(self.conv_d(x)) * self.conv_c(x)))

    def stream_touches(self) -> tuple[Touch, ...]:
        """D reads u_j into channels m·j + d (kernels ÷ λ_j); C → C T⁻¹ and its rows, A's columns follow them."""
        return (self._raw_read("depthwise D reads the raw stream", self.multiplier, kernels=("conv_d",),
                               rows=("conv_c",), cols=("conv_a",)),
                Touch("conv_c", "read"), Touch("conv_a", "write", bias="conv_a.bias", bn="bn_a"))

    def bn_folds(self) -> tuple[BNFold, ...]:
        return (BNFold("conv_d", "bn_d", "depthwise"), BNFold("conv_a", "bn_a"))


class Eq3PBlock(Eq3Block):
    """Eq. (3) with a 1×1 premix P: F(u) = BN(A [ BN(D P u) ⊙ (C u) ]).

    Why it exists (docs/design.md §3): in Eq. (3) as written the depthwise conv D reads the residual stream
    channel by channel, so a change of basis u → T u of the stream only leaves the output unchanged for
    monomial T (permutation × diagonal). Reading the stream only through learned linear maps (P, C and
    the skip) makes the paper's §4 symmetry exact: P → P T⁻¹, C → C T⁻¹, A → T A keeps the function for
    every T ∈ GL(n) (identity activations) or T ∈ O(n) (hardball/softball). Costs n² parameters per block.
    """

    equation = "eq3p"

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, **kwargs) -> None:
        super().__init__(in_chs, out_chs, stride, **kwargs)
        self.conv_p = conv1x1(in_chs, in_chs)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            if self.use_fused:
                return self._fused_a(self.conv_p(x), x, self.conv_c, bn=self.bn_a)
        return self.bn_a(self.conv_a(self.bn_d(self.conv_d(self.conv_p(x))) * self.conv_c(x)))

    def stream_touches(self) -> tuple[Touch, ...]:
        """Only 1×1 maps touch the stream: P → P T⁻¹, C → C T⁻¹, A → T A for every T (GL)."""
        return (Touch("conv_p", "read", gauge=True), Touch("conv_c", "read"),
                Touch("conv_a", "write", bias="conv_a.bias", bn="bn_a"))


class Eq4Block(QLBlock):
    """Eq. (4): ∂u_i/∂t = Σ_k C_ik u_k Σ_j A_ij ∂u_j/∂x + Σ_k D_ik u_k Σ_j B_ij ∂u_j/∂y.

    The mixing A acts on the derivatives before the product (design 4a of docs/design.md §2):
    F(u) = BN( A[BN(D u)] ⊙ (C u) ), D: n → mn (stride s), A: 1×1 mn → o, C: 1×1 n → o (stride s),
    product in o channels.
    """

    equation = "eq4"

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, **kwargs) -> None:
        super().__init__(in_chs, out_chs, stride, **kwargs)
        mid = in_chs * self.multiplier
        self.conv_d = self._derivative(in_chs, stride)
        self.bn_d = nn.BatchNorm2d(mid)
        self.conv_a = conv1x1(mid, out_chs)
        self.conv_c = conv1x1(in_chs, out_chs, stride)
        self.bn_a = nn.BatchNorm2d(out_chs)
        self.init_last_bn()

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            if self.use_fused:
                return self.bn_a(self._fused_a(x) * self.conv_c(x))
        return self.bn_a(self.conv_a(self.bn_d(self.conv_d(x))) * self.conv_c(x))

    def stream_touches(self) -> tuple[Touch, ...]:
        """D reads the raw stream (A's columns follow it); the product A[D u] ⊙ C u lies in the output channels:
        T_out monomial (Π, μ), A → T_out A, C → Π C T_in⁻¹, the kept BN shift b → T_out b."""
        return (self._raw_read("depthwise D reads the raw stream", self.multiplier, kernels=("conv_d",),
                               cols=("conv_a",)),
                Touch("conv_c", "read"), Touch("conv_a", "write", bias="bn_a.bias", bn="bn_a"),
                Touch("product", "write_channelwise", channels=Channels("out", rows=("conv_c",)),
                      reason="A(Du) ⊙ Cu is a product in the stream channels"))

    def bn_folds(self) -> tuple[BNFold, ...]:
        return (BNFold("conv_d", "bn_d", "depthwise"), BNFold("conv_a", "bn_a", "product"))


class Eq5Block(QLBlock):
    """Eq. (5): ∂u_i/∂t = Σ_k C_ik u_k ∂u_i/∂x + Σ_k D_ik u_k ∂u_i/∂y — each u_i sees only its own
    derivatives (design 5a of docs/design.md §2; the paper leaves the layout open).

    F(u) = S[ BN(D u) ⊙ (C u) ] with D: n → mn (stride s), C: 1×1 n → mn (stride s), and S the
    parameter-free sum of each group of mn/o consecutive channels (the m directions of one u_i when
    o = n; pairs of them in a downsampling block where o = 2n). No A, no end BN. Requires o | mn.
    """

    equation = "eq5"

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, **kwargs) -> None:
        super().__init__(in_chs, out_chs, stride, **kwargs)
        mid = in_chs * self.multiplier
        if mid % out_chs:
            raise ValueError(
                f"Eq. (5) sums groups of m·n/o channels, so o={out_chs} must divide m·n={mid}; "
                f"use a multiplier that is a multiple of {out_chs // math.gcd(in_chs, out_chs)}"
            )
        self.group = mid // out_chs
        self.conv_d = self._derivative(in_chs, stride)
        self.bn_d = nn.BatchNorm2d(mid)
        self.conv_c = conv1x1(in_chs, mid, stride)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            y = self.bn_d(self.conv_d(x)) * self.conv_c(x)
        elif self.use_fused:
            y = fused_derivative_bn(x, self.conv_d, self.bn_d, x, self.conv_c)
        else:
            y = self.bn_d(self.conv_d(x)) * self.conv_c(x)
        return y.view(y.shape[0], self.out_chs, self.group, y.shape[2], y.shape[3]).sum(2)

    def stream_touches(self) -> tuple[Touch, ...]:
        """D reads u_j into channels m·j + d, and the fixed sum writes groups of g = m·n/o of them into output
        i: both permutations act on the same m·n channels, so T_out's is lifted from T_in's; the rows of C
        take T_out's scales μ_i (C → μ ⊙ C T_in⁻¹, rows moved)."""
        return (self._raw_read("depthwise D reads the raw stream", self.multiplier, kernels=("conv_d",),
                               rows=("conv_c",)),
                Touch("conv_c", "read"),
                Touch("sum", "write_channelwise", channels=Channels("d", fan=self.group, scale_rows=("conv_c",)),
                      reason="the fixed sum S writes the stream channel by channel"))

    def bn_folds(self) -> tuple[BNFold, ...]:
        return (BNFold("conv_d", "bn_d", "depthwise"),)


class Eq6Block(QLBlock):
    """Eq. (6): ∂u_i/∂t = Σ_j A_ij ∂/∂x Σ_k C_jk u_j u_k + Σ_j B_ij ∂/∂y Σ_k C_jk u_j u_k
    (a system of conservation laws: the derivative acts on the product).

    F(u) = BN(A [ BN(D (u ⊙ C u)) ]) with C: 1×1 n → n at full resolution, D: n → mn (stride s),
    A: 1×1 mn → o.
    """

    equation = "eq6"

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, **kwargs) -> None:
        super().__init__(in_chs, out_chs, stride, **kwargs)
        mid = in_chs * self.multiplier
        self.conv_c = conv1x1(in_chs, in_chs)
        self.conv_d = self._derivative(in_chs, stride)
        self.bn_d = nn.BatchNorm2d(mid)
        self.conv_a = conv1x1(mid, out_chs)
        self.bn_a = nn.BatchNorm2d(out_chs)
        self.init_last_bn()

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            if self.use_fused:
                return self._fused_a(x * self.conv_c(x), bn=self.bn_a)
        return self.bn_a(self.conv_a(self.bn_d(self.conv_d(x * self.conv_c(x)))))

    def stream_touches(self) -> tuple[Touch, ...]:
        """w = u ⊙ C u: C's rows follow T's permutation, so w → T w (monomial T); D then reads w channel by
        channel exactly as Eq. (3)'s D reads u (kernels ÷ λ_j, A's columns follow)."""
        return (Touch("product", "read_channelwise", reason="u ⊙ C u multiplies the raw stream",
                      channels=Channels("w", rows=("conv_c",))),
                self._raw_read("", self.multiplier, kernels=("conv_d",), cols=("conv_a",)),
                Touch("conv_c", "read"), Touch("conv_a", "write", bias="conv_a.bias", bn="bn_a"))

    def bn_folds(self) -> tuple[BNFold, ...]:
        return (BNFold("conv_d", "bn_d", "depthwise"), BNFold("conv_a", "bn_a"))


class Eq7Block(QLBlock):
    """Eq. (7): ∂u_i/∂t = Σ_j A_ij ∂/∂x Σ_k C_jk u_j u_k + Σ_j B_ij ∂/∂y Σ_k D_jk u_j u_k.

    Each direction a = 1..m has its own coefficient matrix (C, D, ... stacked): C is a 1×1 conv n → mn
    whose output is read as (a, j); slice a is multiplied by u (w_{a,j} = u_j Σ_k C^a_jk u_k), then a
    depthwise 3×3 on the mn channels (channel (a, j) uses kernel a when weights are shared, stride s),
    BN, and A: 1×1 mn → o, BN: F(u) = BN(A [ BN(D (u ⊙_a C u)) ]).
    """

    equation = "eq7"

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, **kwargs) -> None:
        super().__init__(in_chs, out_chs, stride, **kwargs)
        mid = in_chs * self.multiplier
        self.conv_c = conv1x1(in_chs, mid)
        self.conv_d = self._with_var_coef(DerivativeConv(
            mid, 1, self.weight_sharing, stride=stride, padding_mode=self.padding_mode,
            interleave="kernel", kernels=self.multiplier,
        ))
        self.bn_d = nn.BatchNorm2d(mid)
        self.conv_a = conv1x1(mid, out_chs)
        self.bn_a = nn.BatchNorm2d(out_chs)
        self.init_last_bn()

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        w = self.conv_c(x) * x.repeat(1, self.multiplier, 1, 1)
        if not torch.jit.is_scripting():
            if self.use_fused:
                return self._fused_a(w, bn=self.bn_a)
        return self.bn_a(self.conv_a(self.bn_d(self.conv_d(w))))

    def stream_touches(self) -> tuple[Touch, ...]:
        """w_{(a, j)} = u_j (C^a u)_j: channel a·n + j follows u_j (layout 'tiled'); C's rows, D's channels
        (kernels ÷ λ_j) and A's columns move with it."""
        return (self._raw_read("u ⊙ C u multiplies the raw stream", self.multiplier, layout="tiled",
                               kernels=("conv_d",), rows=("conv_c",), cols=("conv_a",)),
                Touch("conv_c", "read"), Touch("conv_a", "write", bias="conv_a.bias", bn="bn_a"))

    def bn_folds(self) -> tuple[BNFold, ...]:
        return (BNFold("conv_d", "bn_d", "depthwise"), BNFold("conv_a", "bn_a"))


BLOCKS: dict[str, type[QLBlock]] = {
    "eq3": Eq3Block,
    "eq3p": Eq3PBlock,
    "eq4": Eq4Block,
    "eq5": Eq5Block,
    "eq6": Eq6Block,
    "eq7": Eq7Block,
}


def create_block(equation: str, in_chs: int, out_chs: int, stride: int = 1, **kwargs) -> QLBlock:
    """Build the block of ``equation`` ('eq3', 'eq3p', 'eq4', 'eq5', 'eq6' or 'eq7')."""
    try:
        cls = BLOCKS[equation]
    except KeyError:
        raise ValueError(f"unknown equation {equation!r}; expected one of {', '.join(BLOCKS)}") from None
    return cls(in_chs, out_chs, stride, **kwargs)
