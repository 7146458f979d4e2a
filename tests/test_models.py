import pytest
import timm
import torch

import pdenets
from pdenets.models.qlnet import QLNet

QL_MODELS = [n for n in pdenets.list_models("qlnet*")]


def test_registry_lists_all_families():
    for depth in ("50", "26", "18"):
        for v in ("eq3", "eq3_nows", "eq3_nows_x6", "eq4", "eq5", "eq6", "eq7_nows_x6", "eq3p"):
            assert f"qlnet{depth}_{v}" in QL_MODELS
            assert f"qlnet{depth}_{v}_small" in QL_MODELS


@pytest.mark.parametrize("name", QL_MODELS)
def test_forward_backward(name):
    torch.manual_seed(0)
    m = pdenets.create_model(name, num_classes=7)
    size = 16 if name.endswith("_small") else 32
    x = torch.randn(2, 3, size, size)
    y = m(x)
    assert y.shape == (2, 7)
    y.square().mean().backward()
    for pname, p in m.named_parameters():
        assert p.grad is not None, f"{name}: {pname} received no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} has non-finite gradient"
    assert torch.isfinite(y).all()


def test_timm_interface():
    m = timm.create_model("qlnet26_eq3", num_classes=10)
    assert isinstance(m, QLNet)
    assert m.pretrained_cfg["architecture"] == "qlnet26_eq3"
    assert m.default_cfg["first_conv"] == "conv1"
    assert m.get_classifier().out_features == 10
    m.reset_classifier(5)
    m.eval()
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    feats = m.forward_features(torch.randn(1, 3, 32, 32))
    assert m.forward_head(feats, pre_logits=True).shape == (1, 512)
    m.set_grad_checkpointing(True)
    m.train()
    m(torch.randn(2, 3, 32, 32)).sum().backward()


def test_overrides():
    m = timm.create_model("qlnet18_eq3_small", num_classes=10, act="hardball", act_placement="all",
                          multiplier=6, weight_sharing=False, padding_mode="reflect")
    assert m.act_name == "hardball" and m.act_placement == "all"
    blk = m.layer1[0]
    assert blk.conv_d.weight.shape == (32 * 6, 1, 3, 3)
    assert blk.conv_d.padding_mode == "reflect"
    assert type(blk.act).__name__ == "HardBall"


def test_activation_placement_ds():
    m = timm.create_model("qlnet50_eq3", num_classes=10)
    acts = [n for n, mod in m.named_modules() if type(mod).__name__ == "SoftBall"]
    assert acts == ["layer2.0.act", "layer3.0.act", "layer4.0.act", "final_act"]
    assert m.final_act.radius == pytest.approx(512**0.5)
    assert isinstance(m.act1, torch.nn.ReLU)


def test_features_only():
    m = timm.create_model("qlnet26_eq3", features_only=True)
    outs = m(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [64, 128, 256, 512]
    assert [o.shape[-1] for o in outs] == [16, 8, 4, 2]
    assert m.feature_info.reduction() == [4, 8, 16, 32]


def test_torch_export():
    m = timm.create_model("qlnet26_eq3", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    ep = torch.export.export(m, (x,))
    torch.testing.assert_close(ep.module()(x), m(x))


def test_bad_inputs():
    m = timm.create_model("qlnet18_eq3_small", num_classes=10)
    with pytest.raises(ValueError, match="expected 3 input channels"):
        m(torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match="4-D"):
        m(torch.randn(3, 16, 16))
    with pytest.raises(ValueError, match="softball"):
        timm.create_model("qlnet18_eq3", act="swish")
    with pytest.raises(ValueError, match="eq3"):
        QLNet(block="eq8")
    with pytest.raises(ValueError, match="must divide"):
        timm.create_model("qlnet18_eq5", multiplier=3)
    with pytest.raises(RuntimeError, match="Unknown model"):
        pdenets.create_model("qlnet99_eq3")
