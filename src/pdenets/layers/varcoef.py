"""Variable coefficients: derivative channels multiplied by learned functions of the pixel coordinates.

Liu-Shao-Bai §3, first bullet: "make the coefficients *variables* (of x and y), e.g. simply as linear or
polynomial functions". With constant coefficients a 3×3 conv is translation-equivariant, so a ResNet of
such convs can only translate features; the rotation PDE ∂u/∂t = -y ∂u/∂x + x ∂u/∂y and the dilation PDE
∂u/∂t = -(x ∂u/∂x + y ∂u/∂y) (:mod:`pdenets.pde.classic`) need coefficients that depend on (x, y).

:class:`CoordinateCoefficients` multiplies channel c of its input by

    a_c(x, y) = Σ_p θ_{c,p} φ_p(x, y),   φ = (1, x, y)  ('affine')  or  (1, x, y, x², xy, y²)  ('quadratic'),

with x, y the pixel centres normalised to [-1, 1] across the feature map (so the same parameters apply
at every resolution; y runs down the rows as in :mod:`pdenets.pde.operators`). θ starts at a_c ≡ 1, so a
block with the option starts as the block without it. Placed right after the derivative conv of a QL
block (``var_coef=`` block/model option) it turns ∂u_j/∂x into a_c(x, y)·∂u_j/∂x: the paper's L with
variable coefficients. Cost: channels × 3 (affine) or × 6 (quadratic) parameters, i.e. m·n·3 or m·n·6
per block for n block-input channels and m derivative channels per input channel.
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn as nn
from timm.layers import register_notrace_function

from pdenets.layers.tracing import is_symbolic_tracing

VAR_COEF_KINDS: dict[str, int] = {"affine": 3, "quadratic": 6}


def check_var_coef(kind: str) -> None:
    """Raise if ``kind`` is not one of :data:`VAR_COEF_KINDS`."""
    if kind not in VAR_COEF_KINDS:
        raise ValueError(f"unknown var_coef {kind!r}; expected one of {', '.join(VAR_COEF_KINDS)} or None")


def coordinate_features(
    height: int, width: int, kind: str = "affine", dtype: torch.dtype | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """φ_p(x, y) on an H×W grid, shape (P, H, W); x, y ∈ [-1, 1] at the pixel centres (0 on a 1-pixel axis).

    ``dtype`` None: the default dtype. Scriptable, and a leaf of torch.fx graphs (below).
    """
    if not torch.jit.is_scripting():
        check_var_coef(kind)
    xs = torch.linspace(-1, 1, width, dtype=dtype, device=device) if width > 1 else torch.zeros(1, dtype=dtype,
                                                                                                 device=device)
    ys = torch.linspace(-1, 1, height, dtype=dtype, device=device) if height > 1 else torch.zeros(1, dtype=dtype,
                                                                                                  device=device)
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    feats = [torch.ones_like(x), x, y]
    if kind == "quadratic":
        feats += [x * x, x * y, y * y]
    return torch.stack(feats)


# A leaf of torch.fx graphs (torch.fx.wrap for plain symbolic_trace, timm's registry for its tracers): it builds
# the grid from the feature map's height and width — its shape, never its values — so the traced graph computes
# it at run time for whatever resolution comes in (docs/design.md §12).
torch.fx.wrap("coordinate_features")
register_notrace_function(coordinate_features)


class CoordinateCoefficients(nn.Module):
    """Multiply each channel by a learned affine or quadratic function of the pixel coordinates.

    Args:
        channels: number of channels C (each gets its own function).
        kind: 'affine' (1, x, y) or 'quadratic' (1, x, y, x², xy, y²).
    """

    def __init__(self, channels: int, kind: str = "affine") -> None:
        super().__init__()
        check_var_coef(kind)
        if channels < 1:
            raise ValueError(f"channels must be positive, got {channels}")
        self.channels, self.kind = channels, kind
        self.weight = nn.Parameter(torch.empty(channels, VAR_COEF_KINDS[kind]))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.zero_()
            self.weight[:, 0] = 1.0

    def field(self, height: int, width: int) -> torch.Tensor:
        """The coefficient functions a_c(x, y) on an H×W grid, shape (C, H, W)."""
        phi = coordinate_features(height, width, self.kind, self.weight.dtype, self.weight.device)
        return torch.einsum("cp,phw->chw", self.weight, phi)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            self._check(x)
        return x * self.field(x.shape[-2], x.shape[-1]).to(x.dtype)

    def _check(self, x: torch.Tensor) -> None:
        if is_symbolic_tracing():
            return  # symbolic shapes (docs/design.md §12)
        if x.shape[1] != self.channels:
            raise ValueError(f"expected {self.channels} channels, got shape {tuple(x.shape)}")

    def extra_repr(self) -> str:
        return f"{self.channels}, kind={self.kind!r}"
