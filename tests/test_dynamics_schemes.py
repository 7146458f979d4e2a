"""The time-stepping schemes of every family (docs/design.md §14): observed orders of convergence on smooth
problems with known solutions (float64), the scripted (TorchScript) forms, reversibility, re-discretisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pdenets
from pdenets.analysis.ode_checks import closed_form_diagonal
from pdenets.dynamics import create_unit, interpolation_weights
from pdenets.dynamics.schemes import create_scheme, new_time_grid, schemes_for
from pdenets.models.ruseckas import OdeNet

pytestmark = pytest.mark.usefixtures("one_thread")

T = 1.0
ORDERS = {  # (dynamics, scheme) -> (nominal order, step counts of the refinement)
    ("parabolic", "forward_euler"): (1, (16, 32, 64, 128)),
    ("parabolic", "rk4"): (4, (8, 16, 32, 64)),
    ("hamiltonian", "symplectic_euler"): (1, (16, 32, 64, 128)),
    ("hamiltonian", "stormer_verlet"): (2, (8, 16, 32, 64)),
    ("hamiltonian", "forward_euler"): (1, (16, 32, 64, 128)),
    ("hamiltonian", "rk4"): (4, (8, 16, 32, 64)),
    ("second_order", "leapfrog"): (2, (8, 16, 32, 64)),
    ("second_order", "leapfrog_first_order_start"): (1, (16, 32, 64, 128)),
    ("second_order", "stormer_verlet"): (2, (8, 16, 32, 64)),
    ("second_order", "forward_euler"): (1, (16, 32, 64, 128)),
    ("second_order", "rk4"): (4, (8, 16, 32, 64)),
}


def _slope(steps, errors) -> float:
    """Observed order: minus the slope of log(error) against log(h), h = T / steps (least squares)."""
    h = T / np.asarray(steps, dtype=float)
    return float(np.polyfit(np.log(h), np.log(np.asarray(errors)), 1)[0])


def _linear_unit(dyn: str, scheme: str, steps: int, weights: list[torch.Tensor]):
    """A unit whose every step has the same K and F_sym(Y) = −KᵀK Y (σ = identity, no norm, no bias): a linear,
    autonomous problem whose exact solution is a matrix exponential."""
    channels = weights[0].shape[1] * (2 if dyn == "hamiltonian" else 1)
    unit = create_unit(dyn, channels, steps=steps, h=T / steps, scheme=scheme, norm="none", act="identity",
                       bias=False)
    for j in range(steps):
        for layer, w in zip(unit.step_layers(j), weights):
            layer.weight.data.copy_(w)
    return unit


def _matrix(fn, n: int) -> torch.Tensor:
    """The matrix of a linear map R^n → R^n from its values on the unit vectors."""
    return torch.stack([fn(e) for e in torch.eye(n, dtype=torch.float64)], 1)


def _exact(dyn: str, weights: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The unit's output at t = T by the matrix exponential of the first-order system."""
    shape = x.shape
    c = shape[1] if dyn != "hamiltonian" else shape[1] // 2
    n = c * shape[2] * shape[3]

    def field(w):  # the matrix of F_sym(θ, ·) = −KᵀK on R^n
        layer = _linear_unit("parabolic", "forward_euler", 1, [w]).step_layers(0)[0]
        return _matrix(lambda e: layer(e.reshape(1, c, *shape[2:])).reshape(-1), n)

    zero = torch.zeros(n, n)
    if dyn == "parabolic":
        return (torch.linalg.matrix_exp(T * field(weights[0])) @ x.reshape(-1)).reshape(shape)
    if dyn == "hamiltonian":  # Y' = F(θ¹, Z), Z' = −F(θ², Y)
        m = torch.cat([torch.cat([zero, field(weights[0])], 1), torch.cat([-field(weights[1]), zero], 1)], 0)
        return (torch.linalg.matrix_exp(T * m) @ x.reshape(-1)).reshape(shape)  # (Y, Z) = channel halves
    m = torch.cat([torch.cat([zero, torch.eye(n)], 1), torch.cat([field(weights[0]), zero], 1)], 0)  # (Y, Y')
    u = torch.linalg.matrix_exp(T * m) @ torch.cat([x.reshape(-1), torch.zeros(n)])
    return u[:n].reshape(shape)


@pytest.mark.parametrize("dyn,scheme", list(ORDERS))
def test_observed_order_of_every_rh_scheme(f64, dyn, scheme):
    order, steps = ORDERS[(dyn, scheme)]
    torch.manual_seed(0)
    c = 4 if dyn != "hamiltonian" else 2
    weights = [0.15 * torch.randn(c, c, 3, 3) for _ in range(2 if dyn == "hamiltonian" else 1)]
    x = torch.randn(1, 4, 4, 4)
    exact = _exact(dyn, weights, x)
    with torch.no_grad():
        errors = [float((_linear_unit(dyn, scheme, n, weights)(x) - exact).norm()) for n in steps]
    assert errors[-1] < errors[0]
    assert abs(_slope(steps, errors) - order) <= 0.15, (errors, _slope(steps, errors))


def _ode_net(scheme: str, depth: int, w: torch.Tensor, gamma: float, k: float = 0.0) -> OdeNet:
    """dx/dt = w x − γ x³ (diagonal w, b = 0) on [0, T] in ``depth`` steps: W̃ = Δt w, γ̃ = Δt γ (Eq. 110)."""
    net = OdeNet(in_features=3, width=3, depth=depth, gamma=gamma * T / depth, learn_gamma=False, scheme=scheme)
    net.weight.data.copy_(torch.diag(w * T / depth).expand(depth, 3, 3))
    if net.k is not None:
        net.k.data.fill_(k)
    return net


@pytest.mark.parametrize("scheme,order,k", [("euler", 1, 0.0), ("rk4", 4, 0.0), ("lm2", 1, 0.5)])
def test_observed_order_of_the_ruseckas_schemes(f64, scheme, order, k):
    """Against the closed form Eq. (85); lm2 with a fixed k converges to dx/dt = f/(1 + k) (docs/design.md §14)."""
    w, gamma = torch.tensor([-0.8, 0.3, 1.1]), 0.7
    x0 = torch.tensor([[1.2, -0.5, 0.9]])
    exact = closed_form_diagonal(x0, w / (1 + k), gamma / (1 + k), T)
    steps = (16, 32, 64, 128) if order == 4 else (32, 64, 128, 256)
    with torch.no_grad():
        errors = [float((_ode_net(scheme, n, w, gamma, k).forward_features(x0) - exact).norm()) for n in steps]
    assert abs(_slope(steps, errors) - order) <= 0.15, errors
    # h only says which Δt the scaled parameters W̃ = Δt w refer to: the same W̃ with h = T / L is the same network
    net = _ode_net(scheme, 32, w, gamma, k)
    same = OdeNet(in_features=3, width=3, depth=32, gamma=1.0, learn_gamma=False, scheme=scheme, h=T / 32)
    same.load_state_dict(net.state_dict())
    assert same.time_step() * same.depth == pytest.approx(T)
    torch.testing.assert_close(same.forward_features(x0), net.forward_features(x0), rtol=1e-13, atol=1e-15)


def test_scheme_table():
    assert schemes_for("hamiltonian") == ["forward_euler", "rk4", "symplectic_euler", "stormer_verlet"]
    assert set(schemes_for("second_order")) == {"forward_euler", "rk4", "stormer_verlet", "leapfrog",
                                                "leapfrog_first_order_start"}
    assert create_scheme("euler", "first_order").name == "forward_euler"
    with pytest.raises(ValueError, match="does not apply"):
        create_scheme("leapfrog", "first_order")
    with pytest.raises(ValueError, match="not reversible"):
        create_unit("hamiltonian", 4, scheme="rk4", reversible=True)
    # the defaults are the papers' schemes
    assert [create_unit(d, 4).scheme_name for d in ("parabolic", "hamiltonian", "second_order")] == [
        "forward_euler", "symplectic_euler", "leapfrog_first_order_start"]


SCRIPTED = [(d, s) for d, s in ORDERS] + [("hamiltonian", "symplectic_euler")]


@pytest.mark.parametrize("dyn,scheme", sorted(set(SCRIPTED)))
def test_scripted_unit_equals_eager(f64, dyn, scheme):
    """The TorchScript path (forward_unrolled, one loop per scheme) computes what the scheme classes compute."""
    torch.manual_seed(1)
    unit = create_unit(dyn, 4, steps=3, h=0.4, scheme=scheme, norm="instance", act="tanh").eval()
    x = torch.randn(2, 4, 5, 5)
    scripted = torch.jit.script(unit)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), unit(x), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("dyn,scheme", [("hamiltonian", "stormer_verlet"), ("second_order", "leapfrog"),
                                        ("second_order", "stormer_verlet")])
def test_new_reversible_schemes(f64, dyn, scheme):
    """Memory-flat gradients equal autograd's, and the initial state is recovered from the final one."""
    torch.manual_seed(2)
    unit = create_unit(dyn, 4, steps=4, h=0.5, scheme=scheme, norm="none", act="tanh")
    x, w = torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5)
    grads = []
    for rev in (False, True):
        unit.reversible = rev
        unit.zero_grad()
        xx = x.clone().requires_grad_()
        (unit(xx) * w).sum().backward()
        grads.append([xx.grad] + [p.grad.clone() for p in unit.parameters()])
    for a, b in zip(*grads):
        assert float((a - b).norm() / b.norm()) <= 1e-10
    with torch.no_grad():
        assert float((unit.reconstruct(unit.integrate(x)) - x).abs().max()) <= 1e-12


def test_interpolation_weights_any_factor():
    assert interpolation_weights(3, 6) == [(0, 0, 0.0), (0, 1, 0.5), (1, 1, 0.0), (1, 2, 0.5), (2, 2, 0.0),
                                           (2, 2, 0.0)]  # the shallow-to-deep rule
    w = interpolation_weights(2, 6)  # s = k/6 on θ_0 at s = 0, θ_1 at s = 1/2, constant after
    assert [(a, b) for a, b, _ in w] == [(0, 0), (0, 1), (0, 1), (1, 1), (1, 1), (1, 1)]
    assert np.allclose([x for _, _, x in w], [0, 1 / 3, 2 / 3, 0, 0, 0])
    # held θ(t), sampled at the new steps' midpoints: a whole factor repeats every step
    assert interpolation_weights(2, 6, "constant") == [(0, 0, 0.0)] * 3 + [(1, 1, 0.0)] * 3
    assert [a for a, _, _ in interpolation_weights(3, 4, "constant")] == [0, 1, 1, 2]
    assert new_time_grid([3, 3], 1.0, factor=3) == ([9, 9], 1 / 3)
    assert new_time_grid([3], 1.0, new_steps=4) == ([4], 0.75)
    assert new_time_grid([3], 1.0, new_h=0.5) == ([3], 0.5)
    with pytest.raises(ValueError, match="whole numbers"):
        new_time_grid([3], 1.0, factor=0.5)


def test_rediscretized_rh_net_converges_and_reloads(f64, tmp_path):
    """θ(t) held on the trained steps (the default): refining by 2, 4, 8 integrates the same ODE, so the distance
    to a 32× finer net falls at Störmer–Verlet's order 2; with linear interpolation it falls too (another θ(t));
    the re-discretised network is an artifact that reloads with its edit."""
    from pdenets.analysis.rediscretize import rediscretize
    from pdenets.artifacts import edits, save_artifact

    torch.manual_seed(3)
    m = pdenets.create_model("rh_hamiltonian_small", in_chans=1, widths=(4, 4), steps=4, h=0.25, norm="none",
                             act="tanh", scheme="stormer_verlet").eval()
    for u in m.units():
        for j in range(u.steps):
            for layer, first in zip(u.step_layers(j), u.step_layers(0)):
                layer.weight.data = 0.5 * first.weight.data * (1 + 0.2 * j)
    x = torch.randn(2, 1, 8, 8)
    factors = (1, 2, 4, 8)
    with torch.no_grad():
        for mode in ("constant", "linear"):
            finest = rediscretize(m, factor=32, interpolation=mode)(x)
            errors = [float((rediscretize(m, factor=f, interpolation=mode)(x) - finest).norm()) for f in factors]
            assert errors[3] < errors[2] < errors[1] < errors[0]
            if mode == "constant":
                slope = -np.polyfit(np.log(factors), np.log(errors), 1)[0]
                assert abs(slope - 2) <= 0.15, errors
    new = rediscretize(m, factor=3)
    assert [u.steps for u in new.units()] == [12, 12] and new.h == pytest.approx(0.25 / 3)
    assert edits(new)[-1]["op"] == "rediscretize" and edits(new)[-1]["before"]["steps"] == [4, 4]
    save_artifact(new, tmp_path / "a")
    back = pdenets.load(tmp_path / "a")
    assert edits(back)[-1]["after"]["steps"] == [12, 12]
    with torch.no_grad():
        torch.testing.assert_close(back.double()(x), new(x), rtol=0, atol=0)


def test_rediscretized_ruseckas_net(f64):
    """W̃ = Δt w rescaled: the refined nets are Euler with Δt/f on the same ODE (w(t) held on the layers, the
    default), so successive refinements differ at first order (Richardson: ‖x_f − x_2f‖ halves); a learnable T
    is kept."""
    import math

    from pdenets.analysis.rediscretize import rediscretize

    torch.manual_seed(4)
    m = pdenets.create_model("ruseckas_circles_r3", gamma=0.1)
    t = torch.linspace(0, 1, m.depth)[:, None, None]
    m.weight.data = 0.1 * (torch.randn(3, 3) + t * torch.randn(3, 3))
    x = torch.randn(16, 2)
    with torch.no_grad():
        xs = {f: rediscretize(m, factor=f).forward_features(x) for f in (4, 8, 16, 32)}
    d = [float((xs[f] - xs[2 * f]).norm()) for f in (4, 8, 16)]
    assert all(abs(math.log2(a / b) - 1) <= 0.15 for a, b in zip(d, d[1:])), d
    new = rediscretize(m, steps=60)
    assert new.depth == 60 and new.h == pytest.approx(1 / 3) and float(new.gamma) == pytest.approx(0.1 / 3)
    lt = pdenets.create_model("ruseckas_circles_r2", learn_time=True)
    lt.final_time.data.fill_(80.0)
    new = rediscretize(lt, steps=50)
    assert new.final_time.item() == pytest.approx(80.0) and new.time_step().item() == pytest.approx(1.6)


def test_trained_rh_net_at_2x_and_3x_the_steps(tmp_path):
    """Acceptance (issue 16): a Hamiltonian network trained on digits with Störmer–Verlet at h = 0.5 (8 px, half
    width, 100 AdamW steps) keeps its test accuracy within 1 point when evaluated with 2× and 3× the steps (h/2,
    h/3; θ(t) held on the trained steps). The README has the full-size figures of every network and scheme."""
    from pdenets.analysis.rediscretize import rediscretize
    from pdenets.analysis.rh_experiments import build_model, downsample, load_data, predict, train, train_config

    data = load_data("digits")
    model = build_model("hamiltonian", data, seed=0, steps=4, h=0.5, width=0.5, scheme="stormer_verlet")
    cfg = train_config("rh_hamiltonian_small", "digits", 100, len(data.y_train), tmp_path / "run", batch_size=64)
    model, _ = train(model, data.splits(size=8), cfg)
    x = downsample(data.x_test, 8)

    def acc(m) -> float:
        return 100 * float((predict(m, x).argmax(1) == data.y_test).float().mean())

    base = acc(model)
    assert base >= 90.0
    for f in (2, 3):
        refined = rediscretize(model, factor=f)
        assert [u.steps for u in refined.units()] == [4 * f] * 3 and refined.h == pytest.approx(0.5 / f)
        assert abs(acc(refined) - base) <= 1.0, (f, acc(refined), base)


def test_potential_and_energy_conservation(f64):
    """F_sym = −∇P (autograd as the reference), and for θ constant in time the Hamiltonian H = −P₁(Z) − P₂(Y) is
    kept by Störmer–Verlet to O(h²) (a tenfold finer step: ≥ 20× smaller drift, 100× asymptotically) but
    drifts under forward Euler."""
    from pdenets.analysis.rh_dynamics import layer_potential, unit_dynamics
    from pdenets.layers.symmetric import SymmetricLayer

    torch.manual_seed(5)
    layer = SymmetricLayer(3, norm="batch", act="tanh", padding_mode="reflect").eval()
    layer.norm.running_var.uniform_(0.5, 2.0)
    y = torch.randn(2, 3, 5, 5, requires_grad=True)
    (grad,) = torch.autograd.grad(layer_potential(layer, y).sum(), y)
    torch.testing.assert_close(grad, -layer(y), rtol=1e-12, atol=1e-12)
    assert layer_potential(SymmetricLayer(3), y) is None  # instance norm: no potential

    def drift(scheme: str, steps: int) -> float:
        unit = create_unit("hamiltonian", 4, steps=steps, h=2.0 / steps, scheme=scheme, norm="none", act="tanh")
        for j in range(steps):
            for layer_j, first in zip(unit.step_layers(j), unit.step_layers(0)):
                layer_j.load_state_dict(first.state_dict())
        e = unit_dynamics(unit, torch.randn(2, 4, 5, 5, generator=torch.Generator().manual_seed(0)))[0]["energies"]
        return max(abs(v - e[0]) for v in e) / abs(e[0])

    coarse, fine = drift("stormer_verlet", 10), drift("stormer_verlet", 100)
    assert fine < coarse / 20 and fine < 1e-3
    assert drift("forward_euler", 100) > 10 * fine


def test_learnable_final_time(f64, tmp_path):
    """Ruseckas' T as a parameter (Eq. 16): the increments scale with T/(L h), autograd's dℒ/dT equals a central
    difference, T keeps its lr factor and bound, and the model round-trips through an artifact."""
    from pdenets.artifacts import save_artifact

    torch.manual_seed(6)
    m = pdenets.create_model("ruseckas_circles_r3", learn_time=True, time_lr_scale=0.1)
    m.weight.data.normal_(0, 0.05)
    x = torch.randn(8, 2)
    loss = lambda: m(x).logsumexp(1).sum()  # noqa: E731
    loss().backward()
    eps, t0 = 1e-2, m.final_time.item()
    with torch.no_grad():
        m.final_time.fill_(t0 + eps)
        up = loss().item()
        m.final_time.fill_(t0 - eps)
        down = loss().item()
        m.final_time.fill_(t0)
    assert m.final_time.grad.item() == pytest.approx((up - down) / (2 * eps), rel=1e-4)
    assert m.param_lr_scales() == {"final_time": 0.1} and m.time_step().item() == pytest.approx(1.0)
    with torch.no_grad():
        m.final_time.fill_(-1.0)
    m.constrain_()
    assert m.final_time.item() == pytest.approx(1e-3 * 20)
    save_artifact(m, tmp_path / "t")
    back = pdenets.load(tmp_path / "t")
    torch.testing.assert_close(back.double()(x), m.eval()(x))


def test_rh_tv_is_the_quadrature_of_eq11(f64):
    """rh-tv = α₁ h Σ [φ_ε(Δθ/h) − √ε]: zero for θ constant in time, and for θ linear in t the same value after a
    2× refinement (h/2, twice the differences of half the size; the held last step adds φ_ε(0) − √ε = 0) — the
    discretised ∫ φ_ε(∂ₜθ) dt does not depend on h, where the paper's δ_t = 1 sum Σ φ_ε(Δθ) would."""
    from pdenets.dynamics import refine_in_time
    from pdenets.regularizers import TV_EPS, tv_in_time

    torch.manual_seed(7)
    unit = create_unit("parabolic", 3, steps=4, h=0.5, norm="none")
    slope = [torch.randn_like(p) for p in unit.step_layers(0)[0].parameters()]
    for j in range(4):
        for p, p0, d in zip(unit.step_layers(j)[0].parameters(), unit.step_layers(0)[0].parameters(), slope):
            p.data = p0.data + 0.3 * j * d
    value = tv_in_time(unit).item()
    ref = sum(3 * 0.5 * float((torch.sqrt((0.3 * d / 0.5) ** 2 + TV_EPS) - TV_EPS**0.5).sum()) for d in slope)
    assert value == pytest.approx(ref, rel=1e-12)
    assert tv_in_time(refine_in_time(unit)).item() == pytest.approx(value, rel=1e-12)
    const = create_unit("parabolic", 3, steps=4, h=0.5, norm="none")
    for j in range(1, 4):
        const.step_layers(j)[0].load_state_dict(const.step_layers(0)[0].state_dict())
    assert tv_in_time(const).item() == 0.0
