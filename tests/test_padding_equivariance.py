"""``padding_mode`` reaches every conv that pads, in every family (docs/design.md §14): with circular padding the
networks are exactly shift-equivariant before pooling (float32, against torch.roll as the reference)."""

from __future__ import annotations

import pytest
import torch

import pdenets

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", ["rh_parabolic_small", "rh_hamiltonian_small", "rh_second_order_small"])
def test_circular_rh_network_is_shift_equivariant(name):
    torch.manual_seed(0)
    m = pdenets.create_model(name, in_chans=1, padding_mode="circular").eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        # before pooling: the stem and the first unit commute with any roll
        first = lambda t: m.stages[0].unit0(m.stem(t))  # noqa: E731
        ref = first(x).roll((3, -5), (2, 3))
        assert float((first(x.roll((3, -5), (2, 3))) - ref).abs().max()) <= 1e-6 * float(ref.abs().max())
        # the whole network: a roll by a multiple of the total pooling (4 px) leaves the logits unchanged
        logits = m(x)
        assert float((m(x.roll((4, 8), (2, 3))) - logits).abs().max()) <= 1e-6 * max(1.0, float(logits.abs().max()))
    zeros = pdenets.create_model(name, in_chans=1).eval()
    with torch.no_grad():  # the power check: zero padding is not equivariant
        assert float((zeros(x.roll((4, 8), (2, 3))) - zeros(x)).abs().max()) > 1e-3
    assert m.stem.conv.padding_mode == "circular"


def test_circular_ruseckas_conv_and_ql_nets_are_shift_invariant():
    torch.manual_seed(1)
    r = pdenets.create_model("ruseckas_conv_mnist", padding_mode="circular").eval()
    with torch.no_grad():
        r.weight.normal_(0, 0.1)
        r.bias.normal_(0, 0.1)
        x = torch.rand(2, 1, 12, 12)
        torch.testing.assert_close(r(x.roll((5, 2), (2, 3))), r(x), rtol=1e-6, atol=1e-6)  # global max pool
    q = pdenets.create_model("qlnet18_eq3_small", in_chans=1, num_classes=10, padding_mode="circular").eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():  # three stride-2 stages: rolls by multiples of 8 px commute with the whole network
        torch.testing.assert_close(q(x.roll((8, 16), (2, 3))), q(x), rtol=1e-5, atol=1e-5)
