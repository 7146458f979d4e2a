"""fold_bn: the folded eval model computes the same function (float64, randomised BN statistics)."""

import pytest
import timm
import torch
import torch.nn as nn

from _helpers import randomize_bn
from pdenets.models.qlnet import QLNet
from pdenets.symmetry import fold_bn
from pdenets.symmetry.fold import ChannelBias, FoldedDepthwise

pytestmark = pytest.mark.usefixtures("one_thread")


EQS = [("eq3", {}), ("eq3", {"weight_sharing": False}), ("eq3p", {}), ("eq4", {}), ("eq5", {}), ("eq6", {}),
       ("eq7", {"weight_sharing": False, "multiplier": 6}), ("eq7", {})]


@pytest.mark.parametrize("eq,kw,stem", [(e, k, "small") for e, k in EQS] + [("eq4", {}, "imagenet")])
@pytest.mark.parametrize("share", [False, True])
def test_fold_bn_ql(eq, kw, stem, share, f64):
    torch.manual_seed(0)
    model = randomize_bn(QLNet(block=eq, layers=(2, 1, 1), widths=(6, 12, 24), num_classes=5, stem=stem,
                               act="softball", padding_mode="reflect" if eq == "eq6" else "zeros", **kw)).eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        y = model(x)
        folded = fold_bn(model, share_kernels=share)
        yf = folded(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, FoldedDepthwise) for m in folded.modules())
    assert (eq == "eq4") == any(isinstance(m, ChannelBias) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    rel = (yf - y).abs().max() / y.abs().max()
    assert rel <= 1e-12, rel


@pytest.mark.parametrize("name", ["resnet10t", "resnet18"])
def test_fold_bn_timm_resnet(name, f64):
    torch.manual_seed(0)
    model = randomize_bn(timm.create_model(name, num_classes=7)).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        y, yf = model(x), fold_bn(model)(x)
    assert (yf - y).abs().max() / y.abs().max() <= 1e-12
