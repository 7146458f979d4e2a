"""Ruseckas ODE networks: the paper's parameter counts, the forward map of Eqs. (109)/(111)/(75) against
hand-written loops, zero initialisation, heads, and the smoothness penalty of Eq. (113)."""

import pytest
import timm
import torch
import torch.nn.functional as F

import pdenets
from pdenets.hooks import create_hook, list_hooks
from pdenets.models.ruseckas import OdeConvNet, OdeNet
from pdenets.regularizers import layer_smoothness, model_layer_smoothness
from pdenets.utils.stats import count_params


@pytest.mark.parametrize(
    "name, expected",
    [("ruseckas_circles_r2", 601), ("ruseckas_circles_r3", 240), ("ruseckas_conv_mnist", 18201)],
)
def test_paper_parameter_counts(name, expected):
    m = pdenets.create_model(name)
    assert count_params(m) == expected
    assert name in pdenets.list_models("ruseckas*")


def test_conv_count_formula_and_timm():
    m = timm.create_model("ruseckas_conv_mnist", pretrained=False, num_classes=10, in_chans=1)
    assert isinstance(m, OdeConvNet)
    assert count_params(m) == (3 * 3 * 10 * 10 + 10) * 20 + 1
    assert m.example_input_shape == (1, 1, 28, 28)
    m3 = pdenets.create_model("ruseckas_conv_mnist", in_chans=3, num_classes=7)
    assert m3(torch.randn(2, 3, 8, 8)).shape == (2, 7)
    with pytest.raises(ValueError, match="num_classes=11"):
        pdenets.create_model("ruseckas_conv_mnist", num_classes=11)
    with pytest.raises(ValueError, match="in_chans=12"):
        pdenets.create_model("ruseckas_conv_mnist", in_chans=12)
    with pytest.raises(ValueError, match="num_classes=3"):
        pdenets.create_model("ruseckas_circles_r3", num_classes=3)


def test_zero_init_and_heads(f64):
    """All W̃, b̃ start at 0 (§4.4); model 2 starts at P = 1/2, model 1's state is x − γ̃x³ iterated."""
    x = torch.randn(5, 2)
    m2 = pdenets.create_model("ruseckas_circles_r3")
    assert all((p == 0).all() for p in m2.parameters())
    assert torch.allclose(m2(x).softmax(1), torch.full((5, 2), 0.5))
    m1 = pdenets.create_model("ruseckas_circles_r2", gamma=0.01)
    ref = x.clone()
    for _ in range(100):
        ref = ref - 0.01 * ref**3
    assert torch.allclose(m1(x), ref, rtol=0, atol=1e-14)


def test_forward_matches_explicit_loops(f64):
    """Eq. (109), Eq. (111) and Eq. (75) written out by hand, with random parameters."""
    torch.manual_seed(0)
    # dense, Euler, mu = 2.5, augmented input, sigmoid head of x_3
    m = OdeNet(in_features=2, width=3, depth=6, gamma=0.3, learn_gamma=False, mu=2.5, head="sigmoid", head_index=2)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(4, 2)
    s = torch.cat([x, torch.zeros(4, 1)], 1)
    for l in range(6):
        w, b = m.weight[l], m.bias[l]
        phi = torch.sign(s) * s.abs() ** 2.5
        cols = [s[:, i] + sum(w[i, j] * s[:, j] for j in range(3)) + b[i] - 0.3 * phi[:, i] for i in range(3)]
        s = torch.stack(cols, 1)
    p0 = m(x).softmax(1)[:, 0]
    assert torch.allclose(p0, torch.sigmoid(s[:, 2]), atol=1e-14)
    # dense, two-step scheme
    m = OdeNet(in_features=3, depth=5, gamma=0.2, scheme="lm2")
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(4, 3)
    prev, cur = x, x
    for l in range(5):
        k = m.k[l - 1] if l > 0 else 0.0
        nxt = (1 - k) * cur + k * prev + cur @ m.weight[l].T + m.bias[l] - m.gamma * cur**3
        prev, cur = cur, nxt
    assert torch.allclose(m(x), cur, atol=1e-13)
    # conv, zero channel augmentation, 3x3 conv with bias, max pool
    m = OdeConvNet(in_chans=2, channels=4, depth=3, num_classes=3, gamma=0.1)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.2)
    x = torch.randn(2, 2, 6, 5)
    s = torch.cat([x, torch.zeros(2, 2, 6, 5)], 1)
    for l in range(3):
        s = s + F.conv2d(s, m.weight[l], m.bias[l], padding=1) - m.gamma * s**3
    assert torch.allclose(m(x), s.amax((2, 3))[:, :3], atol=1e-13)


def test_smoothness_penalty_and_hook(f64):
    torch.manual_seed(1)
    m = OdeNet(in_features=2, depth=4)
    with torch.no_grad():
        m.weight.normal_()
        m.bias.normal_()
    ref = 0.0
    for l in range(1, 4):
        ref += ((m.weight[l] - m.weight[l - 1]) ** 2).sum() + ((m.bias[l] - m.bias[l - 1]) ** 2).sum()
    ref = 0.35 / 2 * ref
    assert torch.allclose(layer_smoothness(m.weight, m.bias, 0.35), ref, atol=1e-14)
    assert "layer-smooth" in list_hooks()
    hook = create_hook("layer-smooth:0.35")
    assert torch.allclose(hook.penalty(m), ref, atol=1e-14)
    assert torch.allclose(model_layer_smoothness(torch.nn.Sequential(m), 0.35), ref, atol=1e-14)
    # constant-in-l parameters are not penalised
    with torch.no_grad():
        m.weight.copy_(m.weight[:1].expand_as(m.weight))
        m.bias.copy_(m.bias[:1].expand_as(m.bias))
    assert hook.penalty(m).item() == 0
    with pytest.raises(ValueError, match="layer_parameters"):
        hook.penalty(torch.nn.Linear(2, 2))
