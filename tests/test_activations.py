import math

import numpy as np
import pytest
import torch

from pdenets.layers.activations import HardBall, SoftBall, create_act, hardball, softball


def _np_ref(x: np.ndarray, r: float, kind: str) -> np.ndarray:
    """Per-pixel loop straight from the formulas of Liu-Shao-Bai §3."""
    out = np.empty_like(x)
    n, c, h, w = x.shape
    for b in range(n):
        for i in range(h):
            for j in range(w):
                v = x[b, :, i, j]
                norm = math.sqrt(float((v * v).sum()))
                if kind == "hard":
                    out[b, :, i, j] = v if norm < r else r * v / norm
                else:
                    out[b, :, i, j] = v / math.sqrt(1 + norm**2 / r**2)
    return out


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_radial_match_formula(kind, f64):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 3, 4)
    x[0] *= 0.3  # inside the ball
    x[1] *= 3.0  # outside
    r = math.sqrt(5)
    y = hardball(x, r) if kind == "hard" else softball(x, r)
    ref = _np_ref(x.numpy(), r, kind)
    np.testing.assert_allclose(y.numpy(), ref, rtol=0, atol=1e-13)
    # Both branches of hardball are exercised
    norms = x.norm(dim=1)
    assert (norms < r).any() and (norms > r).any()


@pytest.mark.parametrize("cls", [HardBall, SoftBall])
def test_radial_orthogonal_equivariance(cls, f64):
    torch.manual_seed(1)
    c = 16
    act = cls(c)
    assert act.radius == pytest.approx(4.0)
    x = torch.randn(3, c, 5, 5) * 3
    q, _ = torch.linalg.qr(torch.randn(c, c))
    qx = torch.einsum("ij,njhw->nihw", q, x)
    lhs = act(qx)
    rhs = torch.einsum("ij,njhw->nihw", q, act(x))
    assert (lhs - rhs).abs().max().item() <= 1e-12


def test_hardball_gradient_finite_at_zero():
    x = torch.zeros(1, 4, 2, 2, requires_grad=True)
    hardball(x, 2.0).sum().backward()
    assert torch.isfinite(x.grad).all()
    np.testing.assert_allclose(x.grad.numpy(), 1.0)


def test_hardtanh_and_unknown():
    act = create_act("hardtanh")
    x = torch.tensor([-3.0, -0.5, 0.5, 3.0])
    assert act(x).tolist() == [-1.0, -0.5, 0.5, 1.0]
    with pytest.raises(ValueError, match="expected one of"):
        create_act("swishball")
    with pytest.raises(ValueError, match="radius"):
        SoftBall(radius=-1.0)
