"""The continuous equation (56): Euler converges at first order to the closed forms (85), (87), (89);
the Hamiltonian a·F is conserved (Eqs. 24-25) up to O(Δt); the energy balance (104)-(108)."""

import math

import pytest
import torch

from pdenets.analysis.ode_checks import (
    closed_form_adjoint_diagonal,
    closed_form_diagonal,
    conserved_quantity,
    energy_terms,
    euler_adjoint,
    euler_trajectory,
    ruseckas_field,
)

STEPS = (200, 400, 800, 1600)


def _orders(errors):
    return [math.log2(e1 / e2) for e1, e2 in zip(errors, errors[1:])]


@pytest.mark.parametrize("w", [-1.3, 0.0, 0.8])  # w = 0 is Eq. (87)
def test_euler_converges_to_closed_form_first_order(f64, w):
    gamma, t_end = 0.7, 2.0
    x0 = torch.tensor([[1.5, -0.4, 0.05, -2.0]])
    wmat = w * torch.eye(4)
    f = ruseckas_field(wmat, torch.zeros(4), gamma)
    exact = closed_form_diagonal(x0, w, gamma, t_end)
    # Eq. (85) solves Eq. (84): check its derivative by a central difference, independent of Euler
    h = 1e-5
    dxdt = (closed_form_diagonal(x0, w, gamma, 1.0 + h) - closed_form_diagonal(x0, w, gamma, 1.0 - h)) / (2 * h)
    x1 = closed_form_diagonal(x0, w, gamma, 1.0)
    assert torch.allclose(dxdt, w * x1 - gamma * x1**3, atol=1e-8)
    if w == 0:  # Eq. (87) literally
        assert torch.allclose(exact, x0 / torch.sqrt(1 + 2 * gamma * x0**2 * t_end), atol=1e-15)
    errors = [(euler_trajectory(f, x0, t_end, n)[-1] - exact).abs().max().item() for n in STEPS]
    orders = _orders(errors)
    assert all(0.9 <= p <= 1.1 for p in orders), (errors, orders)
    assert errors[-1] < 1e-3


@pytest.mark.parametrize("w", [-0.6, 0.0, 0.5])
def test_euler_adjoint_converges_to_eq89(f64, w):
    gamma, t_end = 0.5, 1.5
    x0 = torch.tensor([[1.2, -0.7]])
    f = ruseckas_field(w * torch.eye(2), torch.zeros(2), gamma)
    a_end = torch.tensor([[0.3, -1.1]])
    errors = []
    for n in STEPS[:3]:
        xs = euler_trajectory(f, x0, t_end, n)
        adj = euler_adjoint(f, xs, a_end, t_end)
        exact = closed_form_adjoint_diagonal(x0, w, gamma, 0.0, t_end, a_end)
        errors.append((adj[0] - exact).abs().max().item())
    assert all(0.9 <= p <= 1.1 for p in _orders(errors)), errors


def test_hamiltonian_conserved_to_first_order(f64):
    """Eq. (24)/(25) for t-independent, non-symmetric w, b ≠ 0: max_l |H_l − H_L| = O(Δt) → 0 at order 1."""
    torch.manual_seed(0)
    n = 3
    w = 0.8 * torch.randn(n, n)
    b = 0.5 * torch.randn(n)
    f = ruseckas_field(w, b, 0.4)
    x0 = torch.randn(5, n)
    target = torch.randn(5, n)
    t_end = 1.5
    devs, h_final = [], None
    for steps in STEPS:
        xs = euler_trajectory(f, x0, t_end, steps)
        adj = euler_adjoint(f, xs, xs[-1] - target, t_end)  # 𝓛 = ½‖x(T) − target‖², a(T) = x(T) − target
        h = conserved_quantity(f, xs, adj)  # (steps + 1, 5)
        devs.append((h - h[-1]).abs().max().item())
        h_final = h[-1]
    # H varies by O(1) if it were not conserved: compare with a non-conserved control, a(t)·x(t)
    control = (adj * xs).sum(-1)
    assert (control - control[-1]).abs().max() > 100 * devs[-1]
    assert devs[-1] < 1e-2 * h_final.abs().max()
    assert all(0.9 <= p <= 1.1 for p in _orders(devs)), (devs, _orders(devs))


def test_energy_balance(f64):
    """dE/dt = P_w + P_b − P_γ (Eq. 104) by a central difference of E = ½‖x‖² along the flow; the
    antisymmetric part of w does no work."""
    torch.manual_seed(2)
    n = 4
    w = torch.randn(n, n)
    b = torch.randn(n)
    x = torch.randn(6, n)
    for mu in (3.0, 2.5):
        f = ruseckas_field(w, b, 0.3, mu)
        h = 1e-5
        energy = lambda z: 0.5 * z.square().sum(-1)  # noqa: E731
        # second-order accurate dE/dt from two tiny RK2 steps forward and backward
        fwd = x + h * f(x + 0.5 * h * f(x))
        bwd = x - h * f(x - 0.5 * h * f(x))
        dedt = (energy(fwd) - energy(bwd)) / (2 * h)
        p_w, p_b, p_g = energy_terms(x, w, b, 0.3, mu)
        assert torch.allclose(dedt, p_w + p_b - p_g, atol=1e-7)
        assert torch.allclose(p_g, 0.3 * (x.abs() ** (mu + 1)).sum(-1))
    anti = torch.randn(n, n)
    anti = anti - anti.T
    assert torch.allclose(energy_terms(x, w + anti, b, 0.3)[0], energy_terms(x, w, b, 0.3)[0], atol=1e-12)
