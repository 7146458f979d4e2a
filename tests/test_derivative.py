import pytest
import torch
import torch.nn.functional as F

from pdenets.layers.derivative import DerivativeConv


def _loop_ref(layer: DerivativeConv, x: torch.Tensor) -> torch.Tensor:
    """Explicit per-channel loop: channel m*j + d is kernel d (shared) or kernel m*j + d applied to u_j."""
    n, m = layer.channels, layer.multiplier
    outs = []
    for j in range(n):
        for d in range(m):
            k = layer.weight[d] if layer.weight_sharing else layer.weight[m * j + d]
            xi = x[:, j : j + 1]
            if layer.padding_mode != "zeros":
                xi = F.pad(xi, (1, 1, 1, 1), mode=layer.padding_mode)
                outs.append(F.conv2d(xi, k[None], stride=layer.stride))
            else:
                outs.append(F.conv2d(xi, k[None], stride=layer.stride, padding=1))
    return torch.cat(outs, 1)


@pytest.mark.parametrize("ws", [True, False])
@pytest.mark.parametrize("m", [2, 4, 6])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
def test_derivative_matches_loop(ws, m, stride, padding_mode, f64):
    torch.manual_seed(0)
    layer = DerivativeConv(5, m, ws, stride=stride, padding_mode=padding_mode)
    x = torch.randn(2, 5, 7, 6)
    y = layer(x)
    assert y.shape == (2, 5 * m, (7 - 1) // stride + 1, (6 - 1) // stride + 1)
    torch.testing.assert_close(y, _loop_ref(layer, x), rtol=0, atol=1e-12)


def test_ws_stores_one_kernel():
    layer = DerivativeConv(64, 4, weight_sharing=True)
    params = list(layer.parameters())
    assert len(params) == 1 and params[0].shape == (4, 1, 3, 3)
    layer = DerivativeConv(64, 4, weight_sharing=False)
    assert layer.weight.shape == (256, 1, 3, 3)


def test_bad_padding_mode():
    with pytest.raises(ValueError, match="zeros"):
        DerivativeConv(4, 4, padding_mode="dirichlet")
