"""Classical PDEs as ResNets (Liu-Shao-Bai, Appendix A and §3; Table 2's dictionary made executable).

Every solver here is a stack of residual blocks ``u ← u + F(u)`` whose F is a convolution — the
"feed forward = solving the equation numerically" row of Table 2 — and whose padding is the boundary
condition (``padding_mode`` in :data:`pdenets.layers.derivative.PADDING_MODES`):

* :class:`HeatResNet` — ∂u/∂t = Δu by forward Euler, one channel, the single kernel of Eq. (8),
  k = τ/h² [[0, 1, 0], [1, -4, 1], [0, 1, 0]] (§A.1). Stable only under the CFL bound τ/h² ≤ 1/4.
* :class:`WaveResNet` — ∂²u/∂t² = Δu by the "two-skip" scheme u_i = 2u_{i-1} - u_{i-2} + τ²Δ_h u_{i-1}
  (§A.3: "a ResNet with two skip connections at each layer"). Conserves the discrete energy
  :func:`wave_energy` exactly (up to round-off) for a symmetric Δ_h (zeros, replicate or circular).
* :class:`WaveSystemResNet` — the same equation as the two-channel system ∂t(u, v) = (v, Δu) (§A.3),
  a ResNet with two channels whose only non-trivial kernel is again Eq. (8). ``method='symplectic'``
  (two residual half-steps, u then v) reproduces the two-skip scheme exactly; ``'euler'`` is the plain
  one-conv ResNet, which is unstable for this hyperbolic system (energy grows by (1 + τ²ω²) per step).
* :class:`HyperbolicSystemResNet` — the first-order symmetric hyperbolic system (9),
  ∂w/∂t = A ∂w/∂x + B ∂w/∂y, as a depthwise conv (∂x, ∂y of each channel) followed by a 1×1 conv with
  [A | B] — the depthwise-separable reading of (9) in §A.3 — stepped by classical RK4. With the
  matrices of §A.3 and w = (u_x, u_y, u_t) it is the wave equation again (:func:`wave_system_matrices`).
* :class:`TransportResNet` — variable-coefficient transport ∂u/∂t = a(x, y) ∂u/∂x + b(x, y) ∂u/∂y (§3,
  first bullet), central differences + RK4; :func:`rotation_resnet` (a = -y, b = x: rotates the data,
  u(x, y, t) = f(x cos t - y sin t, x sin t + y cos t)) and :func:`dilation_resnet` (a = -s x, b = -s y:
  u(x, y, t) = f(e^{-st} x, e^{-st} y), a zoom by e^{st}). This is a derivative conv followed by
  multiplication with functions of the pixel coordinates — the variable-coefficient QL block of
  :mod:`pdenets.layers.varcoef` with the coefficients fixed by hand.

Grids: pixel (i, j) of an H×W array sits at x = x0 + j h, y = y0 + i h (rows along y, columns along x,
as in :mod:`pdenets.pde.operators`). Tensors are (N, C, H, W); every module works in any float dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn

from pdenets.layers.derivative import check_padding_mode, pad_conv2d
from pdenets.pde.operators import laplacian_stencil, operator_stencils

HEAT_CFL = 0.25  # forward Euler with the 5-point Laplacian in 2-D: stable iff τ/h² ≤ 1/4
WAVE_CFL = 1 / math.sqrt(2)  # leapfrog with the 5-point Laplacian in 2-D: stable iff τ/h ≤ 1/√2
RK4_CFL = 2.0 * math.sqrt(2.0)  # RK4 is stable on the imaginary axis for |τλ| ≤ 2√2


def heat_kernel(tau: float, h: float = 1.0, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Eq. (8): k = τ/h² [[0, 1, 0], [1, -4, 1], [0, 1, 0]], as a 1×1×3×3 conv weight."""
    dtype = dtype or torch.get_default_dtype()
    return (tau * laplacian_stencil(h, dtype))[None, None]


def check_heat_cfl(tau: float, h: float, diffusivity: float = 1.0) -> None:
    """Raise ValueError unless forward Euler for ∂u/∂t = κΔu is stable: κτ/h² ≤ 1/4 (2-D, 5-point Δ_h)."""
    if tau <= 0 or h <= 0 or diffusivity <= 0:
        raise ValueError(f"tau, h and diffusivity must be positive, got tau={tau}, h={h}, diffusivity={diffusivity}")
    ratio = diffusivity * tau / h**2
    if ratio > HEAT_CFL * (1 + 1e-12):
        raise ValueError(
            f"heat step violates the CFL bound: diffusivity*tau/h^2 = {ratio:.4g} > 1/4 "
            f"(tau={tau:g}, h={h:g}); forward Euler would blow up - use tau <= {HEAT_CFL * h**2 / diffusivity:.4g}"
        )


class HeatResNet(nn.Module):
    """∂u/∂t = κΔu as a one-channel ResNet: ``steps`` blocks u ← u + k ⋆ u with k of Eq. (8) (§A.1).

    Args:
        tau: time step τ.  h: mesh size.  steps: number of residual blocks (final time steps·τ).
        diffusivity: κ (the kernel is κτ/h² [[0, 1, 0], [1, -4, 1], [0, 1, 0]]).
        padding_mode: boundary condition (zeros ≈ Dirichlet u = 0, replicate = Neumann, circular = periodic).

    Raises ValueError when κτ/h² > 1/4 (the CFL bound of forward Euler with the 5-point Laplacian: the
    mode (-1)^(i+j) is multiplied by 1 - 8κτ/h² per step).
    """

    def __init__(
        self, tau: float, h: float = 1.0, steps: int = 1, diffusivity: float = 1.0, padding_mode: str = "zeros"
    ) -> None:
        super().__init__()
        check_heat_cfl(tau, h, diffusivity)
        if steps < 0:
            raise ValueError(f"steps must be non-negative, got {steps}")
        self.tau, self.h, self.steps, self.diffusivity = tau, h, steps, diffusivity
        self.padding_mode = check_padding_mode(padding_mode)
        self.register_buffer("kernel", heat_kernel(diffusivity * tau, h, torch.float64), persistent=False)

    def step(self, u: torch.Tensor) -> torch.Tensor:
        """One residual block: u + k ⋆ u."""
        return u + pad_conv2d(u, self.kernel.to(u.dtype), 1, self.padding_mode)

    def forward(self, u: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        for _ in range(self.steps if steps is None else steps):
            u = self.step(u)
        return u


def laplacian(u: torch.Tensor, h: float = 1.0, padding_mode: str = "zeros") -> torch.Tensor:
    """Δ_h u with the 5-point stencil, channel by channel."""
    c = u.shape[1]
    k = laplacian_stencil(h, u.dtype).to(u.device)[None, None].expand(c, 1, 3, 3)
    return pad_conv2d(u, k, 1, padding_mode, groups=c)


def check_wave_cfl(tau: float, h: float) -> None:
    """Raise ValueError unless τ/h ≤ 1/√2 (leapfrog with the 5-point Laplacian in 2-D)."""
    if tau <= 0 or h <= 0:
        raise ValueError(f"tau and h must be positive, got tau={tau}, h={h}")
    if tau / h > WAVE_CFL * (1 + 1e-12):
        raise ValueError(
            f"wave step violates the CFL bound: tau/h = {tau / h:.4g} > 1/sqrt(2) (tau={tau:g}, h={h:g}); "
            f"use tau <= {WAVE_CFL * h:.4g}"
        )


class WaveResNet(nn.Module):
    """∂²u/∂t² = Δu by the two-skip scheme u_i = 2u_{i-1} - u_{i-2} + τ²Δ_h u_{i-1} (§A.3).

    ``forward(u0, v0, steps)`` starts with u_1 = u_0 + τ v_0 + (τ²/2) Δ_h u_0 (Taylor, second order) and
    returns the list [u_0, u_1, ..., u_steps]. :meth:`run` continues from two given slices.
    """

    def __init__(self, tau: float, h: float = 1.0, padding_mode: str = "zeros") -> None:
        super().__init__()
        check_wave_cfl(tau, h)
        self.tau, self.h = tau, h
        self.padding_mode = check_padding_mode(padding_mode)

    def lap(self, u: torch.Tensor) -> torch.Tensor:
        return laplacian(u, self.h, self.padding_mode)

    def step(self, u_prev: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """One block with two skips: 2u - u_prev + τ²Δ_h u."""
        return 2 * u - u_prev + self.tau**2 * self.lap(u)

    def run(self, u_prev: torch.Tensor, u: torch.Tensor, steps: int) -> list[torch.Tensor]:
        out = [u_prev, u]
        for _ in range(steps):
            out.append(self.step(out[-2], out[-1]))
        return out

    def forward(self, u0: torch.Tensor, v0: torch.Tensor | None = None, steps: int = 1) -> list[torch.Tensor]:
        v0 = torch.zeros_like(u0) if v0 is None else v0
        u1 = u0 + self.tau * v0 + 0.5 * self.tau**2 * self.lap(u0)
        return self.run(u0, u1, steps - 1) if steps >= 1 else [u0]


def wave_energy(
    u_prev: torch.Tensor, u: torch.Tensor, tau: float, h: float = 1.0, padding_mode: str = "zeros"
) -> torch.Tensor:
    """Discrete energy of the two-skip scheme between slices i-1 and i, per sample:

        E_{i-1/2} = h² ( ‖(u_i - u_{i-1})/τ‖² + ⟨-Δ_h u_i, u_{i-1}⟩ ).

    Taking the inner product of the scheme with u_{i+1} - u_{i-1} and using the symmetry of Δ_h shows
    E_{i+1/2} = E_{i-1/2} exactly. Δ_h is symmetric for zero, replicate and circular padding (not for
    'reflect', whose mirror without edge repetition weights the boundary row twice).
    """
    vel = (u - u_prev) / tau
    pot = -(laplacian(u, h, padding_mode) * u_prev)
    return h**2 * (vel.pow(2) + pot).flatten(1).sum(1)


class WaveSystemResNet(nn.Module):
    """The wave equation as the two-channel system ∂t(u, v) = (v, Δu) (§A.3), a two-channel ResNet.

    The 2×2×3×3 conv weight is [[0, τ·1], [τΔ_h, 0]] (Δ_h the kernel of Eq. (8) over τ). ``method``:

    * ``'symplectic'`` (default): two residual half-blocks per step, u ← u + τ v then v ← v + τ Δ_h u.
      With v_i = (u_{i+1} - u_i)/τ this is exactly the two-skip scheme of :class:`WaveResNet`.
    * ``'euler'``: one block w ← w + K ⋆ w (the literal ResNet); unstable, for demonstration only.
    """

    def __init__(self, tau: float, h: float = 1.0, padding_mode: str = "zeros", method: str = "symplectic") -> None:
        super().__init__()
        check_wave_cfl(tau, h)
        if method not in ("symplectic", "euler"):
            raise ValueError(f"method must be 'symplectic' or 'euler', got {method!r}")
        self.tau, self.h, self.method = tau, h, method
        self.padding_mode = check_padding_mode(padding_mode)
        ident = torch.zeros(3, 3, dtype=torch.float64)
        ident[1, 1] = 1.0
        lap = laplacian_stencil(h)
        zero = torch.zeros(3, 3, dtype=torch.float64)
        k_u = torch.stack([torch.stack([zero, tau * ident]), torch.stack([zero, zero])])
        k_v = torch.stack([torch.stack([zero, zero]), torch.stack([tau * lap, zero])])
        self.register_buffer("kernel_u", k_u, persistent=False)
        self.register_buffer("kernel_v", k_v, persistent=False)
        self.register_buffer("kernel", k_u + k_v, persistent=False)

    def _conv(self, w: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return pad_conv2d(w, k.to(w.dtype), 1, self.padding_mode)

    def step(self, w: torch.Tensor) -> torch.Tensor:
        if self.method == "euler":
            return w + self._conv(w, self.kernel)
        w = w + self._conv(w, self.kernel_u)
        return w + self._conv(w, self.kernel_v)

    def forward(self, w: torch.Tensor, steps: int = 1) -> list[torch.Tensor]:
        if w.shape[1] != 2:
            raise ValueError(f"expected two channels (u, v), got shape {tuple(w.shape)}")
        out = [w]
        for _ in range(steps):
            out.append(self.step(out[-1]))
        return out


def wave_system_matrices(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """A and B of §A.3 for w = (u_x, u_y, u_t): ∂w/∂t = A ∂w/∂x + B ∂w/∂y is the wave equation."""
    a = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=dtype)
    b = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]], dtype=dtype)
    return a, b


def central_gradient(u: torch.Tensor, h: float = 1.0, padding_mode: str = "zeros") -> torch.Tensor:
    """(N, C, H, W) → (N, 2C, H, W): channels 2j, 2j+1 are the central differences ∂x u_j, ∂y u_j.

    A depthwise conv with the ∂x and ∂y stencils of :mod:`pdenets.pde.operators` (the 'derivative conv').
    """
    c = u.shape[1]
    st = operator_stencils(h, "fd", u.dtype).to(u.device)
    k = st[1:3, None].repeat(c, 1, 1, 1)
    return pad_conv2d(u, k, 1, padding_mode, groups=c)


def _rk4(f: Callable[[torch.Tensor], torch.Tensor], w: torch.Tensor, tau: float) -> torch.Tensor:
    k1 = f(w)
    k2 = f(w + 0.5 * tau * k1)
    k3 = f(w + 0.5 * tau * k2)
    k4 = f(w + tau * k3)
    return w + tau / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


class HyperbolicSystemResNet(nn.Module):
    """System (9): ∂w/∂t = A ∂w/∂x + B ∂w/∂y, w with n channels, A and B n×n (symmetric: hyperbolic).

    F(w) = M [D w] with D the depthwise central-difference conv (∂x, ∂y of each channel) and M the 1×1
    conv whose columns interleave A and B — depthwise separable, as §A.3 remarks. Time stepping: RK4
    (four residual sub-blocks per step), stable while τ ρ(A ξ_x + B ξ_y)/h ≤ 2√2 for the central-
    difference symbols; :meth:`__init__` checks the sufficient bound τ(‖A‖₂ + ‖B‖₂)/h ≤ 2√2.
    """

    def __init__(
        self, a: torch.Tensor, b: torch.Tensor, tau: float, h: float = 1.0, padding_mode: str = "zeros"
    ) -> None:
        super().__init__()
        a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
        if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape != b.shape:
            raise ValueError(f"A and B must be square and of one size, got {tuple(a.shape)}, {tuple(b.shape)}")
        bound = tau * (torch.linalg.matrix_norm(a, 2) + torch.linalg.matrix_norm(b, 2)).item() / h
        if bound > RK4_CFL:
            raise ValueError(f"RK4 step violates the CFL bound: tau*(|A|+|B|)/h = {bound:.4g} > 2*sqrt(2)")
        self.tau, self.h = tau, h
        self.padding_mode = check_padding_mode(padding_mode)
        n = a.shape[0]
        mix = torch.stack([a, b], dim=-1).reshape(n, 2 * n)  # column 2j: A[:, j], column 2j+1: B[:, j]
        self.register_buffer("mix", mix[:, :, None, None], persistent=False)

    def rhs(self, w: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(central_gradient(w, self.h, self.padding_mode), self.mix.to(w.dtype))

    def forward(self, w: torch.Tensor, steps: int = 1) -> list[torch.Tensor]:
        out = [w]
        for _ in range(steps):
            out.append(_rk4(self.rhs, out[-1], self.tau))
        return out


def grid_coordinates(
    height: int, width: int, h: float, origin: tuple[float, float] | None = None, dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """x, y of the pixel centres, each (H, W): x = x0 + j h, y = y0 + i h; centred on 0 by default."""
    dtype = dtype or torch.get_default_dtype()
    if origin is None:
        origin = (-(width - 1) * h / 2, -(height - 1) * h / 2)
    xs = origin[0] + h * torch.arange(width, dtype=dtype)
    ys = origin[1] + h * torch.arange(height, dtype=dtype)
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    return x, y


class TransportResNet(nn.Module):
    """∂u/∂t = a(x, y) ∂u/∂x + b(x, y) ∂u/∂y on every channel (§3, first bullet: variable coefficients).

    F(u) = a ⊙ D_x u + b ⊙ D_y u: the central-difference derivative conv followed by multiplication with
    fixed functions of the pixel coordinates. Stepped with RK4; the constructor checks the CFL bound
    τ (max|a| + max|b|)/h ≤ 2√2 and raises ValueError otherwise.

    Central differences leave the grid-scale mode (-1)^(i+j) undamped and let it travel the wrong way
    (odd-even decoupling): sharp edges and boundary jumps then leave checkerboard trails. The optional
    ``hyperviscosity`` ν adds -ν h³ Δ_h² u to F, which damps that mode at rate 64ν/h while changing a
    smooth solution only by O(ν h³) (the method stays consistent; tests use ν = 0).

    Args:
        a, b: coefficient fields, (H, W) tensors (e.g. from :func:`grid_coordinates`).
        tau: time step.  h: mesh size.  padding_mode: boundary condition.
        hyperviscosity: ν ≥ 0 (default 0).
    """

    def __init__(
        self, a: torch.Tensor, b: torch.Tensor, tau: float, h: float, padding_mode: str = "zeros",
        hyperviscosity: float = 0.0,
    ) -> None:
        super().__init__()
        if a.shape != b.shape or a.ndim != 2:
            raise ValueError(f"a and b must be (H, W) fields of the same shape, got {tuple(a.shape)}, {tuple(b.shape)}")
        cfl = tau * (a.abs().max() + b.abs().max()).item() / h
        if cfl > RK4_CFL:
            raise ValueError(
                f"transport step violates the CFL bound: tau*(max|a|+max|b|)/h = {cfl:.4g} > 2*sqrt(2); reduce tau"
            )
        if hyperviscosity < 0:
            raise ValueError(f"hyperviscosity must be non-negative, got {hyperviscosity}")
        self.tau, self.h, self.cfl, self.hyperviscosity = tau, h, cfl, hyperviscosity
        self.padding_mode = check_padding_mode(padding_mode)
        self.register_buffer("coef", torch.stack([a, b]), persistent=False)

    def rhs(self, u: torch.Tensor) -> torch.Tensor:
        n, c, hh, ww = u.shape
        g = central_gradient(u, self.h, self.padding_mode).view(n, c, 2, hh, ww)
        out = (g * self.coef.to(u.dtype)).sum(2)
        if self.hyperviscosity:
            lap2 = laplacian(laplacian(u, self.h, self.padding_mode), self.h, self.padding_mode)
            out = out - self.hyperviscosity * self.h**3 * lap2
        return out

    def forward(self, u: torch.Tensor, steps: int = 1) -> list[torch.Tensor]:
        if tuple(u.shape[-2:]) != tuple(self.coef.shape[-2:]):
            raise ValueError(f"input is {tuple(u.shape[-2:])} but the coefficients are {tuple(self.coef.shape[-2:])}")
        out = [u]
        for _ in range(steps):
            out.append(_rk4(self.rhs, out[-1], self.tau))
        return out


def _transport_tau(a: torch.Tensor, b: torch.Tensor, h: float, cfl: float) -> float:
    return cfl * h / max((a.abs().max() + b.abs().max()).item(), 1e-300)


def rotation_resnet(
    height: int, width: int, h: float, tau: float | None = None, cfl: float = 1.0, padding_mode: str = "zeros",
    dtype: torch.dtype | None = None, hyperviscosity: float = 0.0,
) -> TransportResNet:
    """∂u/∂t = -y ∂u/∂x + x ∂u/∂y on a centred grid: u(x, y, t) = f(x cos t - y sin t, x sin t + y cos t).

    ``tau`` defaults to the step with Courant number ``cfl`` (τ (max|a| + max|b|)/h = cfl).
    """
    x, y = grid_coordinates(height, width, h, dtype=dtype)
    a, b = -y, x
    return TransportResNet(a, b, tau or _transport_tau(a, b, h, cfl), h, padding_mode, hyperviscosity)


def dilation_resnet(
    height: int, width: int, h: float, rate: float = 1.0, tau: float | None = None, cfl: float = 1.0,
    padding_mode: str = "zeros", dtype: torch.dtype | None = None, hyperviscosity: float = 0.0,
) -> TransportResNet:
    """∂u/∂t = -s (x ∂u/∂x + y ∂u/∂y), s = ``rate``: u(x, y, t) = f(e^{-st} x, e^{-st} y), a zoom by e^{st}."""
    x, y = grid_coordinates(height, width, h, dtype=dtype)
    a, b = -rate * x, -rate * y
    return TransportResNet(a, b, tau or _transport_tau(a, b, h, cfl), h, padding_mode, hyperviscosity)
