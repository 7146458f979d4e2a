"""A 3×3 kernel is a differential operator: the change of basis between stencils and operators.

Ruthotto & Haber (§"Residual networks and PDEs", Eq. after (4)) note that the 3-point stencil
``[θ1 θ2 θ3]`` on a grid of mesh size h is, after a change of basis, β1·(identity) + β2·∂x + β3·∂x², and
that a 3×3 stencil θ ∈ R⁹ is likewise a combination of the nine operators

    1, ∂x, ∂y, ∂x², ∂y², ∂x∂y, ∂x²∂y, ∂x∂y², ∂x²∂y²

(tensor products of the three 1-D operators 1, ∂, ∂² in x and in y). Liu-Shao-Bai's Table 2 says the
same in words: "3x3 convolution = differential operator of order ≤ 2". This module makes it concrete.

**1-D building blocks** (mesh size h, applied by cross-correlation as ``torch.nn.functional.conv2d``
does, i.e. ``(k ⋆ u)(x) = Σ_j k_j u(x + (j - 1) h)``):

* ``∂`` = ``[-1, 0, 1] / (2h)`` (central difference), ``∂²`` = ``[1, -2, 1] / h²``;
* the identity, for which two bases are offered:

  - ``basis='fd'`` (default, finite differences): ``1 = [0, 1, 0]``. The 5-point Laplacian of
    Liu-Shao-Bai's Eq. (8) is then exactly ∂x² + ∂y², and the Sobel filter is 8h·(∂x + (h²/4)·∂x∂y²):
    a pure ∂x plus the smoothing across y it carries, which shows up as the O(h²) term ∂x∂y²;
  - ``basis='rh'`` (Ruthotto-Haber's choice): ``1 = [1, 2, 1] / 4``, a smoothing identity. Sobel is
    then exactly 8h·∂x (the smoothing is built into the basis), and the 5-point Laplacian is
    ∂x² + ∂y² − (h²/2)·∂x²∂y² (the same operator up to an O(h²) correction that vanishes as h → 0).

Both bases are tensor products, so the 9×9 change of basis is the Kronecker product of the 3×3 one-
dimensional one and is non-singular for every h > 0 (Ruthotto-Haber's remark).

**Axes.** A kernel ``k[i, j]`` has rows along y and columns along x: ``k[i, j]`` multiplies
``u(x + (j-1)h, y + (i-1)h)``. In an image, y therefore points *down* the rows. The OpenCV/scikit-image
Sobel ``[[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]`` is the x-derivative and its transpose the y-derivative.

**Orders and energy.** The order of ∂x^a ∂y^b is a + b; the nine operators have orders 0, 1, 1, 2, 2,
2, 3, 3, 4. :func:`order_shares` splits a stencil into the sum of its parts of each order,
θ = θ₀ + θ₁ + θ₂ + θ₃₊ (θ_r = Σ_{order(i) = r} β_i·B_i, with B_i the stencil of operator i) and returns
‖θ_r‖² / Σ_s ‖θ_s‖². The parts are not orthogonal in general (the identity and ∂² are not), so these
are shares of the sum of the parts' energies, not of ‖θ‖²; they sum to 1. Odd and even orders *are*
orthogonal to each other, so e.g. a kernel whose order-1 share is 1 is exactly antisymmetric.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pdenets.utils.plotting import save_figure, subplots

OPERATORS: tuple[str, ...] = ("1", "∂x", "∂y", "∂x²", "∂y²", "∂x∂y", "∂x²∂y", "∂x∂y²", "∂x²∂y²")
"""The nine operators, in the order of the coefficient vectors of this module (Ruthotto-Haber's β1..β9)."""

OPERATORS_ASCII: tuple[str, ...] = ("1", "dx", "dy", "dxx", "dyy", "dxdy", "dxxdy", "dxdyy", "dxxdyy")

# (a, b): the operator ∂x^a ∂y^b of each entry of OPERATORS.
EXPONENTS: tuple[tuple[int, int], ...] = ((0, 0), (1, 0), (0, 1), (2, 0), (0, 2), (1, 1), (2, 1), (1, 2), (2, 2))
ORDERS: tuple[int, ...] = tuple(a + b for a, b in EXPONENTS)
ORDER_GROUPS: tuple[str, ...] = ("0", "1", "2", "3+")
BASES: tuple[str, ...] = ("fd", "rh")


def stencil_1d(h: float = 1.0, basis: str = "fd", dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The 3×3 matrix whose row a is the 3-point stencil of ∂^a (a = 0, 1, 2) with mesh size ``h``."""
    if basis not in BASES:
        raise ValueError(f"unknown basis {basis!r}; expected one of {', '.join(BASES)}")
    if not h > 0:
        raise ValueError(f"mesh size h must be positive, got {h}")
    ident = [0.0, 1.0, 0.0] if basis == "fd" else [0.25, 0.5, 0.25]
    return torch.tensor([ident, [-0.5 / h, 0.0, 0.5 / h], [1 / h**2, -2 / h**2, 1 / h**2]], dtype=dtype)


def operator_stencils(h: float = 1.0, basis: str = "fd", dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The nine basis stencils, shape (9, 3, 3): entry i is the 3×3 kernel of ``OPERATORS[i]``.

    The stencil of ∂x^a ∂y^b is the outer product (∂y^b stencil along rows) ⊗ (∂x^a stencil along columns).
    """
    s = stencil_1d(h, basis, dtype)
    return torch.stack([torch.outer(s[b], s[a]) for a, b in EXPONENTS])


def basis_matrix(h: float = 1.0, basis: str = "fd", dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """M of shape (9, 9) with ``stencil.flatten() = M @ coefficients`` (columns = flattened basis stencils)."""
    return operator_stencils(h, basis, dtype).reshape(9, 9).T


def to_stencil(coefficients: torch.Tensor, h: float = 1.0, basis: str = "fd") -> torch.Tensor:
    """Operator coefficients (..., 9) → 3×3 stencils (..., 3, 3)."""
    c = torch.as_tensor(coefficients)
    if c.shape[-1] != 9:
        raise ValueError(f"expected 9 operator coefficients in the last dimension, got shape {tuple(c.shape)}")
    dtype = c.dtype if c.is_floating_point() else torch.float64
    m = basis_matrix(h, basis, dtype).to(c.device)
    return (c.to(dtype) @ m.T).reshape(*c.shape[:-1], 3, 3)


def inverse_1d(h: float = 1.0, basis: str = "fd", dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Closed-form inverse of the 1-D change of basis: row a gives the coefficient of ∂^a from [s1, s2, s3].

    fd: β = h(s3 - s1), γ = h²(s1 + s3)/2, α = s1 + s2 + s3;  rh: β = h(s3 - s1), γ = h²(s1 - s2 + s3)/4,
    α = s1 + s2 + s3  (α, β, γ the coefficients of 1, ∂, ∂²).
    """
    if basis not in BASES:
        raise ValueError(f"unknown basis {basis!r}; expected one of {', '.join(BASES)}")
    g = [h**2 / 2, 0.0, h**2 / 2] if basis == "fd" else [h**2 / 4, -(h**2) / 4, h**2 / 4]
    return torch.tensor([[1.0, 1.0, 1.0], [-h, 0.0, h], g], dtype=dtype)


def to_operators(stencil: torch.Tensor, h: float = 1.0, basis: str = "fd") -> torch.Tensor:
    """3×3 stencils (..., 3, 3) → operator coefficients (..., 9) in the order of :data:`OPERATORS`.

    The 9×9 change of basis is a Kronecker product, so its inverse is the Kronecker product of the
    closed-form 1-D inverses (:func:`inverse_1d`): coefficient of ∂x^a∂y^b = Σ_ij inv[b, i] inv[a, j] s[i, j].
    """
    s = torch.as_tensor(stencil)
    if s.shape[-2:] != (3, 3):
        raise ValueError(f"expected 3×3 stencils in the last two dimensions, got shape {tuple(s.shape)}")
    dtype = s.dtype if s.is_floating_point() else torch.float64
    inv = inverse_1d(h, basis, torch.float64).to(s.device)
    full = torch.einsum("bi,aj,...ij->...ab", inv, inv, s.to(torch.float64))  # [..., a, b]
    return torch.stack([full[..., a, b] for a, b in EXPONENTS], dim=-1).to(dtype)


def order_parts(stencil: torch.Tensor, h: float = 1.0, basis: str = "fd") -> torch.Tensor:
    """Split stencils (..., 3, 3) into their parts of order 0, 1, 2, ≥3: shape (..., 4, 3, 3), summing to the input."""
    coef = to_operators(stencil, h, basis)
    basis_st = operator_stencils(h, basis, coef.dtype).to(coef.device)
    parts = []
    for group in range(4):
        idx = [i for i, o in enumerate(ORDERS) if min(o, 3) == group]
        parts.append(torch.einsum("...i,ijk->...jk", coef[..., idx], basis_st[idx]))
    return torch.stack(parts, dim=-3)


def order_shares(stencil: torch.Tensor, h: float = 1.0, basis: str = "fd") -> torch.Tensor:
    """Share of each order group (0, 1, 2, ≥3) in the energy of the stencil's parts, shape (..., 4).

    See the module docstring for the definition. A zero stencil gets shares of zero.
    """
    energy = order_parts(stencil, h, basis).pow(2).sum(dim=(-2, -1))
    total = energy.sum(-1, keepdim=True)
    return torch.where(total > 0, energy / total.clamp_min(torch.finfo(energy.dtype).tiny), torch.zeros_like(energy))


# ---- named stencils -------------------------------------------------------------------------------


def laplacian_stencil(h: float = 1.0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The 5-point Laplacian Δ_h = [[0, 1, 0], [1, -4, 1], [0, 1, 0]] / h² (τ·this is Liu-Shao-Bai Eq. (8))."""
    return torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=dtype) / h**2


def sobel_stencils(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The Sobel pair, shape (2, 3, 3): x-derivative [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]] and its transpose."""
    sx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=dtype)
    return torch.stack([sx, sx.T])


# ---- reading a trained model ----------------------------------------------------------------------


@dataclass
class KernelRow:
    """One depthwise derivative kernel of a model, read as an operator."""

    module: str
    index: int
    stencil: np.ndarray  # (3, 3)
    coefficients: np.ndarray  # (9,), in the order of OPERATORS
    shares: np.ndarray  # (4,), orders 0, 1, 2, >=3


def derivative_kernels(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(module name, stored m×1×3×3 kernel) of every 3×3 derivative conv: every module with a
    ``derivative_stencils()`` method (:class:`~pdenets.layers.derivative.DerivativeConv`, and its BN-folded
    form in folded, compressed or teleported models).

    With weight sharing that is the shared m×1×3×3 parameter of each QL block; without, one kernel per
    output channel.
    """
    out = []
    for name, mod in model.named_modules():
        stencils = getattr(mod, "derivative_stencils", None)
        if callable(stencils):
            w = stencils()
            if tuple(w.shape[-2:]) == (3, 3):
                out.append((name, w.detach().to("cpu", torch.float64)))
    return out


def kernel_report(model: torch.nn.Module, h: float = 1.0, basis: str = "fd") -> list[KernelRow]:
    """Coefficients in the operator basis and order shares of every derivative kernel of ``model``."""
    rows = []
    for name, w in derivative_kernels(model):
        st = w[:, 0]
        coef = to_operators(st, h, basis)
        shares = order_shares(st, h, basis)
        for i in range(st.shape[0]):
            rows.append(KernelRow(name, i, st[i].numpy(), coef[i].numpy(), shares[i].numpy()))
    return rows


def format_report(rows: list[KernelRow], max_rows: int | None = None) -> str:
    """Plain-text table: one line per kernel with its nine coefficients and the order shares in percent."""
    head = f"{'module':<28} {'k':>2} " + " ".join(f"{n:>8}" for n in OPERATORS_ASCII)
    head += "  " + " ".join(f"{'ord' + g:>6}" for g in ORDER_GROUPS)
    lines = [head, "-" * len(head)]
    shown = rows if max_rows is None else rows[:max_rows]
    for r in shown:
        line = f"{r.module[-28:]:<28} {r.index:>2} " + " ".join(f"{c:>8.3f}" for c in r.coefficients)
        line += "  " + " ".join(f"{100 * s:>5.1f}%" for s in r.shares)
        lines.append(line)
    if max_rows is not None and len(rows) > max_rows:
        lines.append(f"... {len(rows) - max_rows} more kernels")
    if rows:
        lines.append(mean_share_line([r.shares for r in rows]))
    return "\n".join(lines)


def mean_share_line(shares: list) -> str:
    """The footer of the kernel tables: the mean share of each order group over the rows."""
    mean = np.mean(shares, axis=0)
    return "mean share of orders " + ", ".join(f"{g}: {100 * s:.1f}%" for g, s in zip(ORDER_GROUPS, mean))


def plot_report(rows: list[KernelRow], path: str, title: str = "", max_rows: int = 96) -> None:
    """Figure: the stencils, their operator coefficients (heat map) and order shares (stacked bars)."""
    if not rows:
        raise ValueError("no derivative kernels to plot")
    if len(rows) > max_rows:  # e.g. a no-ws model has one kernel per channel: show the first ones
        title = f"{title} (first {max_rows} of {len(rows)} kernels)".strip()
        rows = rows[:max_rows]
    n = len(rows)
    labels = [f"{r.module.replace('.conv_d', '')}[{r.index}]" for r in rows]
    coef = np.stack([r.coefficients for r in rows])
    shares = np.stack([r.shares for r in rows])
    fig_h = max(3.0, 0.22 * n + 1.5)
    fig, (ax_c, ax_s) = subplots(1, 2, figsize=(12, fig_h), gridspec_kw=dict(width_ratios=[3, 2]))
    vmax = float(np.abs(coef).max()) or 1.0
    im = ax_c.imshow(coef, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
    ax_c.set_xticks(range(9), OPERATORS)
    ax_c.set_yticks(range(n), labels, fontsize=7)
    ax_c.set_title("coefficients in the operator basis")
    fig.colorbar(im, ax=ax_c, fraction=0.04)
    left = np.zeros(n)
    colors = ("#999999", "#1f77b4", "#d62728", "#2ca02c")
    for g in range(4):
        ax_s.barh(range(n), shares[:, g], left=left, color=colors[g], label=f"order {ORDER_GROUPS[g]}")
        left += shares[:, g]
    ax_s.set_yticks(range(n), [])
    ax_s.set_ylim(n - 0.5, -0.5)  # same rows as the heat map
    ax_s.set_xlim(0, 1)
    ax_s.set_title("share of energy by order")
    ax_s.legend(loc="upper center", bbox_to_anchor=(0.5, -0.04), ncol=4, fontsize=7)
    if title:
        fig.suptitle(title)
    path = save_figure(fig, path, dpi=110)
