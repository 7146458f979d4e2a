"""The one regulariser module (pdenets.regularizers) and the hook registry below its providers (float64)."""

import math

import pytest
import torch
import torch.nn as nn

import pdenets
from pdenets import hooks
from pdenets.dynamics import HamiltonianUnit, ParabolicUnit
from pdenets.regularizers import (
    TV_EPS,
    differences,
    l2_variation,
    layer_sequences,
    model_layer_smoothness,
    smoothness,
    tv_variation,
)


def test_stacked_and_listed_sequences_agree(f64):
    torch.manual_seed(0)
    theta = torch.randn(5, 3, 2)
    listed = list(theta.unbind(0))
    d = theta[1:] - theta[:-1]
    assert torch.equal(differences(theta)[0], d) and len(differences(listed)) == 4
    assert math.isclose(l2_variation(theta).item(), 0.5 * float((d * d).sum()), rel_tol=1e-14)
    assert math.isclose(l2_variation(listed).item(), l2_variation(theta).item(), rel_tol=1e-14)
    tv = float(torch.sqrt(d * d + TV_EPS).sum())
    assert math.isclose(tv_variation(listed).item(), tv, rel_tol=1e-14)
    # zero-based TV: −√ε per entry, so equal layers cost exactly 0
    assert math.isclose(tv_variation(theta, zero_at_zero=True).item(), tv - d.numel() * TV_EPS**0.5, rel_tol=1e-12)
    const = theta[:1].expand_as(theta)
    assert tv_variation(const, zero_at_zero=True).item() == 0.0 and l2_variation(const).item() == 0.0


def test_smoothness_sums_sequences_and_checks_arguments(f64):
    a, b = torch.randn(3, 4), [torch.randn(2), torch.randn(2)]
    assert torch.allclose(smoothness([a, b], "l2"), l2_variation(a) + l2_variation(b))
    assert torch.allclose(smoothness([a, b], "tv", eps=0.1), tv_variation(a, 0.1) + tv_variation(b, 0.1))
    assert smoothness([], "tv").item() == 0.0 and smoothness([torch.randn(1, 3)]).item() == 0.0
    assert l2_variation([torch.randn(2)]) is None
    with pytest.raises(ValueError, match="kind"):
        smoothness([a], "l1")
    with pytest.raises(ValueError, match="eps"):
        tv_variation(a, eps=0.0)


@pytest.mark.parametrize("unit_cls, families", [(ParabolicUnit, 1), (HamiltonianUnit, 2)])
def test_ruthotto_haber_units_supply_theta_in_time(unit_cls, families, f64):
    unit = unit_cls(4, steps=3)
    for p in unit.parameters():
        p.data.normal_()
    seqs = unit.layer_parameters()
    per_layer = len(list(unit.step_layers(0)[0].parameters()))
    assert len(seqs) == families * per_layer and all(len(s) == 3 for s in seqs)
    assert seqs[0][2] is unit.step_layers(2)[0].weight  # K of step 2, the very parameter
    assert layer_sequences(nn.Sequential(unit, nn.ReLU())) == seqs
    # the Ruseckas Eq. (82) penalty applies to the RH units too: λ/2 Σ_j ‖θ_{j+1} − θ_j‖² over every parameter
    ref = sum(0.5 * float(((s[j + 1] - s[j]).detach() ** 2).sum()) for s in seqs for j in range(2))
    assert ref > 0 and math.isclose(model_layer_smoothness(unit, 0.3).item(), 0.3 * ref, rel_tol=1e-12)


def test_every_hook_is_registered_by_importing_pdenets():
    assert pdenets.hooks is hooks
    assert {"rh-tv", "box", "layer-smooth", "cross-layer", "cross-layer-tv", "nuclear-prox"} <= set(hooks.list_hooks())
    assert not hasattr(hooks, "HOOK_MODULES")  # the registry does not name its providers
