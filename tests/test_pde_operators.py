"""Stencil ↔ operator change of basis (Ruthotto-Haber) — checked against Taylor expansions, not the code."""

import pytest
import torch

from pdenets.pde.operators import (
    BASES,
    EXPONENTS,
    format_report,
    kernel_report,
    laplacian_stencil,
    order_shares,
    sobel_stencils,
    to_operators,
    to_stencil,
)


@pytest.mark.parametrize("basis", BASES)
@pytest.mark.parametrize("h", [1.0, 0.5, 2.0])
def test_round_trip(f64, basis, h):
    g = torch.Generator().manual_seed(0)
    st = torch.randn(50, 3, 3, generator=g)
    assert (to_stencil(to_operators(st, h, basis), h, basis) - st).abs().max() < 1e-12
    c = torch.randn(50, 9, generator=g)
    assert (to_operators(to_stencil(c, h, basis), h, basis) - c).abs().max() < 1e-12
    # the closed-form inverse agrees with a generic linear solve of the 9×9 system
    m = to_stencil(torch.eye(9), h, basis).reshape(9, 9).T
    assert (torch.linalg.solve(m, st.reshape(50, 9).T).T - to_operators(st, h, basis)).abs().max() < 1e-12


def _apply(stencil, f, x, y, h):
    """Cross-correlate a 3×3 stencil with a function at (x, y): Σ k[i, j] f(x + (j-1)h, y + (i-1)h)."""
    return sum(stencil[i, j] * f(x + (j - 1) * h, y + (i - 1) * h) for i in range(3) for j in range(3))


@pytest.mark.parametrize("basis", BASES)
def test_basis_stencils_are_the_operators_on_polynomials(f64, basis):
    """Each basis stencil applied to x^p y^q at 0 gives ∂x^a∂y^b(x^p y^q)(0) for p, q ≤ 2 except where the
    identity of the 'rh' basis smooths (independent check by direct evaluation, mesh size h)."""
    h = 0.3
    for k, (a, b) in enumerate(EXPONENTS):
        c = torch.zeros(9)
        c[k] = 1.0
        st = to_stencil(c, h, basis)
        for p in range(3):
            for q in range(3):
                val = _apply(st, lambda x, y, p=p, q=q: x**p * y**q, 0.0, 0.0, h)
                exact = float(p == a and q == b) * (1 if a < 2 else 2) * (1 if b < 2 else 2)
                # the smoothing identity [1, 2, 1]/4 maps x^2 to x^2 + h^2/2: only affects p = 2 with a = 0
                if basis == "rh":
                    if a == 0 and p == 2 and q == b:
                        exact += (h**2 / 2) * (1 if b < 2 else 2)
                    if b == 0 and q == 2 and p == a:
                        exact += (h**2 / 2) * (1 if a < 2 else 2)
                    if a == 0 and b == 0 and p == 2 and q == 2:
                        exact = h**4 / 4
                assert abs(val - exact) < 1e-12, (k, p, q, val, exact)


def test_sobel_is_first_order(f64):
    for basis in BASES:
        for h in (1.0, 0.5):
            sx, sy = to_operators(sobel_stencils(), h, basis)
            # 8h ∂x / 8h ∂y, and the smoothing: an O(h²) ∂x∂y² (∂x²∂y) term in the fd basis, none in rh
            ex = torch.zeros(9)
            ey = torch.zeros(9)
            ex[1] = ey[2] = 8 * h
            if basis == "fd":
                ex[7] = ey[6] = 8 * h * h**2 / 4
            assert (sx - ex).abs().max() < 1e-12 and (sy - ey).abs().max() < 1e-12
    shares = order_shares(sobel_stencils(), 1.0, "rh")
    assert (shares[:, 1] - 1).abs().max() < 1e-12
    # the Sobel filter acting on a linear function really is 8h times its slope (independent evaluation)
    s = sobel_stencils()[0]
    assert abs(_apply(s, lambda x, y: 2.5 * x - y, 0.0, 0.0, 0.5) - 8 * 0.5 * 2.5) < 1e-12


def test_eq8_kernel_is_the_laplacian(f64):
    h = 0.25
    c = to_operators(laplacian_stencil(h), h, "fd")
    expected = torch.zeros(9)
    expected[3] = expected[4] = 1.0
    assert (c - expected).abs().max() < 1e-12
    assert (order_shares(laplacian_stencil(h), h, "fd") - torch.tensor([0.0, 0.0, 1.0, 0.0])).abs().max() < 1e-12
    c = to_operators(laplacian_stencil(h), h, "rh")
    expected[8] = -(h**2) / 2  # ∂x² + ∂y² up to an O(h²) fourth-order correction
    assert (c - expected).abs().max() < 1e-12


def test_kernel_report_on_model(f64):
    from pdenets.models import create_model

    model = create_model("qlnet18_eq3_small", num_classes=10, in_chans=1)
    with torch.no_grad():
        model.layer1[0].conv_d.weight[0, 0] = sobel_stencils()[0]
        model.layer1[0].conv_d.weight[1, 0] = laplacian_stencil()
    rows = kernel_report(model)
    assert len(rows) == 4 * 4  # four stages, one block each, 4 shared kernels per block
    assert rows[0].module == "layer1.0.conv_d" and abs(rows[0].coefficients[1] - 8) < 1e-12
    assert abs(rows[1].shares[2] - 1) < 1e-12
    for r in rows:
        st = torch.as_tensor(r.stencil)
        assert (to_stencil(torch.as_tensor(r.coefficients)) - st).abs().max() < 1e-12
        assert abs(r.shares.sum() - 1) < 1e-12
    assert "mean share" in format_report(rows)
