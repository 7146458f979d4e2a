"""Variable-coefficient QL blocks and the cross-layer regulariser (Liu-Shao-Bai §3, first and third bullets)."""

import pytest
import torch
import torch.nn as nn

from pdenets.hooks import create_hook, list_hooks
from pdenets.layers.derivative import PADDING_MODES, DerivativeConv
from pdenets.layers.ql_blocks import create_block
from pdenets.layers.varcoef import CoordinateCoefficients
from pdenets.models import create_model
from pdenets.regularizers import consecutive_weight_pairs


def test_coordinate_coefficients_values(f64):
    cc = CoordinateCoefficients(2, "quadratic")
    with torch.no_grad():
        cc.weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [0.5, 0.0, -1.0, 0.0, 0.0, 0.0]]))
    h, w = 5, 7
    x = torch.randn(3, 2, h, w)
    out = cc(x)
    for i in range(h):
        for j in range(w):
            xx, yy = -1 + 2 * j / (w - 1), -1 + 2 * i / (h - 1)  # pixel centres in [-1, 1], y down the rows
            a0 = 1 + 2 * xx + 3 * yy + 4 * xx * xx + 5 * xx * yy + 6 * yy * yy
            a1 = 0.5 - yy
            assert torch.allclose(out[:, 0, i, j], a0 * x[:, 0, i, j], atol=1e-12)
            assert torch.allclose(out[:, 1, i, j], a1 * x[:, 1, i, j], atol=1e-12)
    with pytest.raises(ValueError, match="var_coef"):
        CoordinateCoefficients(2, "cubic")


@pytest.mark.parametrize("equation", ["eq3", "eq3p", "eq4", "eq5", "eq6", "eq7"])
def test_var_coef_block_starts_as_constant_block(f64, equation):
    torch.manual_seed(0)
    ref = create_block(equation, 8, 8, 1).eval()
    blk = create_block(equation, 8, 8, 1, var_coef="affine").eval()
    assert isinstance(blk.conv_d, nn.Sequential) and isinstance(blk.conv_d[0], DerivativeConv)
    if hasattr(blk, "bn_a"):  # un-zero the last BN so the branch contributes
        nn.init.normal_(blk.bn_a.weight)
    sd = {k.replace("conv_d.0.", "conv_d."): v for k, v in blk.state_dict().items() if "conv_d.1." not in k}
    ref.load_state_dict(sd)
    x = torch.randn(2, 8, 6, 6)
    assert torch.allclose(blk(x), ref(x), atol=1e-12)  # a ≡ 1 at init
    # the coefficients then act: with a = x-coordinate the branch changes, and matches a manual product
    with torch.no_grad():
        blk.conv_d[1].weight.zero_()
        blk.conv_d[1].weight[:, 1] = 1.0
    z = torch.randn(2, blk.conv_d[0].channels, 6, 6)
    xs = torch.linspace(-1, 1, 6)
    assert torch.allclose(blk.conv_d(z), blk.conv_d[0](z) * xs.view(1, 1, 1, 6), atol=1e-12)
    assert not torch.allclose(blk(x), ref(x), atol=1e-6)


def test_var_coef_parameter_cost_and_kwargs():
    base = create_model("qlnet18_eq3_small", num_classes=10)
    aff = create_model("qlnet18_eq3_varcoef_small", num_classes=10)
    quad = create_model("qlnet18_eq3_varcoef_quad_small", num_classes=10)
    kn = 4 * (32 + 32 + 64 + 128)  # derivative channels m·n summed over the four blocks
    n0 = sum(p.numel() for p in base.parameters())
    assert sum(p.numel() for p in aff.parameters()) - n0 == 3 * kn
    assert sum(p.numel() for p in quad.parameters()) - n0 == 6 * kn
    m = create_model("qlnet26_eq4_small", var_coef="affine", num_classes=10)
    assert isinstance(m.layer3[1].conv_d[1], CoordinateCoefficients)


@pytest.mark.parametrize("mode", PADDING_MODES)
def test_stem_padding_mode(mode):
    m = create_model("qlnet18_eq3_small", num_classes=10, padding_mode=mode)
    assert m.conv1.padding_mode == mode and m.layer1[0].conv_d.padding_mode == mode
    assert m.eval()(torch.randn(1, 3, 8, 8)).shape == (1, 10)


def test_cross_layer_penalty_matches_manual_sum(f64):
    assert {"cross-layer", "cross-layer-tv"} <= set(list_hooks())
    model = create_model("qlnet26_eq3_small", num_classes=10)
    for p in model.parameters():
        p.data.normal_()
    names = ("conv_d.weight", "conv_c.weight", "conv_a.weight")
    expected_l2 = expected_tv = 0.0
    for stage in model.stages:
        b0, b1 = stage[0], stage[1]
        for n in names + (("downsample.0.weight",) if b0.downsample is not None and b1.downsample is not None else ()):
            w0, w1 = b0.get_parameter(n), b1.get_parameter(n)
            if w0.shape != w1.shape:
                continue
            d = (w1 - w0).detach()
            expected_l2 += 0.5 * float((d * d).sum())
            expected_tv += float((torch.sqrt(d * d + 1e-3) - 1e-3**0.5).sum())
    hook = create_hook("cross-layer:0.5")
    assert abs(hook.penalty(model).item() - 0.5 * expected_l2) < 1e-9 * expected_l2
    tv = create_hook("cross-layer-tv:2")
    assert abs(tv.penalty(model).item() - 2 * expected_tv) < 1e-9 * expected_tv
    # stage 1 pairs every weight; later stages only the shared m×1×3×3 kernels (shapes differ otherwise)
    pairs = consecutive_weight_pairs(model)
    assert len(pairs) == 3 + 3 * 1 and "pairs" in hook.describe(model)
    # identical consecutive blocks cost nothing, and the gradient pulls the pair together
    with torch.no_grad():
        for pr in pairs:
            pr.second.copy_(pr.first)
    assert hook.penalty(model).item() == 0.0
    with pytest.raises(ValueError, match="no consecutive blocks"):
        create_hook("cross-layer").penalty(nn.Conv2d(1, 1, 3))


def test_varcoef_and_cross_layer_train_on_digits(one_thread):
    """A few optimizer steps on scikit-learn's bundled digits with both options: the loss goes down."""
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    ds = load_digits()
    x = torch.tensor(ds.images, dtype=torch.float32)[:, None] / 16.0  # 8×8
    y = torch.tensor(ds.target)
    model = create_model("qlnet26_eq3_small", var_coef="affine", num_classes=10, in_chans=1, widths=(8, 16, 32, 32))
    hook = create_hook("cross-layer:1e-3")
    model = nn.Sequential(model)  # wrapped models work too (pairs are found anywhere)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    g = torch.Generator().manual_seed(0)
    for _ in range(16):
        idx = torch.randint(0, len(y), (64,), generator=g)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        pen = hook.penalty(model)
        opt.zero_grad()
        (loss + pen).backward()
        opt.step()
        losses.append(loss.item())
        assert torch.isfinite(pen)
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4, losses
    coef = model[0].layer1[0].conv_d[1].weight
    assert coef[:, 1:].abs().max() > 0  # the coordinate coefficients were trained
