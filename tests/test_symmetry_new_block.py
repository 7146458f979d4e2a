"""A block defined only here, F(u) = BN(A[(P u) ⊙ (Q u)]) with 1×1 readers P, Q and a writer A, gets the whole
symmetry toolbox (analyze, fold_bn, transform, verify, compress, gauge fixing, nuclear-prox) from its own
declaration (``stream_touches``/``bn_folds``), without any change in src/ (float64)."""

import pytest
import torch
import torch.nn as nn

from _helpers import randomize_bn
from pdenets.layers.ql_blocks import QLBlock, conv1x1
from pdenets.layers.stream import BNFold, Channels, Touch
from pdenets.models.qlnet import QLNet
from pdenets.symmetry import analyze, fold_bn, random_element, transform, verify
from pdenets.symmetry.compress import compress_widths, gauge_fix, n_params, segment_writers
from pdenets.symmetry.groups import sample
from pdenets.symmetry.transform import GroupElement, load_params, transformed_params

pytestmark = pytest.mark.usefixtures("one_thread")


class BilinearBlock(QLBlock):
    """F(u) = BN(A[(P u) ⊙ (Q u)]): P, Q read the stream through 1×1 maps, so any T ∈ GL(n) acts exactly by
    P → P T⁻¹, Q → Q T⁻¹, A → T A."""

    equation = "bilinear"

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, **kwargs) -> None:
        super().__init__(in_chs, out_chs, stride, **kwargs)
        mid = 2 * in_chs
        self.conv_p = conv1x1(in_chs, mid, stride)
        self.conv_q = conv1x1(in_chs, mid, stride)
        self.conv_a = conv1x1(mid, out_chs)
        self.bn_a = nn.BatchNorm2d(out_chs)
        self.init_last_bn()

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn_a(self.conv_a(self.conv_p(x) * self.conv_q(x)))

    def stream_touches(self) -> tuple[Touch, ...]:
        return (Touch("conv_p", "read"), Touch("conv_q", "read"),
                Touch("conv_a", "write", bias="conv_a.bias", bn="bn_a"))

    def bn_folds(self) -> tuple[BNFold, ...]:
        return (BNFold("conv_a", "bn_a"),)


class RawProductBlock(BilinearBlock):
    """F(u) = BN(A[u ⊙ (Q u)]) (P replaced by the raw stream): the product reads u channel by channel, so only
    monomial T (T[σ(j), j] = λ_j) are exact: Q's rows follow σ and take 1/λ_j, A's columns follow σ (declared
    here, nothing in src/ knows the block)."""

    equation = "rawprod"

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn_a(self.conv_a(x[:, None].expand(-1, 2, -1, -1, -1).flatten(1, 2)[..., ::self.stride,
                                     ::self.stride] * self.conv_q(x)))

    def stream_touches(self) -> tuple[Touch, ...]:
        return (Touch("product", "read_channelwise", reason="u ⊙ Q u multiplies the raw stream",
                      channels=Channels("w", fan=2, layout="tiled", div_rows=("conv_q",), cols=("conv_a",))),
                Touch("conv_q", "read"), Touch("conv_a", "write", bias="conv_a.bias", bn="bn_a"))


def _model(block=BilinearBlock, act="softball", layers=(2, 1, 1)):
    torch.manual_seed(0)
    m = QLNet(block=block, layers=layers, widths=(6, 12, 24), num_classes=5, stem="small", act=act)
    return randomize_bn(m).eval()


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def test_analyze_new_block():
    assert [s.group for s in analyze(_model(act="none")).segments] == ["positive_monomial", "GL", "GL"]
    a = analyze(_model(act="softball"))
    assert [s.group for s in a.segments] == ["positive_monomial", "O", "O"]
    assert "bilinear read/write it via 1×1 maps" in a.segments[1].reason
    assert [s.width for s in a.segments] == [6, 12, 24]
    a = analyze(_model(RawProductBlock, act="none"))
    assert [s.group for s in a.segments] == ["positive_monomial", "monomial", "GL"]  # stage 3: read by fc only
    assert "rawprod: u ⊙ Q u multiplies the raw stream" in a.segments[1].reason


@pytest.mark.parametrize("act,group", [("none", "GL"), ("softball", "O")])
def test_transform_new_block_exact_and_power_check(act, group, f64):
    model = _model(act=act)
    folded = fold_bn(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(3, 3, 8, 8) * 4.0  # |x| well into softball's nonlinear range
    with torch.no_grad():
        y = model(x)
        assert _rel(folded(x), y) <= 1e-12
    a = analyze(folded)
    el = random_element(a, torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert _rel(transform(folded, el)(x), y) <= 1e-10
    # power check: a non-group element of the same norm (GL stretch on O, any perturbation on GL) must show
    g = torch.Generator().manual_seed(2)
    t = el.mats[1]
    if group == "O":
        s = torch.randn(12, 12, generator=g, dtype=torch.float64)
        h = t @ torch.linalg.matrix_exp(0.5 * (s + s.T) / 12 ** 0.5)
        h = h * (torch.linalg.norm(t) / torch.linalg.norm(h))
        with torch.no_grad():
            assert _rel(transform(folded, GroupElement([None, h, None]))(x), y) > 1e-3
    # and random weights moved by the same ‖Δθ‖ as the group element's (the only check left on GL)
    new = transformed_params(folded, a, el)
    base = dict(folded.named_parameters())
    norm = sum(float(((v.detach() - base[k].detach()) ** 2).sum()) for k, v in new.items()) ** 0.5
    rnd = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in new.items()}
    rn = sum(float((r ** 2).sum()) for r in rnd.values()) ** 0.5
    with torch.no_grad():
        assert _rel(load_params(folded, {k: base[k] + r * (norm / rn) for k, r in rnd.items()})(x), y) > 1e-3
        bad = transform(folded, el)  # forgetting one reader (Q → Q T⁻¹) is not a symmetry either
        bad.layer2[0].conv_q.weight.copy_(folded.layer2[0].conv_q.weight)
        assert _rel(bad(x), y) > 1e-3


@pytest.mark.parametrize("block,act", [(BilinearBlock, "softball"), (BilinearBlock, "none"),
                                       (RawProductBlock, "softball"), (RawProductBlock, "none")])
def test_verify_new_block(block, act, f64):
    res = verify(_model(block, act=act), None, torch.randn(2, 3, 8, 8), generator=torch.Generator().manual_seed(3))
    assert res.err64 <= 1e-12 and res.pred_agreement == 1.0 and len(res.rows) == 3
    for row in res.rows:
        assert row.err64 <= 1e-12 and row.err64_scaled <= 1e-12, row
        assert row.power_err >= 1e-3, row


def test_raw_product_needs_monomial(f64):
    folded = fold_bn(_model(RawProductBlock, act="none"))
    q = sample("O", 12, torch.Generator().manual_seed(4))
    with pytest.raises(ValueError, match="monomial"):
        transform(folded, GroupElement([None, q, None]))


def test_compress_and_gauge_new_block(f64):
    folded = fold_bn(_model(layers=(1, 1, 1)), share_kernels=True)
    a = analyze(folded)
    assert segment_writers(a, 1) == [("layer2.0.conv_a.weight", "layer2.0.conv_a.bias"),
                                     ("layer2.0.downsample.0.weight", "layer2.0.downsample.0.bias")]
    u, _ = torch.linalg.qr(torch.randn(12, 5, generator=torch.Generator().manual_seed(5)))
    p = dict(folded.named_parameters())
    with torch.no_grad():
        for w, b in segment_writers(a, 1):
            p[w].copy_(torch.einsum("ij,j...->i...", u @ u.T, p[w]))
            p[b].copy_(u @ u.T @ p[b])
    x = torch.randn(2, 3, 8, 8)
    small, rows = compress_widths(folded)
    assert [r.rank for r in rows][1] == 5 and n_params(small) < n_params(folded)
    with torch.no_grad():
        assert _rel(small(x), folded(x)) <= 1e-12
    fixed, grows = gauge_fix(folded)
    assert [g.matrix for g in grows] == ["fc"]  # the block declares no gauge-fixable reader
    with torch.no_grad():
        assert _rel(fixed(x), folded(x)) <= 1e-12


def test_nuclear_prox_new_block(f64):
    from pdenets.hooks import create_hook

    model = _model(layers=(1, 1, 1))
    hook = create_hook("nuclear-prox:10")
    hook.after_step(model, lr=0.1)
    assert hook.last_ranks and all(r <= 24 for r in hook.last_ranks)
