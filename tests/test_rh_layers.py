"""Ruthotto-Haber symmetric layer (Eq. 6) and integrators (Eq. 7, Verlet, Eqs. 8-9), float64."""

import pytest
import torch
import torch.nn.functional as F

from pdenets.dynamics import create_unit, refine_in_time
from pdenets.layers.derivative import PADDING_MODES
from pdenets.layers.symmetric import SymmetricLayer, conv_k, conv_kt


def _k_ref(y, w, mode):
    """K by torch's own padded conv (independent of conv_k)."""
    if mode == "zeros":
        return F.conv2d(y, w, padding=1)
    return torch.nn.Conv2d(w.shape[1], w.shape[0], 3, padding=1, padding_mode=mode, bias=False)._conv_forward(
        y, w, None)


@pytest.mark.parametrize("mode", PADDING_MODES)
def test_kt_is_the_adjoint_of_k(f64, mode):
    torch.manual_seed(0)
    w = torch.randn(5, 3, 3, 3)
    y = torch.randn(2, 3, 6, 7, requires_grad=True)
    x = torch.randn(2, 5, 6, 7)
    assert torch.allclose(conv_k(y, w, mode), _k_ref(y, w, mode), atol=1e-12)
    # Kᵀ x = vjp of K at x (autograd), and <Ky, x> = <y, Kᵀx>
    (vjp,) = torch.autograd.grad(_k_ref(y, w, mode), y, x)
    assert torch.allclose(conv_kt(x, w, mode), vjp, atol=1e-12)
    y = y.detach()
    lhs = (conv_k(y, w, mode) * x).sum()
    rhs = (y * conv_kt(x, w, mode)).sum()
    assert abs(float(lhs - rhs)) < 1e-10 * float(lhs.abs() + 1)


@pytest.mark.parametrize("mode", ["zeros", "circular"])
def test_fsym_matches_formula(f64, mode):
    torch.manual_seed(1)
    layer = SymmetricLayer(3, hidden=4, norm="none", act="tanh", padding_mode=mode)
    y = torch.randn(2, 3, 5, 5, requires_grad=True)
    w, b = layer.weight, layer.bias
    s = torch.tanh(_k_ref(y, w, mode) + b.view(1, -1, 1, 1))
    (kts,) = torch.autograd.grad(_k_ref(y, w, mode), y, s, retain_graph=True)
    assert torch.allclose(layer(y), -kts, atol=1e-12)


def test_instance_norm_inside(f64):
    torch.manual_seed(2)
    layer = SymmetricLayer(4, norm="instance")
    y = torch.randn(2, 4, 6, 6)
    x = F.conv2d(y, layer.weight, padding=1)
    xn = (x - x.mean((2, 3), keepdim=True)) / torch.sqrt(x.var((2, 3), unbiased=False, keepdim=True) + 1e-5)
    xn = xn * layer.norm.weight.view(1, -1, 1, 1) + layer.norm.bias.view(1, -1, 1, 1)
    assert torch.allclose(layer(y), -F.conv_transpose2d(torch.relu(xn), layer.weight, padding=1), atol=1e-12)


def test_bad_options():
    with pytest.raises(ValueError, match="norm"):
        SymmetricLayer(4, norm="group")
    with pytest.raises(ValueError, match="activation"):
        SymmetricLayer(4, act="swish")
    with pytest.raises(ValueError, match="even"):
        create_unit("hamiltonian", 5)
    with pytest.raises(ValueError, match="not reversible"):
        create_unit("parabolic", 4, reversible=True)


def test_schemes_by_hand(f64):
    torch.manual_seed(3)
    x = torch.randn(2, 4, 5, 5)
    h = 0.7
    par = create_unit("parabolic", 4, steps=2, h=h, norm="none")
    y = x
    for layer in par.layers:
        y = y + h * layer(y)
    assert torch.allclose(par(x), y, atol=1e-13)

    ham = create_unit("hamiltonian", 4, steps=2, h=h, norm="none")
    y, z = x[:, :2], x[:, 2:]  # documented split: Y = first half of the channels, Z = second half
    for f1, f2 in zip(ham.layers_y, ham.layers_z):
        y = y + h * f1(z)
        z = z - h * f2(y)
    assert torch.allclose(ham(x), torch.cat([y, z], 1), atol=1e-13)

    so = create_unit("second_order", 4, steps=3, h=h, norm="none")
    ys = [x, x]  # Y_{-1} = Y_0
    for layer in so.layers:
        ys.append(2 * ys[-1] - ys[-2] + h * h * layer(ys[-1]))
    assert torch.allclose(so(x), ys[-1], atol=1e-13)
    # first step with zero initial velocity: Y_1 = Y_0 + h² F(θ_0, Y_0)
    assert torch.allclose(ys[2], x + h * h * so.layers[0](x), atol=1e-13)


@pytest.mark.parametrize("dyn", ["parabolic", "hamiltonian", "second_order"])
def test_refine_in_time(f64, dyn):
    torch.manual_seed(4)
    unit = create_unit(dyn, 4, steps=3, h=1.0, norm="none", act="tanh")
    for j in range(3):  # make θ smooth in time so the refined unit is a better discretisation of the same ODE
        for k, layer in enumerate(unit.step_layers(j)):
            layer.weight.data = 0.3 * unit.step_layers(0)[k].weight.data * (1 + 0.1 * j)
    fine = refine_in_time(unit)
    assert fine.steps == 6 and fine.h == 0.5
    w = [fine.step_layers(k)[0].weight for k in range(6)]
    v = [unit.step_layers(j)[0].weight for j in range(3)]
    assert torch.equal(w[2], v[1]) and torch.allclose(w[3], (v[1] + v[2]) / 2) and torch.equal(w[5], v[2])
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        finer = refine_in_time(fine)(x)
        d_coarse = (unit(x) - finer).norm()
        d_fine = (fine(x) - finer).norm()
    # consistent time discretisation: halving h moves the output towards the finer solution
    assert d_fine < 0.75 * d_coarse
