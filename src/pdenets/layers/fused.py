"""Fused core of the quasi-linear blocks: derivative conv, BatchNorm and coefficient product in one op.

The blocks of Liu-Shao-Bai (Eqs. (3)-(7), :mod:`pdenets.layers.ql_blocks`) spend their memory on
m-times-wider intermediates: in Eq. (3), ``BN(D u) ⊙ (C u)`` keeps D u (for BatchNorm's backward),
BN(D u) and C u (for the product's backward) and the product itself (for A's backward), four tensors of
m·n channels. This module computes

    z = BN(D x_d) ⊙ (C x_c)      (Eqs. (3), (3p), (5); ``x_c = x_d = u`` for Eq. (3))
    z = BN(D x_d)                (Eqs. (4), (6), (7): no coefficient product inside the op)

as one custom op, ``torch.ops.pdenets.derivative_bn`` (:func:`torch.library.custom_op`, with a fake kernel
and a registered autograd whose backward is the custom op ``pdenets::derivative_bn_backward``), that saves
only its (n-channel) inputs, the small weights and the per-channel batch statistics, and recomputes D x_d and
C x_c in the backward pass (the paper's §5.1 asks for exactly this "variable-coefficient convolution"). Only
the output z (kept by the following 1×1 conv A anyway) stays alive, so the block keeps one m·n-channel
tensor instead of four. Being a custom op it is opaque to ``torch.compile``: inductor plans around it from
the fake kernel's shapes and strides, keeps it whole, and fuses what surrounds it (docs/design.md §17).

How it is computed (all in channels_last, whatever the input's layout): x_d is repeated m times into
direction-major channels (d·n + j holds x_j), so the n → m·n depthwise conv with groups n becomes ONE
depthwise conv with multiplier 1 over m·n channels (kernels reordered the same way): oneDNN's multiplier-1
kernels are several times faster than its multiplier-m kernel, forward and backward, and one op replaces the
m per-direction ones (fewer parallel regions: on a loaded two-core machine each one risks a scheduler
stall). BatchNorm, the product and their gradients are single ops over the direction-major m·n channels.
C x_c is one GEMM whose output is ordered direction-major (channel d·n + j); the op returns z in that
order when asked (``direction_major=True``, used by the blocks, whose 1×1 conv A then reads it through
:func:`to_direction_major` of its weight) and otherwise reorders it to the modules' order j·m + d. At
inference on the CPU the product is oneDNN's binary post-op of the depthwise conv (one pass instead of
two). Measurements: ``benchmarks/README.md``.

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

Everything here is plain PyTorch and runs on any device. :func:`conv_bn` folds an eval-mode BatchNorm into
the conv before it (used for the stem and the stride-2 skips).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import register_flop_formula

from pdenets.layers.derivative import DerivativeConv
from pdenets.layers.tracing import is_symbolic_tracing, is_tracing

_conv_backward = torch.ops.aten.convolution_backward

#: The path a block's default ``fused=None`` takes in each mode, keyed by (training, compiling): ``True`` the
#: fused core (the custom op ``pdenets::derivative_bn``), ``False`` the modules one by one. Chosen by
#: measurement on the CPU, qlnet50_eq3 against resnet50 (benchmarks/README.md, docs/design.md §17).
AUTO_FUSED: dict[tuple[bool, bool], bool] = {
    (True, False): False,  # eager training: module path 5-13% faster (fused: half the memory, fused=True)
    (False, False): False,  # eager inference: module path 2-8% faster
    (True, True): False,  # torch.compile, training: inductor fuses the module path's elementwise work
    (False, True): False,  # torch.compile, inference (freezing): likewise, 1.3-1.4x faster than the custom op
}


def auto_fused(training: bool) -> bool:
    """Whether ``fused=None`` means the fused core now (:data:`AUTO_FUSED`; ``torch.compile`` is detected
    while it traces, so a compiled model gets the compiled mode's choice)."""
    return AUTO_FUSED[(bool(training), bool(torch.compiler.is_compiling()))]



def _affine(
    weight: torch.Tensor | None, bias: torch.Tensor | None, mean: torch.Tensor, invstd: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm as y = a·v + b per channel: a = γ/σ, b = β − μ·a."""
    a = invstd if weight is None else weight * invstd
    b = -mean * a if bias is None else bias - mean * a
    return a, b


_CL = torch.channels_last


def _nhwc(t: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) → (B, H, W, C) view: contiguous when ``t`` is channels_last."""
    return t.permute(0, 2, 3, 1)


def _flat(t: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) channels_last → (B·H·W, C) matrix (a view)."""
    return _nhwc(t).reshape(-1, t.shape[1])


def _image(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B·H·W, C) matrix → (B, C, H, W) channels_last view with the batch and size of ``like``."""
    return t.view(like.shape[0], like.shape[2], like.shape[3], -1).permute(0, 3, 1, 2)


def to_direction_major(weight: torch.Tensor, m: int, dim: int) -> torch.Tensor:
    """Reorder ``dim`` of ``weight`` from the blocks' channel order j·m + d to the order d·n + j.

    The fused op returns its m·n channels direction-major (all channels of direction d together), so the
    1×1 conv that reads them uses ``to_direction_major(conv.weight, m, 1)``.
    """
    size = weight.shape[dim]
    shape = weight.shape[:dim] + (size // m, m) + weight.shape[dim + 1:]
    return weight.reshape(shape).transpose(dim, dim + 1).reshape(weight.shape)


# ---- the core: plain functions of tensors (the custom op's kernels) ---------------------------------------


def _stat_dtype(x: torch.Tensor, gamma: torch.Tensor | None) -> torch.dtype:
    """dtype of ATen's batch statistics: γ's (mixed bf16/fp16 input with fp32 γ), else the input's."""
    return gamma.dtype if gamma is not None else x.dtype


def _stacked(
    xd: torch.Tensor, wd: torch.Tensor, xc: torch.Tensor | None, groups: int, stride: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int]:
    """x_d repeated m times (channel d·n + j = x_j, channels_last), W direction-major, x_c subsampled, m.

    The n → m·n depthwise conv with groups n then becomes ONE true depthwise conv over m·n channels
    (groups m·n, multiplier 1): oneDNN's multiplier-1 kernels are about ten times faster than its
    multiplier-m kernel, and one op over all directions replaces m smaller ones."""
    m = wd.shape[0] // groups
    xd_, xs = _channels_last(xd, xc, stride)
    xr = _nhwc(xd_).repeat(1, 1, 1, m).permute(0, 3, 1, 2) if m > 1 else xd_  # channels_last, like x_d
    return xr, to_direction_major(wd, m, 0), xs, m


def _dm(t: torch.Tensor | None, m: int) -> torch.Tensor | None:
    """A per-channel vector in the order j·m + d → direction-major d·n + j (contiguous)."""
    return t if t is None or m == 1 else to_direction_major(t, m, 0)


def _from_dm(t: torch.Tensor, m: int) -> torch.Tensor:
    """Direction-major d·n + j → the modules' order j·m + d (first dimension)."""
    return t if m == 1 else to_direction_major(t, t.shape[0] // m, 0)


def _coefficients(xs: torch.Tensor, wc: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """C x_c for all directions in one GEMM, direction-major channels_last, and C's direction-major matrix."""
    wc_dm = to_direction_major(wc.flatten(1), m, 0)
    return _image(_flat(xs) @ wc_dm.t(), xs), wc_dm


def _core_forward(
    xd: torch.Tensor, wd: torch.Tensor, xc: torch.Tensor | None, wc: torch.Tensor | None,
    gamma: torch.Tensor | None, beta: torch.Tensor | None, mean: torch.Tensor | None,
    invstd: torch.Tensor | None, stride: int, padding: int, groups: int, eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """z = BN(D x_d) [⊙ C x_c] (Eqs. (3), (3p), (5); Eqs. (4), (6), (7) without the product).

    Returns z — channels_last, its m·n channels direction-major (d·n + j) — and, in training mode
    (``mean is None``), the batch mean and inverse standard deviation (order j·m + d); in eval mode two
    empty tensors (``mean``, ``invstd`` are then the running statistics, folded into the depthwise conv).
    """
    xr, w, xs, m = _stacked(xd, wd, xc, groups, stride)
    c = _coefficients(xs, wc, m)[0] if xs is not None else None
    mn = w.shape[0]
    if mean is None:
        y = F.conv2d(xr, w, None, stride, padding, 1, mn)
        y, mu, istd = torch.native_batch_norm(y, _dm(gamma, m), _dm(beta, m), None, None, True, 0.0, eps)
        z = y if c is None else y.mul_(c)
        return z.contiguous(memory_format=_CL), _from_dm(mu, m), _from_dm(istd, m)
    # Eval-mode BN folded into the depthwise conv: a·(W * x) + b = (a·W) * x + b.
    a, b = _affine(_dm(gamma, m), _dm(beta, m), _dm(mean, m), _dm(invstd, m))
    w, b = w * a.to(w.dtype).view(-1, 1, 1, 1), b.to(w.dtype)
    if c is not None and _mkldnn_binary_ok(xr, c):  # the product as oneDNN's post-op of the conv: one pass
        z = torch.ops.mkldnn._convolution_pointwise.binary(
            xr, c, w, b, [padding] * 2, [stride] * 2, [1, 1], mn, "mul", None, None, [], None)
    else:
        z = F.conv2d(xr, w, b, stride, padding, 1, mn)
        z = z if c is None else z.mul_(c)
    empty = z.new_empty(0, dtype=_stat_dtype(xd, gamma))
    return z.contiguous(memory_format=_CL), empty, empty.clone()


def _mkldnn_binary_ok(x: torch.Tensor, other: torch.Tensor) -> bool:
    """Whether oneDNN's conv + binary post-op kernel applies: CPU, float32/bf16, channels_last, no grad."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and other.dtype == x.dtype
            and torch.backends.mkldnn.is_available() and not torch.is_grad_enabled()
            and other.is_contiguous(memory_format=_CL))


def _core_backward(
    gz: torch.Tensor, xd: torch.Tensor, wd: torch.Tensor, xc: torch.Tensor | None, wc: torch.Tensor | None,
    gamma: torch.Tensor | None, beta: torch.Tensor | None, mean: torch.Tensor, invstd: torch.Tensor,
    stride: int, padding: int, groups: int, eps: float, train: bool, need: list[bool],
) -> tuple[torch.Tensor, ...]:
    """Gradients (x_d, W, x_c, W_c, γ, β) of :func:`_core_forward` (empty tensors where ``need`` is False).

    ``mean``/``invstd`` are the statistics the forward pass used (batch or running ones). D x_d and C x_c are
    recomputed (one depthwise conv, one GEMM): only the n-channel inputs were kept."""
    xr, w, xs, m = _stacked(xd, wd, xc, groups, stride)
    gz = gz.to(xd.dtype).contiguous(memory_format=_CL)
    dd = F.conv2d(xr, w, None, stride, padding, 1, w.shape[0])  # D x_d, recomputed (direction-major)
    g_dm, mu, istd = _dm(gamma, m), _dm(mean, m), _dm(invstd, m)
    gc = gxc = gwc = None
    if xs is not None:
        c, wc_dm = _coefficients(xs, wc, m)  # C x_c, recomputed
        if need[2] or need[3]:  # ∂z/∂(C x_c) = BN(D x_d) = a·Dx + b
            a, b = _affine(g_dm, _dm(beta, m), mu, istd)
            gc = torch.addcmul(b.to(dd.dtype).view(1, -1, 1, 1), dd, a.to(dd.dtype).view(1, -1, 1, 1)).mul_(gz)
        gy = c.mul_(gz)
        del c
        gxc, gwc = _coefficient_grads(gc, xs, xc, wc, wc_dm, m, stride, need)
        del gc
    else:
        gy = gz
    ggamma, gbeta, gdd = _bn_backward(gy, dd, g_dm, mu, istd, eps, train, need)
    del gy, dd
    gxr, gw, _ = _conv_backward(gdd, xr, w, None, [stride] * 2, [padding] * 2, [1, 1], False, [0, 0],
                                w.shape[0], [need[0], need[1], False])
    gxd = None
    if need[0]:  # the m copies of x_d: sum their gradients
        gxd = gxr if m == 1 else _nhwc(gxr).unflatten(-1, (m, -1)).sum(-2).permute(0, 3, 1, 2)
        gxd = gxd.contiguous(memory_format=_CL)
    grads = (gxd, _from_dm(gw, m) if need[1] else None, gxc, gwc,
             None if ggamma is None else _from_dm(ggamma, m).to(gamma.dtype),
             None if gbeta is None else _from_dm(gbeta, m).to(beta.dtype))
    return tuple(gz.new_empty(0) if g is None else g for g in grads)  # distinct empties: outputs may not alias


def _bn_backward(
    gy: torch.Tensor, dd: torch.Tensor, g_dm: torch.Tensor | None, mu: torch.Tensor, istd: torch.Tensor,
    eps: float, train: bool, need: list[bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
    """BatchNorm's backward (batch statistics in training mode, the fixed affine map in eval mode):
    the gradients of γ, β (direction-major, None where not needed) and of D x_d."""
    w = g_dm if g_dm is not None else torch.ones_like(mu)
    if train:
        gdd, gg, gb = torch.ops.aten.native_batch_norm_backward(
            gy, dd, w, None, None, mu, istd, True, eps, [True, need[4], need[5]])
        return gg, gb, gdd
    gdd = gy * (w * istd).to(gy.dtype).view(1, -1, 1, 1)
    red = [0, 2, 3]
    gb = gy.sum(red, dtype=mu.dtype) if (need[4] or need[5]) else None
    gg = ((gy * dd).sum(red, dtype=mu.dtype) - mu * gb) * istd if need[4] else None
    return gg, gb if need[5] else None, gdd


def _coefficient_grads(
    gc: torch.Tensor | None, xs: torch.Tensor, xc: torch.Tensor, wc: torch.Tensor, wc_dm: torch.Tensor, m: int,
    stride: int, need: list[bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of x_c and W_c from ∂/∂(C x_c) (direction-major): one GEMM each."""
    if gc is None:
        return None, None
    gflat, xs_flat = _flat(gc), _flat(xs)
    gwc = _from_dm(gflat.t() @ xs_flat, m).reshape(wc.shape).contiguous() if need[3] else None
    gxc = None
    if need[2]:
        gxc = _image(gflat @ wc_dm, xs)
        if stride > 1:
            full = gxc.new_zeros(xc.shape).contiguous(memory_format=_CL)
            full[:, :, ::stride, ::stride] = gxc
            gxc = full
        gxc = gxc.contiguous(memory_format=_CL)
    return gxc, gwc


# ---- the custom op (docs/design.md §17): opaque to torch.compile, with a fake kernel and autograd ---------

_SCHEMA = ("(Tensor xd, Tensor wd, Tensor? xc, Tensor? wc, Tensor? gamma, Tensor? beta, Tensor? mean, "
           "Tensor? invstd, int stride, int padding, int groups, float eps) -> (Tensor, Tensor, Tensor)")
_BACKWARD_SCHEMA = ("(Tensor gz, Tensor xd, Tensor wd, Tensor? xc, Tensor? wc, Tensor? gamma, Tensor? beta, "
                    "Tensor mean, Tensor invstd, int stride, int padding, int groups, float eps, bool train, "
                    "bool[] need) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")


@torch.library.custom_op("pdenets::derivative_bn", mutates_args=(), schema=_SCHEMA)
def derivative_bn(xd, wd, xc, wc, gamma, beta, mean, invstd, stride, padding, groups, eps):  # noqa: ANN001
    """``torch.ops.pdenets.derivative_bn``: :func:`_core_forward` as a custom op (eager and compiled)."""
    return _core_forward(xd, wd, xc, wc, gamma, beta, mean, invstd, stride, padding, groups, eps)


@torch.library.custom_op("pdenets::derivative_bn_backward", mutates_args=(), schema=_BACKWARD_SCHEMA)
def derivative_bn_backward(gz, xd, wd, xc, wc, gamma, beta, mean, invstd, stride, padding, groups, eps, train,
                           need):  # noqa: ANN001
    """``torch.ops.pdenets.derivative_bn_backward``: :func:`_core_backward` as a custom op."""
    return _core_backward(gz, xd, wd, xc, wc, gamma, beta, mean, invstd, stride, padding, groups, eps, train,
                          list(need))


def _out_hw(xd: torch.Tensor, wd: torch.Tensor, stride: int, padding: int) -> tuple[int, int]:
    k = wd.shape[-1]
    return ((xd.shape[2] + 2 * padding - k) // stride + 1, (xd.shape[3] + 2 * padding - k) // stride + 1)


def _empty_cl(shape: tuple, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype or like.dtype, device=like.device, memory_format=_CL)


@derivative_bn.register_fake
def _derivative_bn_fake(xd, wd, xc, wc, gamma, beta, mean, invstd, stride, padding, groups, eps):  # noqa: ANN001
    """Shapes, dtypes and strides of :func:`_core_forward`'s outputs (what inductor plans with)."""
    z = _empty_cl((xd.shape[0], wd.shape[0], *_out_hw(xd, wd, stride, padding)), xd)
    size = wd.shape[0] if mean is None else 0
    dt = _stat_dtype(xd, gamma)
    return z, xd.new_empty(size, dtype=dt), xd.new_empty(size, dtype=dt)


@derivative_bn_backward.register_fake
def _derivative_bn_backward_fake(gz, xd, wd, xc, wc, gamma, beta, mean, invstd, stride, padding, groups, eps,
                                 train, need):  # noqa: ANN001
    """Shapes, dtypes and strides of :func:`_core_backward`'s outputs."""
    empty = gz.new_empty(0, dtype=xd.dtype)
    gxd = _empty_cl(tuple(xd.shape), xd) if need[0] else empty
    gwd = torch.empty_like(wd, memory_format=torch.contiguous_format) if need[1] else empty.clone()
    gxc = _empty_cl(tuple(xc.shape), xd) if xc is not None and need[2] else empty.clone()
    gwc = torch.empty(wc.shape, dtype=xd.dtype, device=wc.device) if wc is not None and need[3] else empty.clone()
    ggamma = gamma.new_empty(gamma.shape) if need[4] else empty.clone()
    gbeta = beta.new_empty(beta.shape) if need[5] else empty.clone()
    return gxd, gwd, gxc, gwc, ggamma, gbeta


def _setup_context(ctx, inputs: tuple, output: tuple) -> None:  # noqa: ANN001
    xd, wd, xc, wc, gamma, beta, mean, invstd, stride, padding, groups, eps = inputs
    train = mean is None
    _, batch_mean, batch_invstd = output
    if train:
        mean, invstd = batch_mean, batch_invstd
    ctx.save_for_backward(xd, wd, xc, wc, gamma, beta, mean, invstd)
    ctx.conf = (stride, padding, groups, eps, train)
    ctx.mark_non_differentiable(batch_mean, batch_invstd)


def _backward(ctx, gz: torch.Tensor, _gmean: torch.Tensor | None, _ginvstd: torch.Tensor | None) -> tuple:  # noqa: ANN001
    xd, wd, xc, wc, gamma, beta, mean, invstd = ctx.saved_tensors
    need = [bool(n) for n in ctx.needs_input_grad[:6]]
    grads = torch.ops.pdenets.derivative_bn_backward(gz, xd, wd, xc, wc, gamma, beta, mean, invstd, *ctx.conf, need)
    return (*(g if n else None for g, n in zip(grads, need)), None, None, None, None, None, None)


derivative_bn.register_autograd(_backward, setup_context=_setup_context)


def _core_flops(x_shape: tuple, w_shape: tuple, xc_shape: tuple | None, out_shape: tuple) -> int:
    """Flops (2 × MACs) of the module path's convolutions that the op computes: D (depthwise k×k, n → m·n)
    and, with x_c, C (1×1, n → m·n); BatchNorm and the product are not counted (as for the modules)."""
    pixels_out = out_shape[0] * out_shape[1] * out_shape[2] * out_shape[3]  # B · m·n · H' · W'
    flops = 2 * pixels_out * w_shape[2] * w_shape[3]
    if xc_shape is not None:
        flops += 2 * pixels_out * xc_shape[1]
    return flops


@register_flop_formula(torch.ops.pdenets.derivative_bn)
def _derivative_bn_flops(xd_shape, wd_shape, xc_shape, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001
    """``torch.utils.flop_counter`` (and so :func:`pdenets.utils.stats.count_macs`) sees through the op."""
    return _core_flops(xd_shape, wd_shape, xc_shape, out_shape[0])


@register_flop_formula(torch.ops.pdenets.derivative_bn_backward)
def _derivative_bn_backward_flops(gz_shape, xd_shape, wd_shape, xc_shape, *args, out_shape=None,
                                  **kwargs) -> int:  # noqa: ANN001
    """The backward op: the two gradient products of each conv plus the recomputed forward (3×)."""
    return 3 * _core_flops(xd_shape, wd_shape, xc_shape, gz_shape)


def _channels_last(
    xd: torch.Tensor, xc: torch.Tensor | None, stride: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x_d in channels_last, and x_c subsampled by the stride of the 1×1 conv, in channels_last."""
    xd_ = xd.contiguous(memory_format=_CL)
    if xc is None:
        return xd_, None
    xs = xd_ if xc is xd else xc
    if stride > 1:
        xs = xs[:, :, ::stride, ::stride]
    return xd_, xs.contiguous(memory_format=_CL)


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
    direction_major: bool = False,
) -> torch.Tensor:
    """``BN(conv_d(x_d)) * conv_c(x_c)`` (or ``BN(conv_d(x_d))`` without ``conv_c``) in one fused op.

    Numerically the same function as the modules applied one after the other, including BatchNorm's
    training/eval behaviour and its running-statistics update; only the memory kept for the backward pass
    and the order of a few floating-point operations differ. The result is channels_last.

    ``direction_major=True`` returns the m·n channels in the order d·n + j (direction d of input channel
    j) instead of the modules' j·m + d, saving a copy: the 1×1 conv that reads them must then use
    :func:`to_direction_major` of its weight.
    """
    if (xc is None) != (conv_c is None):
        raise ValueError("pass both xc and conv_c, or neither")
    if is_tracing() or not (isinstance(conv_d, DerivativeConv) and isinstance(bn, nn.BatchNorm2d)):
        # Traced (jit.trace / fx cannot record the custom op with its autograd, docs/design.md §12), folded
        # (pdenets.symmetry.fold.fold_bn) or otherwise replaced: the plain composition.
        y = bn(conv_d(xd))
        y = y if conv_c is None else y * conv_c(xc)
        return _reorder(y, y.shape[1] // xd.shape[1], True) if direction_major else y
    wd = conv_d.full_weight()
    groups = conv_d.channels
    pad = conv_d.weight.shape[-1] // 2
    if conv_d.padding_mode != "zeros" and pad:
        xd = F.pad(xd, (pad, pad, pad, pad), mode=conv_d.padding_mode)
        pad = 0
    wc = conv_c.weight if conv_c is not None else None
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
            z, mean, invstd = torch.ops.pdenets.derivative_bn(
                xd, wd, xc, wc, gamma, beta, None, None, conv_d.stride, pad, groups, bn.eps
            )
            if bn.training and bn.track_running_stats and bn.running_mean is not None:
                var = invstd.detach().pow(-2) - bn.eps
                _update_running_stats(bn, mean.detach(), var, z.numel() // z.shape[1])
        else:
            invstd = torch.rsqrt(bn.running_var + bn.eps)
            z, _, _ = torch.ops.pdenets.derivative_bn(
                xd, wd, xc, wc, gamma, beta, bn.running_mean, invstd, conv_d.stride, pad, groups, bn.eps
            )
    return z if direction_major else _reorder(z, wd.shape[0] // groups, False)


def _reorder(z: torch.Tensor, m: int, to_direction_major: bool) -> torch.Tensor:
    """Channel order j·m + d → d·n + j (``to_direction_major``) or back, as a channels_last copy."""
    if m == 1:
        return z
    n = z.shape[1] // m
    a, b = (n, m) if to_direction_major else (m, n)
    return _nhwc(z).unflatten(-1, (a, b)).transpose(-1, -2).flatten(-2).permute(0, 3, 1, 2).contiguous(
        memory_format=_CL
    )


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


def conv_bn(conv: nn.Conv2d, bn: nn.Module, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``bn(conv(x))``, with an eval-mode BatchNorm folded into the conv (one pass instead of two).

    ``weight`` replaces ``conv.weight`` (e.g. its columns reordered by :func:`to_direction_major`). Falls
    back to conv then BN in training mode, for BatchNorms without running statistics, and when either
    module has hooks registered (so they still fire; conv's only when ``weight`` is None), and while torch.fx
    traces symbolically (the graph then holds the two modules and works in either mode, docs/design.md §12).
    """
    w = conv.weight if weight is None else weight
    hooked = any((m._forward_hooks or m._forward_pre_hooks) for m in (conv, bn))
    if bn.training or hooked or not isinstance(bn, nn.BatchNorm2d) or bn.running_mean is None or is_symbolic_tracing():
        return bn(conv(x) if weight is None else conv._conv_forward(x, w, conv.bias))
    a, b = eval_bn_affine(bn)
    if conv.bias is not None:
        b = b + conv.bias * a
    return conv._conv_forward(x, w * a.view(-1, *([1] * (w.dim() - 1))), b)


def eval_bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """An eval-mode BatchNorm as y = a·v + b per channel, from its running statistics."""
    return _affine(bn.weight, bn.bias, bn.running_mean, torch.rsqrt(bn.running_var + bn.eps))
