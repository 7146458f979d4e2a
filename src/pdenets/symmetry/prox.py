"""Training for compressibility: the ``nuclear-prox`` training hook (``pdenets train --nuclear-prox λ``).

After every optimizer step it applies the proximal operator of ``λ·Σ_s ‖M_s‖_*`` (nuclear norm) with step
``lr`` to the writer matrix M_s of every rotatable segment (:func:`pdenets.symmetry.compress.writer_matrix`):
singular-value soft-thresholding M ← U·max(Σ − λ·lr, 0)·Vᵀ. M is taken in the *folded eval* form
``[s ⊙ A | β − s ⊙ μ | ...]`` (s = γ/√(var + ε) of the BN after each writer), and written back into A and β,
so that after the last step the eval-mode model has exactly low-rank writers and
``pdenets symmetry compress`` can drop the zero directions losslessly.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from pdenets.hooks import TrainHook, register_hook
from pdenets.symmetry.analyze import Analysis, analyze
from pdenets.symmetry.compress import rotatable, segment_writers

__all__ = ["NuclearProx", "nuclear_prox_step", "prox_segments"]


def prox_segments(analysis: Analysis) -> list[int]:
    """Segments whose width reduction is possible (rotatable, read only through 1×1 maps)."""
    return [s.index for s in analysis.segments if s.index > 0 and rotatable(analysis, s.index)]


@torch.no_grad()
def nuclear_prox_step(model: nn.Module, tau: float, analysis: Analysis | None = None) -> list[int]:
    """One singular-value soft-thresholding step with threshold ``tau`` on every rotatable segment's folded writer
    matrix of the (unfolded, BN) model. Returns the numerical rank (σ > 1e-6·σ_max) of each matrix afterwards."""
    analysis = analysis or analyze(model)
    params = dict(model.named_parameters())
    mods = dict(model.named_modules())
    ranks = []
    for seg in prox_segments(analysis):
        parts = []
        for wname, bnname in segment_writers(analysis, seg, bn_names=True):
            if bnname is None:
                raise ValueError(f"nuclear-prox: writer {wname} declares no BatchNorm (Touch.bn)")
            w, bn = params[wname], mods[bnname]
            s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            b = bn.bias - s * bn.running_mean
            parts.append((w, bn, s.double(), w.double().reshape(w.shape[0], -1) * s.double()[:, None], b.double()))
        m = torch.cat([torch.cat([wf, bf[:, None]], 1) for *_, wf, bf in parts], 1)
        u, sv, vh = torch.linalg.svd(m, full_matrices=False)
        sv = (sv - tau).clamp_min(0)
        m2 = (u * sv) @ vh
        ranks.append(int((sv > 1e-6 * sv[0]).sum()) if sv[0] > 0 else 0)
        col = 0
        for w, bn, s, wf, _ in parts:
            k = wf.shape[1]
            new_wf, new_b = m2[:, col:col + k], m2[:, col + k]
            col += k + 1
            ok = s.abs() > 1e-12
            neww = w.double().reshape(w.shape[0], -1).clone()
            neww[ok] = new_wf[ok] / s[ok, None]
            w.copy_(neww.reshape(w.shape).to(w.dtype))
            bn.bias.copy_((new_b + s * bn.running_mean.double()).to(bn.bias.dtype))
    return ranks


class NuclearProx(TrainHook):
    """Singular-value soft-thresholding of the writer matrices after each step (threshold λ·lr)."""

    name = "nuclear-prox"

    def __init__(self, lam: float) -> None:
        if not lam >= 0:
            raise ValueError(f"nuclear-prox needs a weight λ ≥ 0, got {lam}")
        self.lam = lam
        self._analysis: Analysis | None = None
        self.last_ranks: list[int] = []

    def after_step(self, model: nn.Module, lr: float) -> None:
        model = getattr(model, "module", model)
        model = getattr(model, "_orig_mod", model)
        if self._analysis is None:
            self._analysis = analyze(model)
        self.last_ranks = nuclear_prox_step(model, self.lam * lr, self._analysis)

    def state_dict(self) -> dict:
        return {"lam": self.lam}


@register_hook("nuclear-prox")
def _nuclear_prox(value: float | None) -> NuclearProx:
    return NuclearProx(1e-3 if value is None else value)
