"""Each block against a direct einsum transcription of its equation (float64, BN in eval mode)."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from _helpers import randomize_bn
from pdenets.layers.ql_blocks import create_block


def bn(x: torch.Tensor, m: nn.BatchNorm2d) -> torch.Tensor:
    s = m.weight / torch.sqrt(m.running_var + m.eps)
    return (x - m.running_mean[:, None, None]) * s[:, None, None] + m.bias[:, None, None]


def deriv(u: torch.Tensor, kernels: torch.Tensor, stride: int) -> torch.Tensor:
    """∂_d u_j for every channel j and shared kernel d: shape (N, J, D, H', W')."""
    n, j, h, w = u.shape
    out = F.conv2d(u.reshape(n * j, 1, h, w), kernels, stride=stride, padding=1)
    return out.reshape(n, j, kernels.shape[0], *out.shape[-2:])


def w1x1(conv: nn.Conv2d) -> torch.Tensor:
    return conv.weight[:, :, 0, 0]


@pytest.mark.parametrize("stride,o", [(1, 6), (2, 12)])
def test_eq3(stride, o, f64):
    torch.manual_seed(0)
    n, m = 6, 4
    blk = create_block("eq3", n, o, stride, multiplier=m, zero_init_last=False)
    randomize_bn(blk, seed=3).eval()
    u = torch.randn(2, n, 8, 8)
    du = deriv(u, blk.conv_d.weight, stride)  # (N, j, d, H, W)
    du = bn(du.flatten(1, 2), blk.bn_d).unflatten(1, (n, m))
    us = u[:, :, ::stride, ::stride]
    C = w1x1(blk.conv_c).reshape(n, m, n)  # C[(j,d), k]
    coef = torch.einsum("jdk,nkhw->njdhw", C, us)
    A = w1x1(blk.conv_a).reshape(o, n, m)  # A[i, (j,d)]
    rhs = bn(torch.einsum("ijd,njdhw->nihw", A, coef * du), blk.bn_a)
    torch.testing.assert_close(blk.branch(u), rhs, rtol=0, atol=1e-11)


def test_eq3p_equals_eq3_on_premixed_input(f64):
    torch.manual_seed(0)
    blk = create_block("eq3p", 5, 5, 1, zero_init_last=False)
    randomize_bn(blk, seed=3).eval()
    u = torch.randn(2, 5, 6, 6)
    pu = torch.einsum("ij,njhw->nihw", w1x1(blk.conv_p), u)
    ref = blk.bn_a(blk.conv_a(blk.bn_d(blk.conv_d(pu)) * blk.conv_c(u)))
    expected = bn(torch.einsum("ik,nkhw->nihw", w1x1(blk.conv_a), bn(deriv(pu, blk.conv_d.weight, 1).flatten(1, 2),
                                                                      blk.bn_d) * blk.conv_c(u)), blk.bn_a)
    torch.testing.assert_close(ref, expected, rtol=0, atol=1e-11)
    torch.testing.assert_close(blk.branch(u), expected, rtol=0, atol=1e-11)


def test_eq4(f64):
    torch.manual_seed(1)
    n, o, m = 5, 5, 4
    blk = create_block("eq4", n, o, 1, multiplier=m, zero_init_last=False)
    randomize_bn(blk, seed=3).eval()
    u = torch.randn(2, n, 7, 7)
    du = bn(deriv(u, blk.conv_d.weight, 1).flatten(1, 2), blk.bn_d).unflatten(1, (n, m))
    a_du = torch.einsum("ijd,njdhw->nihw", w1x1(blk.conv_a).reshape(o, n, m), du)
    cu = torch.einsum("ik,nkhw->nihw", w1x1(blk.conv_c), u)
    torch.testing.assert_close(blk.branch(u), bn(cu * a_du, blk.bn_a), rtol=0, atol=1e-11)


@pytest.mark.parametrize("stride,o", [(1, 4), (2, 8)])
def test_eq5_each_channel_sees_own_derivatives(stride, o, f64):
    torch.manual_seed(2)
    n, m = 4, 4
    blk = create_block("eq5", n, o, stride, multiplier=m)
    randomize_bn(blk, seed=3).eval()
    u = torch.randn(2, n, 8, 8)
    du = bn(deriv(u, blk.conv_d.weight, stride).flatten(1, 2), blk.bn_d).unflatten(1, (n, m))
    coef = torch.einsum("jdk,nkhw->njdhw", w1x1(blk.conv_c).reshape(n, m, n), u[:, :, ::stride, ::stride])
    prod = coef * du  # (N, i, d, H, W): u_i's own derivatives
    g = n * m // o
    expected = prod.flatten(1, 2).unflatten(1, (o, g)).sum(2)
    torch.testing.assert_close(blk.branch(u), expected, rtol=0, atol=1e-11)
    if stride == 1:  # o = n: output i is Σ_d (Σ_k C_{(i,d)k} u_k) ∂_d u_i
        torch.testing.assert_close(blk.branch(u), prod.sum(2), rtol=0, atol=1e-11)


def test_eq6(f64):
    torch.manual_seed(3)
    n, o, m = 4, 8, 4
    blk = create_block("eq6", n, o, 2, multiplier=m, zero_init_last=False)
    randomize_bn(blk, seed=3).eval()
    u = torch.randn(2, n, 8, 8)
    w = u * torch.einsum("jk,nkhw->njhw", w1x1(blk.conv_c), u)
    dw = bn(deriv(w, blk.conv_d.weight, 2).flatten(1, 2), blk.bn_d).unflatten(1, (n, m))
    rhs = bn(torch.einsum("ijd,njdhw->nihw", w1x1(blk.conv_a).reshape(o, n, m), dw), blk.bn_a)
    torch.testing.assert_close(blk.branch(u), rhs, rtol=0, atol=1e-11)


@pytest.mark.parametrize("ws", [True, False])
def test_eq7(ws, f64):
    torch.manual_seed(4)
    n, o, m = 3, 3, 6
    blk = create_block("eq7", n, o, 1, multiplier=m, weight_sharing=ws, zero_init_last=False)
    randomize_bn(blk, seed=3).eval()
    u = torch.randn(2, n, 6, 6)
    C = w1x1(blk.conv_c).reshape(m, n, n)  # C^a_{jk}
    w = u[:, None] * torch.einsum("ajk,nkhw->najhw", C, u)  # (N, a, j, H, W)
    kern = blk.conv_d.weight
    outs = []
    for a in range(m):
        for j in range(n):
            k = kern[a] if ws else kern[a * n + j]
            outs.append(F.conv2d(w[:, a, j : j + 1], k[None], padding=1))
    dw = bn(torch.cat(outs, 1), blk.bn_d)
    rhs = bn(torch.einsum("ic,nchw->nihw", w1x1(blk.conv_a), dw), blk.bn_a)
    torch.testing.assert_close(blk.branch(u), rhs, rtol=0, atol=1e-11)
    assert blk.conv_d.weight.shape[0] == (m if ws else m * n)


def test_block_starts_as_identity():
    blk = create_block("eq3", 8, 8, 1).eval()
    u = torch.randn(1, 8, 5, 5)
    torch.testing.assert_close(blk(u), u)


def test_bad_block_arguments():
    with pytest.raises(ValueError, match="eq3"):
        create_block("eq9", 4, 4)
    with pytest.raises(ValueError, match="must divide"):
        create_block("eq5", 4, 8, 2, multiplier=3)
    with pytest.raises(ValueError, match="positive integer"):
        create_block("eq3", 4, 4, multiplier=0)
