"""Eq. (112): the explicit backward recursion equals autograd's ∂𝓛/∂x⁽ˡ⁾ (float64, 1e-12), and the
parameter gradients of Eqs. (65), (66), (71) equal autograd's."""

import pytest
import torch
import torch.nn.functional as F

from pdenets.analysis.ode_checks import adjoint_states, parameter_gradients
from pdenets.models.ruseckas import OdeConvNet, OdeNet


def _randomise(m, scale):
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, scale)
        if m.k is not None:
            m.k.uniform_(-0.5, 0.5)
        m.gamma.fill_(0.05)
    return m


def _autograd_adjoints(m, x, y):
    states = m.forward_states(x.requires_grad_())
    for s in states:
        s.retain_grad()
    loss = F.cross_entropy(m.forward_head(states[-1]), y, reduction="sum")
    loss.backward()
    return states, [s.grad for s in states]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(width=3, depth=20, mu=3.0, scheme="euler", head="sigmoid"),  # model 2's shape
        dict(width=2, depth=100, mu=3.0, scheme="euler", head="softmax"),  # model 1's shape
        dict(width=4, depth=12, mu=2.5, scheme="euler", head="softmax"),  # Eq. (57)/(63)
        dict(width=3, depth=15, mu=3.0, scheme="lm2", head="softmax"),  # Eq. (111)
    ],
)
def test_eq112_equals_autograd(f64, kwargs):
    torch.manual_seed(0)
    m = _randomise(OdeNet(in_features=2, num_classes=2, **kwargs), 0.1)
    x = torch.randn(16, 2)
    y = torch.randint(0, 2, (16,))
    states, ref = _autograd_adjoints(m, x, y)
    states = [s.detach() for s in states]
    adj = adjoint_states(m, states, ref[-1])
    scale = max(r.abs().max().item() for r in ref)
    assert scale > 1e-3  # the gradients are not trivially zero
    for l, (a, r) in enumerate(zip(adj, ref)):
        assert (a - r).abs().max().item() <= 1e-12 * max(1.0, scale), f"layer {l}"
    # Eqs. (65), (66), (71) and dL/dk
    grads = parameter_gradients(m, states, adj)
    for name, p in m.named_parameters():
        assert torch.allclose(grads[name], p.grad, rtol=1e-11, atol=1e-12), name


def test_eq76_conv_adjoint_equals_autograd(f64):
    torch.manual_seed(1)
    m = _randomise(OdeConvNet(in_chans=1, channels=4, depth=6, num_classes=3), 0.1)
    x = torch.randn(3, 1, 7, 6)
    y = torch.randint(0, 3, (3,))
    states, ref = _autograd_adjoints(m, x, y)
    adj = adjoint_states(m, [s.detach() for s in states], ref[-1])
    for a, r in zip(adj, ref):
        assert (a - r).abs().max().item() <= 1e-12
    assert adj[0].abs().max() > 1e-3
