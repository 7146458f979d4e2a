"""Stability claims of Ruthotto & Haber in float64: Theorem 1, the Hamiltonian spectrum, the Euler bound."""

import pytest
import torch
import torch.nn.functional as F

from pdenets.analysis import (
    forward_stability,
    jacobian_matrix,
    layer_jacobian_spectrum,
    operator_norm_sq,
    parabolic_step_bound,
)
from pdenets.dynamics import create_unit
from pdenets.layers.symmetric import SymmetricLayer


def _conv_matrix(w, c, hw):
    """Dense matrix of the zero-padded 3×3 conv, built from torch's conv2d on basis images."""
    n = c * hw * hw
    eye = torch.eye(n).reshape(n, c, hw, hw)
    return F.conv2d(eye, w, padding=1).reshape(n, -1).T


def _eval_bn_layer(act):
    layer = SymmetricLayer(3, norm="batch", act=act)
    layer.norm.running_mean.normal_()
    layer.norm.running_var.uniform_(0.5, 2.0)
    layer.norm.weight.data.uniform_(0.2, 2.0)  # γ > 0 keeps σ∘N monotone
    return layer.eval()


@pytest.mark.parametrize("act", ["relu", "tanh", "leaky_relu", "softplus"])
@pytest.mark.parametrize("norm", ["none", "batch-eval"])
def test_parabolic_jacobian_symmetric_nsd(f64, act, norm):
    torch.manual_seed(0)
    layer = SymmetricLayer(3, norm="none", act=act) if norm == "none" else _eval_bn_layer(act)
    for _ in range(2):
        y = 2 * torch.randn(1, 3, 5, 5)
        J = jacobian_matrix(layer, y)
        assert float((J - J.T).abs().max()) <= 1e-12
        ev = layer_jacobian_spectrum(layer, y)
        assert float(ev.imag.abs().max()) <= 1e-10
        assert float(ev.real.max()) <= 1e-10
        assert float(ev.real.min()) < -1e-3  # non-trivial
    if norm == "none" and act == "relu":  # closed form −Kᵀ diag(σ'(Ky + b)) K
        K = _conv_matrix(layer.weight, 3, 5)
        pre = K @ y.reshape(-1) + layer.bias.repeat_interleave(25)
        assert torch.allclose(J, -K.T @ torch.diag((pre > 0).double()) @ K, atol=1e-12)


def test_instance_norm_breaks_symmetry(f64):
    """DESIGN §5: instance norm couples pixels, so Theorem 1's symmetric Jacobian does not hold with it."""
    torch.manual_seed(1)
    J = jacobian_matrix(SymmetricLayer(3, norm="instance"), torch.randn(1, 3, 5, 5))
    assert float((J - J.T).abs().max()) > 1e-3


def test_hamiltonian_linearisation_purely_imaginary(f64):
    torch.manual_seed(2)
    unit = create_unit("hamiltonian", 4, steps=1, norm="none", act="identity", bias=False)
    y = torch.randn(1, 4, 4, 4)
    ev = layer_jacobian_spectrum(unit, y)
    scale = float(ev.abs().max())
    assert scale > 1e-2 and float(ev.real.abs().max()) <= 1e-8 * scale
    # against the closed form: λ² = −μ, μ the eigenvalues of K₁ᵀK₁ K₂ᵀK₂
    K1, K2 = _conv_matrix(unit.layers_y[0].weight, 2, 4), _conv_matrix(unit.layers_z[0].weight, 2, 4)
    mu = torch.linalg.eigvals(K1.T @ K1 @ K2.T @ K2).real.sort().values
    lam2 = (-(ev * ev).real).sort().values
    assert torch.allclose(lam2, mu.repeat_interleave(2), rtol=1e-7, atol=1e-9 * scale**2)


def test_euler_non_expansive_within_bound(f64):
    torch.manual_seed(3)
    unit = create_unit("parabolic", 3, steps=4, h=1.0, norm="none", act="relu")
    layers = list(unit.layers)
    # the bound 2/‖K‖² of each step: against the dense Jacobian of the linear layer (σ = identity)
    for layer in layers:
        lin = SymmetricLayer(3, norm="none", act="identity", bias=False)
        lin.weight.data = layer.weight.data
        lam_max = float(torch.linalg.eigvalsh(-jacobian_matrix(lin, torch.zeros(1, 3, 6, 6))).max())
        assert abs(operator_norm_sq(layer, (6, 6)) - lam_max) <= 1e-9 * lam_max
    h = 0.99 * min(parabolic_step_bound(layer, (6, 6)) for layer in layers)
    unit.h = h
    y = 3 * torch.randn(4, 3, 6, 6)
    for eps in (1e-2, 1.0):
        r = forward_stability(unit, y, eps=eps, trials=16)
        assert float(r.max()) <= 1 + 1e-12
    # pairs of unrelated points, not only small perturbations
    with torch.no_grad():
        a, b = torch.randn(8, 3, 6, 6), torch.randn(8, 3, 6, 6)
        ratio = (unit(a) - unit(b)).flatten(1).norm(dim=1) / (a - b).flatten(1).norm(dim=1)
    assert float(ratio.max()) <= 1 + 1e-12


def test_euler_expands_beyond_bound(f64):
    """Power check: with h = 1.5× the bound and σ = identity, the top eigenvector is amplified."""
    torch.manual_seed(4)
    layer = SymmetricLayer(3, norm="none", act="identity", bias=False)
    J = jacobian_matrix(layer, torch.zeros(1, 3, 6, 6))
    ev, vec = torch.linalg.eigh(J)
    h = 1.5 * parabolic_step_bound(layer, (6, 6))
    v = vec[:, 0].reshape(1, 3, 6, 6)
    with torch.no_grad():
        assert float((v + h * layer(v)).norm() / v.norm()) > 1.4
