"""The symmetric layer of Ruthotto & Haber, Eq. (6):

    F_sym(θ, Y) = −K(θ)ᵀ σ( N( K(θ) Y + b ) )

K(θ) is a 3×3 convolution (``channels → hidden``) and Kᵀ is its exact adjoint, the transposed
convolution with the *same* weight tensor (``hidden → channels``), so that, without normalisation or
with an eval-mode BatchNorm (a per-channel affine map), the Jacobian −Kᵀ diag(σ'(·)) K is symmetric
negative semi-definite for every monotone σ (Theorem 1; docs/design.md §5). Instance norm couples the pixels
of a channel, so with it the Jacobian is no longer symmetric (the forward dynamics are still what the
paper trains, as its supplement uses instance norm).

Boundary conditions: ``padding_mode`` is one of :data:`pdenets.layers.derivative.PADDING_MODES`. K pads
then convolves; Kᵀ convolves-transposed then applies the adjoint of the padding (for 'zeros' that is a
crop; for 'circular' / 'reflect' / 'replicate' the halo is folded back onto the pixels it copied), so
⟨K x, y⟩ = ⟨x, Kᵀ y⟩ holds exactly for every mode.

The bias b: with ``norm='none'`` it is an explicit per-channel bias; with instance or batch norm a bias
before the normalisation would be cancelled by the mean subtraction, so b is the normalisation's affine
shift β (and its scale γ multiplies the normalised features).
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_function

from pdenets.layers.derivative import check_padding_mode

NORMS = ("instance", "batch", "none")
SYM_ACTIVATIONS = ("relu", "identity", "tanh", "leaky_relu", "softplus", "sigmoid", "hardtanh")


def create_monotone_act(name: str) -> nn.Module:
    """A monotonically non-decreasing activation σ by name (Theorem 1 needs σ' ≥ 0)."""
    acts = {
        "relu": nn.ReLU, "identity": nn.Identity, "tanh": nn.Tanh, "leaky_relu": nn.LeakyReLU,
        "softplus": nn.Softplus, "sigmoid": nn.Sigmoid, "hardtanh": nn.Hardtanh,
    }
    if name not in acts:
        raise ValueError(f"unknown activation {name!r}; expected a monotone one of {', '.join(SYM_ACTIVATIONS)}")
    return acts[name]()


def create_norm(name: str, channels: int) -> nn.Module:
    if name == "instance":
        return nn.InstanceNorm2d(channels, affine=True, track_running_stats=False)
    if name == "batch":
        return nn.BatchNorm2d(channels)
    if name == "none":
        return nn.Identity()
    raise ValueError(f"unknown normalisation {name!r}; expected one of {', '.join(NORMS)}")


def _fold_halo(g: torch.Tensor, dim: int, mode: str) -> torch.Tensor:
    """Adjoint of padding one pixel on both sides of ``dim`` (size n+2 → n) for the given mode."""
    n = g.shape[dim] - 2
    inner = g.narrow(dim, 1, n).clone()
    lo, hi = g.narrow(dim, 0, 1), g.narrow(dim, n + 1, 1)
    if mode == "zeros":
        return inner
    if mode == "circular":  # halo low copies x[n-1], halo high copies x[0]
        inner.narrow(dim, n - 1, 1).add_(lo)
        inner.narrow(dim, 0, 1).add_(hi)
    elif mode == "replicate":  # halo low copies x[0], halo high copies x[n-1]
        inner.narrow(dim, 0, 1).add_(lo)
        inner.narrow(dim, n - 1, 1).add_(hi)
    elif mode == "reflect":  # halo low copies x[1], halo high copies x[n-2]
        inner.narrow(dim, 1, 1).add_(lo)
        inner.narrow(dim, n - 2, 1).add_(hi)
    else:  # pragma: no cover - checked by check_padding_mode
        raise ValueError(mode)
    return inner


def conv_k(y: torch.Tensor, weight: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """K y: 'same' 3×3 convolution under the boundary condition ``padding_mode``."""
    p = weight.shape[-1] // 2
    if padding_mode == "zeros" or p == 0:
        return F.conv2d(y, weight, padding=p)
    return F.conv2d(F.pad(y, (p, p, p, p), mode=padding_mode), weight)


def conv_kt(x: torch.Tensor, weight: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """Kᵀ x: the exact adjoint of :func:`conv_k` with the same weight (transposed conv + padding adjoint)."""
    p = weight.shape[-1] // 2
    if padding_mode == "zeros" or p == 0:
        return F.conv_transpose2d(x, weight, padding=p)
    if p != 1:  # (no !r in the message: TorchScript compiles this function)
        raise ValueError(f"padding_mode '{padding_mode}' adjoint is implemented for 3×3 kernels only")
    g = F.conv_transpose2d(x, weight)  # (H+2)×(W+2): adjoint of the unpadded conv
    return _fold_halo(_fold_halo(g, 3, padding_mode), 2, padding_mode)


# Leaves of torch.fx graphs (torch.fx.wrap for plain symbolic_trace, timm's registry for its tracers): their
# branches read the boundary condition and the kernel size, fixed by the layer, not data (docs/design.md §12).
torch.fx.wrap("conv_k")
torch.fx.wrap("conv_kt")
register_notrace_function(conv_k)
register_notrace_function(conv_kt)


class SymmetricLayer(nn.Module):
    """F_sym(θ, Y) = −K(θ)ᵀ σ(N(K(θ) Y + b)) (Ruthotto & Haber Eq. 6).

    Args:
        channels: feature channels of Y.
        hidden: output channels of K (default ``channels``; K is square as in the paper's networks).
        norm: N, one of 'instance' (default, as the supplement), 'batch' or 'none'.
        act: σ, a monotone activation (see :data:`SYM_ACTIVATIONS`); 'relu' by default.
        bias: add b (with ``norm='none'`` an explicit bias; with a norm, its affine shift).
        padding_mode: boundary condition, one of :data:`pdenets.layers.derivative.PADDING_MODES`.
        kernel_size: odd stencil size (3 in the paper).
    """

    def __init__(
        self,
        channels: int,
        hidden: int | None = None,
        norm: str = "instance",
        act: str = "relu",
        bias: bool = True,
        padding_mode: str = "zeros",
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be positive, got {channels}")
        hidden = channels if hidden is None else hidden
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.channels, self.hidden = channels, hidden
        self.padding_mode = check_padding_mode(padding_mode)
        self.norm_name, self.act_name = norm, act
        self.weight = nn.Parameter(torch.empty(hidden, channels, kernel_size, kernel_size))
        self.norm = create_norm(norm, hidden)
        if norm != "none" and not bias:
            self.norm.bias = None  # type: ignore[assignment]
        self.bias = nn.Parameter(torch.zeros(hidden)) if (bias and norm == "none") else None
        self.act = create_monotone_act(act)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The supplement's initialisation: Glorot-normal conv weights [14]; other weights N(0, 0.1²)
        truncated at ±0.2 (biases and the normalisation's shift); normalisation scales start at 1."""
        nn.init.xavier_normal_(self.weight)
        if self.bias is not None:
            nn.init.trunc_normal_(self.bias, 0.0, 0.1, -0.2, 0.2)
        nb = getattr(self.norm, "bias", None)
        if isinstance(nb, nn.Parameter):
            nn.init.trunc_normal_(nb, 0.0, 0.1, -0.2, 0.2)

    def K(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802 (the paper's operator name)
        return conv_k(y, self.weight, self.padding_mode)

    def KT(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        return conv_kt(x, self.weight, self.padding_mode)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        x = self.K(y)
        if self.bias is not None:
            x = x + self.bias.view(1, -1, 1, 1)
        return -self.KT(self.act(self.norm(x)))

    def extra_repr(self) -> str:
        return (
            f"{self.channels}, hidden={self.hidden}, norm={self.norm_name!r}, act={self.act_name!r}, "
            f"padding_mode={self.padding_mode!r}"
        )

