"""Reversible (memory-flat) backprop of the Hamiltonian and leapfrog units, float64."""

import pytest
import torch

from pdenets.dynamics import create_unit
from pdenets.models.ruthotto import RHNet


def _grads(unit, x, w, reversible):
    unit.reversible = reversible
    unit.zero_grad()
    x = x.clone().requires_grad_()
    out = unit(x)
    (out * w).sum().backward()
    return out.detach(), [x.grad] + [p.grad.clone() for p in unit.parameters()]


@pytest.mark.parametrize("dyn", ["hamiltonian", "second_order"])
@pytest.mark.parametrize("norm", ["instance", "batch", "none"])
def test_reversible_gradients_equal_autograd(f64, dyn, norm):
    torch.manual_seed(0)
    unit = create_unit(dyn, 6, steps=5, h=1.0, norm=norm, act="relu")
    x, w = torch.randn(3, 6, 7, 7), torch.randn(3, 6, 7, 7)
    out_ref, g_ref = _grads(unit, x, w, reversible=False)
    out_rev, g_rev = _grads(unit, x, w, reversible=True)
    assert torch.equal(out_ref, out_rev)
    assert len(g_ref) == len(g_rev) == 1 + len(list(unit.parameters()))
    for a, b in zip(g_rev, g_ref):
        assert float((a - b).norm() / b.norm()) <= 1e-8


@pytest.mark.parametrize("dyn", ["hamiltonian", "second_order"])
def test_reconstruction_of_the_initial_state(f64, dyn):
    torch.manual_seed(1)
    unit = create_unit(dyn, 8, steps=12, h=1.0, norm="instance")
    x = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        final = unit.integrate(x)
        back = unit.reconstruct(final)
        assert float((final[-1] - x[:, -final[-1].shape[1]:]).abs().max()) > 1e-2  # the unit did move
    assert float((back - x).abs().max()) <= 1e-10


def test_reversible_keeps_no_per_step_activations(f64):
    """Saved-for-backward bytes of a reversible unit do not grow with the number of steps."""

    def saved_bytes(steps, reversible):
        torch.manual_seed(0)
        unit = create_unit("hamiltonian", 4, steps=steps, norm="instance", reversible=reversible)
        x = torch.randn(2, 4, 8, 8, requires_grad=True)
        total = 0

        def pack(t):
            nonlocal total
            if not isinstance(t, torch.nn.Parameter) and t.data_ptr() != x.data_ptr():
                total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            unit(x).sum()
        return total

    assert saved_bytes(16, True) == saved_bytes(2, True)
    assert saved_bytes(16, False) > 6 * saved_bytes(2, False)


def test_batchnorm_running_stats_updated_once(f64):
    torch.manual_seed(2)
    ref = RHNet("second_order", widths=(4, 6), steps=3, norm="batch", num_classes=3, in_chans=1)
    rev = RHNet("second_order", widths=(4, 6), steps=3, norm="batch", num_classes=3, in_chans=1, reversible=True)
    rev.load_state_dict(ref.state_dict())
    x = torch.randn(4, 1, 8, 8)
    for m in (ref, rev):
        m.train()
        for _ in range(2):
            m(x).square().sum().backward()
    sd_ref, sd_rev = ref.state_dict(), rev.state_dict()
    keys = [k for k in sd_ref if "running" in k or "num_batches" in k]
    assert any("stages.0.unit0.layers.2.norm.running_mean" in k for k in keys)
    for k in keys:
        assert torch.allclose(sd_ref[k], sd_rev[k], rtol=1e-12, atol=1e-14), k
    assert int(sd_rev["stages.0.unit0.layers.0.norm.num_batches_tracked"]) == 2


def test_reversible_network_gradients(f64):
    torch.manual_seed(3)
    kw = dict(widths=(4, 8), steps=(2, 3), num_classes=5, in_chans=2)
    a, b = RHNet("hamiltonian", **kw), RHNet("hamiltonian", reversible=True, **kw)
    b.load_state_dict(a.state_dict())
    x, y = torch.randn(3, 2, 8, 8), torch.tensor([0, 3, 4])
    for m in (a, b):
        torch.nn.functional.cross_entropy(m(x), y).backward()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert float((p.grad - q.grad).norm()) <= 1e-8 * float(p.grad.norm()) + 1e-300, n
