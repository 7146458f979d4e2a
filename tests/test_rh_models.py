"""Ruthotto-Haber networks (timm registration, parameter counts) and their regularisers, float64."""

import math

import pytest
import timm
import torch

import pdenets  # noqa: F401  (registers the models)
from pdenets.cli import main
from pdenets.hooks import create_hook, list_hooks

WIDTHS = (16, 64, 128, 256)


def _expected_params(dynamics, widths=WIDTHS, steps=3, classes=10, in_chans=3):
    """Hand count: stem conv + BN; per step K (9 c²) + instance-norm γ, β (2c); connectors; classifier."""
    n = 9 * in_chans * widths[0] + 2 * widths[0]
    for w in widths:
        per_step = 9 * w * w + 2 * w if dynamics != "hamiltonian" else 2 * (9 * (w // 2) ** 2 + 2 * (w // 2))
        n += steps * per_step
    for a, b in zip(widths[:-1], widths[1:]):
        n += a * b + 2 * b
    return n + widths[-1] * classes + classes


DOCUMENTED = {"rh_parabolic_stl10": 2_378_042, "rh_hamiltonian_stl10": 1_213_370, "rh_second_order_stl10": 2_378_042}


@pytest.mark.parametrize("name", list(DOCUMENTED))
def test_stl10_parameter_counts(name):
    with torch.device("meta"):
        model = timm.create_model(name, num_classes=10)
    count = sum(p.numel() for p in model.parameters())
    dyn = name[3:-6]
    assert count == _expected_params(dyn) == DOCUMENTED[name]


def test_models_cli_prints_counts(capsys):
    assert main(["models", "rh_*_stl10", "--num-classes", "10", "--no-macs"]) == 0
    out = capsys.readouterr().out
    for name, n in DOCUMENTED.items():
        assert name in out and f"{n:,}" in out


@pytest.mark.parametrize("dyn", ["parabolic", "hamiltonian", "second_order"])
def test_small_models_forward_backward(dyn):
    model = timm.create_model(f"rh_{dyn}_small", num_classes=10, in_chans=1)
    x = torch.randn(4, 1, 16, 16)
    out = model(x)
    assert out.shape == (4, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_model_options():
    m = timm.create_model("rh_hamiltonian_small", depth=2, steps=(1, 2, 3), width=0.5, reversible=True,
                          num_classes=3)
    assert m.widths == (8, 16, 32) and [u.steps for u in m.units()] == [1, 1, 2, 2, 3, 3]
    assert all(u.reversible for u in m.units())
    with pytest.raises(ValueError, match="not reversible"):
        timm.create_model("rh_parabolic_small", reversible=True)


def test_initialisation():
    torch.manual_seed(0)
    m = timm.create_model("rh_parabolic_stl10")
    w = m.stages[3].unit0.layers[0].weight.detach()  # 256×256×3×3, Glorot normal: std sqrt(2/(fan_in+fan_out))
    assert abs(float(w.std()) / math.sqrt(2 / (2 * 256 * 9)) - 1) < 0.02
    fw = m.fc.weight.detach()
    assert float(fw.abs().max()) <= 0.2 and abs(float(fw.std()) - 0.088) < 0.01


def test_tv_hook_against_hand_formula(f64):
    assert {"rh-tv", "box"} <= set(list_hooks())
    torch.manual_seed(1)
    m = timm.create_model("rh_hamiltonian_small", widths=(4, 6), steps=3, num_classes=2)
    hook = create_hook("rh-tv:0.25")
    eps = 1e-3
    ref = 0.0
    for unit in (m.stages[0].unit0, m.stages[1].unit0):
        for seq in (unit.layers_y, unit.layers_z):
            for a, b in zip(seq[:-1], seq[1:]):
                for pa, pb in zip(a.parameters(), b.parameters()):
                    d = (pb - pa).detach().reshape(-1).tolist()
                    ref += sum(math.sqrt(v * v + eps) - math.sqrt(eps) for v in d)  # zero at zero, h = 1
    val = hook.penalty(m)
    assert abs(float(val.detach()) - 0.25 * ref) <= 1e-12 * ref
    val.backward()  # differentiable
    assert m.stages[0].unit0.layers_y[1].weight.grad is not None
    assert abs(float(create_hook("rh-tv").penalty(m).detach()) - 3e-4 * ref) <= 1e-12 * ref


def test_box_hook_projects_k_only(f64):
    m = timm.create_model("rh_second_order_small", widths=(4, 6), num_classes=2)
    for p in m.parameters():
        p.data.normal_(0, 3)
    fc_before = m.fc.weight.clone()
    w_before = m.stages[0].unit0.layers[1].weight.clone()
    with torch.no_grad():
        create_hook("box").after_step(m, lr=0.1)
    w = m.stages[0].unit0.layers[1].weight.detach()
    assert float(w.abs().max()) == 1.0 and torch.equal(w, w_before.clamp(-1, 1))
    assert torch.equal(m.fc.weight, fc_before)
    with torch.no_grad():
        create_hook("box:0.5").after_step(m, lr=0.1)
    assert float(w.abs().max()) == 0.5
