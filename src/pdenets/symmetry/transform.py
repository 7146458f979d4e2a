"""Group elements and the change of basis they induce on the weights (Liu-Shao-Bai §4, DESIGN.md §3).

An element is one matrix T_s per segment (``None`` = identity). On the folded model (:func:`fold_bn`):

* readers (1×1 convs that read the stream: P, C of ``eq3p``, the classifier) W → W T⁻¹;
* writers (A and its bias, the stem conv) A → T A;
* stride-2 skips S → T_next S T⁻¹ (bias → T_next b);
* raw readers (a depthwise conv or an elementwise product on the stream; T must be monomial,
  T[σ(j), j] = λ_j): the internal channels that read u_j move to those of u_σ(j), depthwise kernels are
  divided by λ_j, the coefficient rows C follow the same permutation, A's columns too;
* Eq. (4)'s product in the output channels: C → Π C T⁻¹ (Π the permutation of T_out); Eq. (5)'s fixed sum:
  the rows of C that feed output i are multiplied by μ_i.

:func:`transformed_params` computes the new tensors as differentiable functions of the T's (teleportation
differentiates through it); :func:`transform` returns a new model. ``strict=False`` applies the linear rules
even when a raw reader would need a monomial T and leaves the raw reader unchanged: this is the naive
transformation that a power check must catch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn

from pdenets.symmetry.analyze import Analysis, analyze
from pdenets.symmetry.fold import fold_bn, is_folded
from pdenets.symmetry.groups import as_monomial, contains, monomial_matrix, sample

__all__ = ["Basis", "GroupElement", "random_element", "transform", "transformed_params"]


@dataclass
class GroupElement:
    """One change of basis per segment (``None``: identity), float64 matrices."""

    mats: list[torch.Tensor | None]

    def only(self, index: int) -> GroupElement:
        return GroupElement([m if i == index else None for i, m in enumerate(self.mats)])


class Basis:
    """T, T⁻¹ and, when T is monomial, its permutation σ and scales λ (T[σ(j), j] = λ_j)."""

    def __init__(self, t: torch.Tensor | None, n: int, dtype: torch.dtype) -> None:
        self.identity = t is None
        if t is None:
            self.t = self.tinv = torch.eye(n, dtype=dtype)
            self.perm, self.scale = torch.arange(n), torch.ones(n, dtype=dtype)
            return
        self.t = t.to(dtype)
        mono = as_monomial(self.t)
        if mono is not None:
            self.perm, self.scale = mono
            inv = torch.zeros_like(self.t)
            inv[torch.arange(n), self.perm] = 1.0 / self.scale  # exact inverse of a monomial matrix
            self.tinv = inv
        else:
            self.perm = self.scale = None
            self.tinv = torch.linalg.inv(self.t)

    @property
    def monomial(self) -> bool:
        return self.perm is not None


def _m(w: torch.Tensor) -> torch.Tensor:
    return w.reshape(w.shape[0], w.shape[1])


def _c(m: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return m.reshape(like.shape)


def _scatter(x: torch.Tensor, rho: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """y with y[rho[c]] = x[c] along ``dim``."""
    inv = torch.empty_like(rho)
    inv[rho] = torch.arange(rho.numel())
    return x.index_select(dim, inv)


def _raw_dw(params: dict, out: dict, prefix: str, rho: torch.Tensor, div: torch.Tensor, module: nn.Module) -> None:
    """Depthwise reader: channel c moves to rho[c] and its kernel (or folded scale) is divided by div[c]."""
    b = params[prefix + ".bias"]
    out[prefix + ".bias"] = _scatter(b, rho)
    if getattr(module, "shared", False):
        out[prefix + ".scale"] = _scatter(params[prefix + ".scale"] / div, rho)
    else:
        w = params[prefix + ".weight"]
        out[prefix + ".weight"] = _scatter(w / div.view(-1, 1, 1, 1), rho)


def transformed_params(model: nn.Module, analysis: Analysis, element: GroupElement, strict: bool = True,
                       params: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """New values of every parameter the element changes, as functions of ``element.mats`` (differentiable).

    ``model`` must be folded (:func:`fold_bn`). Raises ``ValueError`` if ``strict`` and a segment's T is not
    compatible with a raw reader/writer (not monomial, or an Eq. (5) permutation that is not lifted).
    """
    if not is_folded(model):
        raise ValueError("transformed_params needs a folded model: call pdenets.symmetry.fold_bn(model) first")
    params = dict(model.named_parameters()) if params is None else params
    dt = next(iter(params.values())).dtype
    if len(element.mats) != len(analysis.segments):
        raise ValueError(f"element has {len(element.mats)} matrices, the model has {len(analysis.segments)} segments")
    bases = [Basis(m, s.width, dt) for m, s in zip(element.mats, analysis.segments)]
    out: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())

    def need_mono(b: Basis, what: str) -> Basis:
        if b.monomial:
            return b
        if strict:
            raise ValueError(f"{what} needs a monomial change of basis; got a non-monomial T")
        n = b.t.shape[0]
        return Basis(None, n, dt)  # naive: leave the raw part as it is

    b0 = bases[0]
    if not b0.identity:
        w = params["conv1.weight"]
        out["conv1.weight"] = torch.einsum("ij,jkhw->ikhw", b0.t, w)
        out["conv1.bias"] = b0.t @ params["conv1.bias"]
    for info in analysis.blocks:
        bi, bo = bases[info.seg_in], bases[info.seg_out]
        if bi.identity and bo.identity:
            continue
        p = info.name
        blk = modules[p]
        if info.has_skip_conv:  # T_out S T_in⁻¹
            s = params[p + ".downsample.0.weight"]
            out[p + ".downsample.0.weight"] = _c(bo.t @ _m(s) @ bi.tinv, s)
            out[p + ".downsample.0.bias"] = bo.t @ params[p + ".downsample.0.bias"]
        eq = info.equation
        m = getattr(blk, "multiplier", 4)
        if eq == "eq3p" and not bi.identity:
            for name in ("conv_p", "conv_c"):
                if f"{p}.{name}.weight" not in params:
                    raise ValueError(f"{p}.{name} is not a plain 1×1 conv any more (gauge-fixed?): cannot transform")
                w = params[f"{p}.{name}.weight"]
                out[f"{p}.{name}.weight"] = _c(_m(w) @ bi.tinv, w)
        elif eq in ("eq3", "eq4", "eq6", "eq7"):
            r = need_mono(bi, f"{p} ({eq})")
            n = r.perm.numel()
            if eq == "eq7":
                c_idx = torch.arange(n * m)
                src = c_idx % n
                rho = (c_idx // n) * n + r.perm[src]
            else:
                c_idx = torch.arange(n * m)
                src = c_idx // m
                rho = m * r.perm[src] + c_idx % m
            _raw_dw(params, out, f"{p}.conv_d", rho, r.scale[src], modules[f"{p}.conv_d"])
            w = params[f"{p}.conv_c.weight"]
            ct = _m(w) @ bi.tinv
            if eq == "eq6":
                out[f"{p}.conv_c.weight"] = _c(_scatter(ct, r.perm), w)
            elif eq == "eq4":
                ro = need_mono(bo, f"{p} (eq4 product)")
                out[f"{p}.conv_c.weight"] = _c(_scatter(ct, ro.perm), w)
            else:
                out[f"{p}.conv_c.weight"] = _c(_scatter(ct, rho), w)
        if eq == "eq5":
            r = need_mono(bi, f"{p} (eq5)")
            ro = need_mono(bo, f"{p} (eq5 sum)")
            n, o = r.perm.numel(), ro.perm.numel()
            c_idx = torch.arange(n * m)
            g = (n * m) // o
            i = c_idx // g
            rho = ro.perm[i] * g + (c_idx - i * g)
            if strict and not torch.equal(rho // m, r.perm[c_idx // m]):
                raise ValueError(f"{p} (eq5): the output permutation is not lifted from the input permutation")
            src = c_idx // m
            _raw_dw(params, out, f"{p}.conv_d", rho, r.scale[src], modules[f"{p}.conv_d"])
            w = params[f"{p}.conv_c.weight"]
            ct = (_m(w) @ bi.tinv) * ro.scale[i].unsqueeze(1)
            out[f"{p}.conv_c.weight"] = _c(_scatter(ct, rho), w)
        elif eq == "eq4":
            w = params[f"{p}.conv_a.weight"]
            rho_cols = rho
            out[f"{p}.conv_a.weight"] = _c(_scatter(bo.t @ _m(w), rho_cols, dim=1), w)
            out[f"{p}.bn_a.bias"] = bo.t @ params[f"{p}.bn_a.bias"]
        elif eq != "eq3p" or not bo.identity:
            w = params[f"{p}.conv_a.weight"]
            a = bo.t @ _m(w)
            if eq != "eq3p":
                a = _scatter(a, rho, dim=1)
            out[f"{p}.conv_a.weight"] = _c(a, w)
            out[f"{p}.conv_a.bias"] = bo.t @ params[f"{p}.conv_a.bias"]
    bl = bases[-1]
    if not bl.identity and analysis.has_fc:
        out["fc.weight"] = params["fc.weight"] @ bl.tinv
    return out


def load_params(model: nn.Module, new: dict[str, torch.Tensor]) -> nn.Module:
    """Copy of ``model`` with the given parameters replaced (shapes may change)."""
    model = copy.deepcopy(model)
    mods = dict(model.named_modules())
    with torch.no_grad():
        for name, v in new.items():
            mod_name, _, attr = name.rpartition(".")
            mod = mods[mod_name]
            old = getattr(mod, attr)
            setattr(mod, attr, nn.Parameter(v.detach().to(old.dtype).clone(), requires_grad=old.requires_grad))
    return model


def transform(model: nn.Module, element: GroupElement, strict: bool = True,
              analysis: Analysis | None = None) -> nn.Module:
    """A new (folded, eval-mode) model with the weights transformed by ``element``."""
    folded = model if is_folded(model) else fold_bn(model)
    analysis = analysis or analyze(folded)
    with torch.no_grad():
        new = transformed_params(folded, analysis, element, strict=strict)
    return load_params(folded, new).eval()


def _lift(perm: torch.Tensor, n_out: int) -> torch.Tensor:
    r = n_out // perm.numel()
    i = torch.arange(n_out)
    return perm[i // r] * r + i % r


def random_element(analysis: Analysis, generator: torch.Generator | None = None,
                   segments: list[int] | None = None) -> GroupElement:
    """A random element of every segment's group (or only of ``segments``; the others stay the identity,
    except segments whose permutation is lifted from a transformed one, which get the lift)."""
    generator = generator or torch.Generator().manual_seed(0)
    mats: list[torch.Tensor | None] = []
    for s in analysis.segments:
        chosen = segments is None or s.index in segments
        if s.coupled_from is not None and (chosen or mats[s.coupled_from] is not None):
            prev = mats[s.coupled_from]
            pm = as_monomial(prev)[0] if prev is not None else torch.arange(analysis.segments[s.coupled_from].width)
            perm = _lift(pm, s.width)
            if chosen:
                t = sample(s.group, s.width, generator, perm=perm)
            else:
                t = monomial_matrix(perm, torch.ones(s.width, dtype=torch.float64))
        elif chosen:
            t = sample(s.group, s.width, generator)
        else:
            t = None
        assert t is None or contains(s.group, t)
        mats.append(t)
    return GroupElement(mats)
