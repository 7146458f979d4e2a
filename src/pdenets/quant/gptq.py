"""GPTQ-style error-compensating weight quantisation (Frantar et al., 2023), for the convs and linears of a
:class:`~pdenets.quant.fakequant.QuantSim` (docs/design.md §16).

For a layer with weight rows w (one per output channel, columns in ``F.unfold`` order c·k·k) and calibration
inputs X (the unfolded patches it reads), the output error ‖(W − Q) X‖² is a quadratic form in the columns
with Hessian H = X Xᵀ. Columns are quantised one at a time (round-to-nearest on the fixed per-channel grid of
:func:`~pdenets.quant.fakequant.weight_scale`) and the error of column i, divided by [H⁻¹]_ii, is spread over the
columns not yet quantised along row i of the upper Cholesky factor of H⁻¹. Grouped convs (the depthwise
derivative conv of Liu-Shao-Bai Eq. (3)) have one Hessian per group, processed as a batch.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from pdenets.quant.fakequant import QConv, QuantSim, weight_grid, weight_scale

__all__ = ["gptq_quantize", "gptq_weights", "layer_hessians"]


def _patches(m: QConv, x: torch.Tensor) -> torch.Tensor:
    """The columns a layer multiplies its weight rows with: (groups, d, samples)."""
    x = x.detach().double()
    if m.kind == "linear":
        return x.reshape(-1, x.shape[-1]).T.unsqueeze(0)
    k = m.weight.shape[-2:]
    pad = m.padding if isinstance(m.padding, int) else m.padding[0]
    if m.padding_mode != "zeros":
        x, pad = F.pad(x, (pad, pad, pad, pad), mode=m.padding_mode), 0
    cols = F.unfold(x, k, dilation=m.dilation, padding=pad, stride=m.stride)  # (N, C·kh·kw, L)
    n, _, length = cols.shape
    cols = cols.view(n, m.groups, -1, length).permute(1, 2, 0, 3)
    return cols.reshape(m.groups, cols.shape[1], n * length)


@torch.no_grad()
def layer_hessians(sim: QuantSim, batches: Iterable[torch.Tensor]) -> dict[str, torch.Tensor]:
    """H = Σ X Xᵀ per layer (and group) over the calibration ``batches``, on the float network."""
    sim.set_mode("float")
    hess: dict[str, torch.Tensor] = {}
    handles = []
    for name in sim.convs:
        m = sim.module.get_submodule(name)

        def hook(mod, args, name=name):
            p = _patches(mod, args[0])
            h = p @ p.transpose(1, 2)
            hess[name] = hess[name] + h if name in hess else h

        handles.append(m.register_forward_pre_hook(hook))
    try:
        dt = next(sim.module.parameters()).dtype
        for xb in batches:
            sim.module(xb.to(dt))
    finally:
        for h in handles:
            h.remove()
    return hess


def gptq_quantize(w: torch.Tensor, h: torch.Tensor, bits: int, scale: torch.Tensor, damp: float = 0.01
                  ) -> torch.Tensor:
    """GPTQ of rows ``w`` (groups, rows, d) with Hessians ``h`` (groups, d, d) on the per-row grid ``scale``
    (groups, rows); returns the dequantised weights (levels × scale)."""
    w, h = w.double().clone(), h.double().clone()
    lo, hi = weight_grid(bits)
    d = w.shape[-1]
    idx = torch.arange(d)
    dead = h[:, idx, idx] == 0
    h[:, idx, idx] += dead.double()
    w.masked_fill_(dead.unsqueeze(1), 0.0)
    h[:, idx, idx] += damp * h[:, idx, idx].mean(1, keepdim=True)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    s = scale.double()
    q = torch.empty_like(w)
    for i in range(d):
        col = w[:, :, i]
        q[:, :, i] = torch.clamp(torch.round(col / s), lo, hi) * s
        err = (col - q[:, :, i]) / hinv[:, i, i].unsqueeze(1)
        w[:, :, i:] -= err.unsqueeze(2) * hinv[:, i, i:].unsqueeze(1)
    return q


def gptq_weights(sim: QuantSim, batches: list[torch.Tensor], damp: float = 0.01) -> dict[str, torch.Tensor]:
    """GPTQ weights of every layer of ``sim`` (name → weight of the layer's shape), for
    :meth:`QuantSim.freeze`."""
    hess = layer_hessians(sim, batches)
    out = {}
    for name in sim.convs:
        m = sim.module.get_submodule(name)
        if name not in hess:
            continue
        w = m.weight.detach()
        g = hess[name].shape[0]
        rows = w.reshape(g, w.shape[0] // g, -1)
        s = weight_scale(w.float(), m.bits).view(g, -1)
        out[name] = gptq_quantize(rows, hess[name], m.bits, s, damp).reshape(w.shape).to(w.dtype)
    return out
