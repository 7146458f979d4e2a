"""Fused core of the quasi-linear blocks: derivative conv, BatchNorm and coefficient product in one op.

The blocks of Liu-Shao-Bai (Eqs. (3)-(7), :mod:`pdenets.layers.ql_blocks`) spend their memory on
m-times-wider intermediates: in Eq. (3), ``BN(D u) ⊙ (C u)`` keeps D u (for BatchNorm's backward),
BN(D u) and C u (for the product's backward) and the product itself (for A's backward), four tensors of
m·n channels. This module computes

    z = BN(D x_d) ⊙ (C x_c)      (Eqs. (3), (3p), (5); ``x_c = x_d = u`` for Eq. (3))
    z = BN(D x_d)                (Eqs. (4), (6), (7): no coefficient product inside the op)

as one :class:`torch.autograd.Function` that saves only its (n-channel) inputs, the small weights and the
per-channel batch statistics, and recomputes D x_d and C x_c in the backward pass (the paper's §5.1 asks
for exactly this "variable-coefficient convolution"). Only the output z (kept by the following 1×1 conv
A anyway) stays alive, so the block keeps one m·n-channel tensor instead of four.

BatchNorm:

* eval mode (or ``track_running_stats`` with fixed statistics) is an affine map a·v + b per channel and
  is folded into the depthwise conv: D' = a·D with bias b, so the forward pass is two convolutions and one
  product;
* training mode needs the batch statistics of D x_d, so D x_d is computed, normalised with its own
  mean/variance (exactly like :class:`torch.nn.BatchNorm2d`), and the running statistics are updated
  outside the autograd function (also under ``torch.compile``).

Autocast: the op computes in the autocast dtype (bf16/fp16) when autocast is enabled for the input's
device, exactly where the reference path would (convolutions in low precision, BatchNorm statistics in
the input dtype), and returns gradients in the dtypes of the inputs.

Everything here is plain PyTorch and runs on any device; a dedicated GPU kernel is not needed.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from pdenets.layers.derivative import DerivativeConv

_conv_backward = torch.ops.aten.convolution_backward

#: Run the op in channels_last even for contiguous (NCHW) inputs: the output z is then channels_last and
#: so is the following 1×1 conv. On CPUs the depthwise conv is several times faster in channels_last, but
#: some backward kernels (BatchNorm) are slower; off by default, measured by benchmarks/bench_block.py.
CHANNELS_LAST_INSIDE = False


def _affine(
    weight: torch.Tensor | None, bias: torch.Tensor | None, mean: torch.Tensor, invstd: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm as y = a·v + b per channel: a = γ/σ, b = β − μ·a."""
    a = invstd if weight is None else weight * invstd
    b = -mean * a if bias is None else bias - mean * a
    return a, b


class _FusedDerivativeBN(torch.autograd.Function):
    """z = BN(conv(x_d, W, groups)) [⊙ conv1x1(x_c, W_c)] with recomputation; see the module docstring.

    Inputs: x_d (already padded when the padding mode is not 'zeros'), the full depthwise weight W
    ((m·n)×1×k×k, shared kernels already expanded), x_c and W_c (or None), BN γ, β (or None), the
    statistics to use (mean, invstd: running ones in eval mode, None in training mode), and static
    arguments. Outputs z and, in training mode, the batch mean and biased variance (not differentiable)
    so the caller can update the running statistics.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        xd: torch.Tensor,
        wd: torch.Tensor,
        xc: torch.Tensor | None,
        wc: torch.Tensor | None,
        gamma: torch.Tensor | None,
        beta: torch.Tensor | None,
        mean: torch.Tensor | None,
        invstd: torch.Tensor | None,
        stride: int,
        padding: int,
        groups: int,
        eps: float,
    ):
        train = mean is None
        if train:
            dx = F.conv2d(xd, wd, None, stride, padding, 1, groups)
            # Batch statistics with PyTorch's own BN kernel (biased variance, same reduction order).
            y, mean, invstd = torch.native_batch_norm(dx, gamma, beta, None, None, True, 0.0, eps)
            del dx
            var = invstd.pow(-2) - eps
        else:
            # Eval-mode BN folded into the depthwise conv: a·(W * x) + b = (a·W) * x + b.
            a, b = _affine(gamma, beta, mean, invstd)
            a, b = a.to(wd.dtype), b.to(wd.dtype)
            y = F.conv2d(xd, wd * a.view(-1, 1, 1, 1), b, stride, padding, 1, groups)
            var = None
        if xc is not None:
            y = y.mul_(F.conv2d(xc, wc, None, stride))
        ctx.save_for_backward(xd, wd, xc, wc, gamma, beta, mean, invstd)
        ctx.conf = (stride, padding, groups, eps, train)
        if train:
            ctx.mark_non_differentiable(mean, var)
            return y, mean, var
        return y, None, None

    @staticmethod
    def backward(ctx, gz: torch.Tensor, _gmean=None, _gvar=None):  # type: ignore[override]
        xd, wd, xc, wc, gamma, beta, mean, invstd = ctx.saved_tensors
        stride, padding, groups, eps, train = ctx.conf
        need = ctx.needs_input_grad
        gz = gz.to(xd.dtype)
        # Recompute the m·n-channel intermediates from the saved n-channel inputs.
        dx = F.conv2d(xd, wd, None, stride, padding, 1, groups)
        gxc = gwc = None
        if xc is not None:
            cx = F.conv2d(xc, wc, None, stride)
            if need[2] or need[3]:
                a, b = _affine(gamma, beta, mean, invstd)
                # ∂z/∂(C x_c) = BN(D x_d) = a·Dx + b
                gcx = torch.addcmul(b.to(dx.dtype).view(1, -1, 1, 1), dx, a.to(dx.dtype).view(1, -1, 1, 1)).mul_(gz)
                gxc, gwc, _ = _conv_backward(
                    gcx, xc, wc, None, [stride, stride], [0, 0], [1, 1], False, [0, 0], 1,
                    [need[2], need[3], False],
                )
                del gcx
            gy = cx.mul_(gz)
            del cx
        else:
            gy = gz
        w = gamma if gamma is not None else torch.ones_like(mean)
        # native_batch_norm_backward: train=True uses save_mean/save_invstd (batch statistics); train=False
        # reads the "running" statistics, for which we pass mean and var = invstd^-2 - eps.
        if train:
            gdx, ggamma, gbeta = torch.ops.aten.native_batch_norm_backward(
                gy, dx, w, None, None, mean, invstd, True, eps, [True, need[4], need[5]]
            )
        else:
            a = (w * invstd).to(gy.dtype)
            gdx = gy * a.view(1, -1, 1, 1)
            red = [0, 2, 3]
            gbeta = gy.sum(red, dtype=mean.dtype) if (need[4] or need[5]) else None
            ggamma = ((gy * dx).sum(red, dtype=mean.dtype) - mean * gbeta) * invstd if need[4] else None
        del gy, dx
        gxd, gwd, _ = _conv_backward(
            gdx, xd, wd, None, [stride, stride], [padding, padding], [1, 1], False, [0, 0], groups,
            [need[0], need[1], False],
        )
        ggamma = None if gamma is None or ggamma is None else ggamma.to(gamma.dtype)
        gbeta = None if beta is None or gbeta is None else gbeta.to(beta.dtype)
        return gxd, gwd, gxc, gwc, ggamma, gbeta, None, None, None, None, None, None


def _autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    dev = x.device.type
    if dev in ("cpu", "cuda", "xpu", "mps") and torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return None


def fused_derivative_bn(
    xd: torch.Tensor,
    conv_d: DerivativeConv,
    bn: nn.BatchNorm2d,
    xc: torch.Tensor | None = None,
    conv_c: nn.Conv2d | None = None,
) -> torch.Tensor:
    """``BN(conv_d(x_d)) * conv_c(x_c)`` (or ``BN(conv_d(x_d))`` without ``conv_c``) in one fused op.

    Numerically the same function as the modules applied one after the other, including BatchNorm's
    training/eval behaviour and its running-statistics update; only the memory kept for the backward pass
    and the order of a few floating-point operations differ.
    """
    if (xc is None) != (conv_c is None):
        raise ValueError("pass both xc and conv_c, or neither")
    if not (isinstance(conv_d, DerivativeConv) and isinstance(bn, nn.BatchNorm2d)):
        # Already folded (pdenets.symmetry.fold.fold_bn) or otherwise replaced: the plain composition.
        y = bn(conv_d(xd))
        return y if conv_c is None else y * conv_c(xc)
    wd = conv_d.full_weight()
    groups = conv_d.channels
    pad = conv_d.weight.shape[-1] // 2
    if conv_d.padding_mode != "zeros" and pad:
        xd = F.pad(xd, (pad, pad, pad, pad), mode=conv_d.padding_mode)
        pad = 0
    wc = conv_c.weight if conv_c is not None else None
    if CHANNELS_LAST_INSIDE and xd.dim() == 4:
        same = xc is xd
        xd = xd.contiguous(memory_format=torch.channels_last)
        if same:
            xc = xd
        elif xc is not None:
            xc = xc.contiguous(memory_format=torch.channels_last)
    if conv_c is not None and (conv_c.stride != (conv_d.stride, conv_d.stride) or conv_c.bias is not None):
        raise ValueError("conv_c must be a bias-free 1×1 conv with the stride of conv_d")
    gamma, beta = bn.weight, bn.bias
    use_batch_stats = bn.training or bn.running_mean is None
    dtype = _autocast_dtype(xd)
    if dtype is not None:
        # Mirror autocast on the reference path: convolutions (and so everything after them) in `dtype`.
        xd, wd = xd.to(dtype), wd.to(dtype)
        if xc is not None:
            xc, wc = xc.to(dtype), wc.to(dtype)
    with torch.autocast(xd.device.type, enabled=False) if dtype is not None else contextlib.nullcontext():
        if use_batch_stats:
            z, mean, var = _FusedDerivativeBN.apply(
                xd, wd, xc, wc, gamma, beta, None, None, conv_d.stride, pad, groups, bn.eps
            )
            if bn.training and bn.track_running_stats and bn.running_mean is not None:
                _update_running_stats(bn, mean, var, z.numel() // z.shape[1])
        else:
            invstd = torch.rsqrt(bn.running_var + bn.eps)
            z, _, _ = _FusedDerivativeBN.apply(
                xd, wd, xc, wc, gamma, beta, bn.running_mean, invstd, conv_d.stride, pad, groups, bn.eps
            )
    return z


@torch.no_grad()
def _update_running_stats(bn: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
    """The running-statistics update of :class:`torch.nn.BatchNorm2d` in training mode."""
    if bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
    if bn.momentum is None:
        factor = 1.0 / float(bn.num_batches_tracked)
    else:
        factor = bn.momentum
    unbiased = var * (count / max(count - 1, 1))
    bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), factor)
    bn.running_var.lerp_(unbiased.to(bn.running_var.dtype), factor)
