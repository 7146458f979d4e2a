"""Group analysis matches DESIGN.md §3; random group elements keep the function exactly (float64); the power
check finds elements of the next larger group that do not."""

import pytest
import timm
import torch

import pdenets  # noqa: F401  (registers the models)
from _helpers import randomize_bn
from pdenets.models.qlnet import VARIANTS, QLNet
from pdenets.symmetry.analyze import analyze
from pdenets.symmetry.groups import contains, group_dim, power_element, sample
from pdenets.symmetry.verify import verify

PM, SP, O, GL, MONO = "positive_monomial", "signed_permutation", "O", "GL", "monomial"

# DESIGN.md §3, written out by hand for the registered variants (softball@ds): stage 1 is bounded by the stem
# ReLU; eq3p reads the stream through 1×1 maps only (O with radial activations); blocks that read the raw
# stream (eqs 3-7) force monomial ∩ O = signed permutations on the segments they read; Eq. (4)'s product and
# Eq. (5)'s fixed sum also on the segments they write. In the 18-layout the last stage is read only by fc.
pytestmark = pytest.mark.usefixtures("one_thread")


EXPECTED = {
    ("18", "eq3p"): [PM, O, O, O],
    ("18", "eq3"): [PM, SP, SP, O],
    ("18", "eq3_nows"): [PM, SP, SP, O],
    ("18", "eq3_nows_x6"): [PM, SP, SP, O],
    ("18", "eq4"): [PM, SP, SP, SP],
    ("18", "eq5"): [PM, SP, SP, SP],
    ("18", "eq6"): [PM, SP, SP, O],
    ("18", "eq7_nows_x6"): [PM, SP, SP, O],
    ("26", "eq3"): [PM, SP, SP, SP],
    ("26", "eq3p"): [PM, O, O, O],
    ("50", "eq3p"): [PM, O, O, O],
}


@pytest.mark.parametrize("depth,variant", list(EXPECTED))
def test_analyze_registered_variants(depth, variant):
    assert variant in VARIANTS
    for small in (False, True):
        with torch.device("meta"):
            model = timm.create_model(f"qlnet{depth}_{variant}" + ("_small" if small else ""), num_classes=10)
        a = analyze(model)
        assert [s.group for s in a.segments] == EXPECTED[(depth, variant)]
        widths = (32, 64, 128, 256) if small else (64, 128, 256, 512)
        assert [s.width for s in a.segments] == list(widths)
        assert a.total_dim == sum(group_dim(s.group, s.width) for s in a.segments)
        assert a.segments[1].dim == (widths[1] * (widths[1] - 1) // 2 if variant == "eq3p" else 0)


@pytest.mark.parametrize("act,expected", [
    ("none", [PM, GL, GL]), ("hardtanh", [PM, SP, SP]), ("relu", [PM, PM, PM]),
    ("hardball@all", ["permutation", O, O]),
])
def test_analyze_activations(act, expected):
    with torch.device("meta"):
        m = QLNet(block="eq3p", layers=(2, 1, 1), widths=(6, 12, 24), num_classes=5, stem="small", act=act)
    assert [s.group for s in analyze(m).segments] == expected
    with torch.device("meta"):
        m = QLNet(block="eq3", layers=(2, 2, 2), widths=(6, 12, 24), num_classes=5, stem="small", act="none")
    assert [s.group for s in analyze(m).segments] == [PM, MONO, MONO]


def test_group_sampling():
    g = torch.Generator().manual_seed(0)
    for name in ("GL", "O", "monomial", "signed_permutation", "positive_monomial", "permutation"):
        t = sample(name, 7, g)
        assert contains(name, t)
        h, larger = power_element(name, t, g)
        if h is not None:
            assert not contains(name, h) and contains(larger, h)
            assert torch.isclose(torch.linalg.norm(h), torch.linalg.norm(t))
    q = sample("O", 7, g)
    assert torch.allclose(q.T @ q, torch.eye(7, dtype=q.dtype), atol=1e-13)


CASES = [("eq3", "softball", {}), ("eq3", "none", {"weight_sharing": False}), ("eq3p", "softball", {}),
         ("eq3p", "none", {}), ("eq3p", "hardball@all", {}), ("eq4", "softball", {}), ("eq5", "none", {}),
         ("eq5", "hardtanh@all", {}), ("eq6", "softball", {"padding_mode": "circular"}),
         ("eq7", "softball", {"weight_sharing": False, "multiplier": 6}), ("eq7", "relu", {})]


@pytest.mark.parametrize("eq,act,kw", CASES)
def test_random_elements_exact_and_power_check(eq, act, kw, f64):
    torch.manual_seed(0)
    model = randomize_bn(QLNet(block=eq, layers=(2, 1, 1), widths=(6, 12, 24), num_classes=5, stem="small",
                               act=act, **kw)).eval()
    x = torch.randn(2, 3, 8, 8)
    res = verify(model, None, x, generator=torch.Generator().manual_seed(1))
    assert res.err64 <= 1e-12 and res.err32 <= 1e-5 and res.pred_agreement == 1.0
    assert len(res.rows) == 3
    for row in res.rows:
        assert row.err64 <= 1e-12 and row.err64_scaled <= 1e-12, row
        assert row.power_err >= 1e-3, row


def test_explicit_element_and_strictness(f64):
    from pdenets.symmetry import fold_bn, random_element, transform
    from pdenets.symmetry.transform import GroupElement

    torch.manual_seed(0)
    model = randomize_bn(QLNet(block="eq3", layers=(1, 1, 1), widths=(4, 8, 16), num_classes=3, stem="small")).eval()
    folded = fold_bn(model)
    a = analyze(folded)
    el = random_element(a, torch.Generator().manual_seed(2))
    x = torch.randn(2, 3, 8, 8)
    res = verify(model, el, x, per_segment=False)
    assert res.err64 <= 1e-12 and res.rows == []
    q = sample("O", 8, torch.Generator().manual_seed(3))  # not monomial: Eq. (3)'s raw depthwise cannot follow
    with pytest.raises(ValueError, match="monomial"):
        transform(folded, GroupElement([None, q, None]))
    naive = transform(folded, GroupElement([None, q, None]), strict=False)
    with torch.no_grad():
        assert (naive(x) - folded(x)).abs().max() / folded(x).abs().max() > 1e-3
