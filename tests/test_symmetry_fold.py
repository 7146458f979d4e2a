"""fold_bn: the folded eval model computes the same function (float64, randomised BN statistics)."""

import pytest
import timm
import torch
import torch.nn as nn

from pdenets.models.qlnet import QLNet
from pdenets.symmetry import fold_bn
from pdenets.symmetry.fold import ChannelBias, FoldedDepthwise


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one thread is faster than two (and immune to a loaded machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g, dtype=m.running_mean.dtype))
            m.running_var.copy_(torch.rand(c, generator=g, dtype=m.running_var.dtype) + 0.5)
            m.weight.data.copy_(torch.randn(c, generator=g, dtype=m.weight.dtype))
            m.bias.data.copy_(torch.randn(c, generator=g, dtype=m.bias.dtype))
    return model.eval()


EQS = [("eq3", {}), ("eq3", {"weight_sharing": False}), ("eq3p", {}), ("eq4", {}), ("eq5", {}), ("eq6", {}),
       ("eq7", {"weight_sharing": False, "multiplier": 6}), ("eq7", {})]


@pytest.mark.parametrize("eq,kw,stem", [(e, k, "small") for e, k in EQS] + [("eq4", {}, "imagenet")])
@pytest.mark.parametrize("share", [False, True])
def test_fold_bn_ql(eq, kw, stem, share, f64):
    torch.manual_seed(0)
    model = randomize_bn(QLNet(block=eq, layers=(2, 1, 1), widths=(6, 12, 24), num_classes=5, stem=stem,
                               act="softball", padding_mode="reflect" if eq == "eq6" else "zeros", **kw))
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
    model = randomize_bn(timm.create_model(name, num_classes=7))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        y, yf = model(x), fold_bn(model)(x)
    assert (yf - y).abs().max() / y.abs().max() <= 1e-12
