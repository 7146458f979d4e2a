"""Group elements and the change of basis they induce on the weights (Liu-Shao-Bai §4, docs/design.md §3).

An element is one matrix T_s per segment (``None`` = identity). On the folded model (:func:`fold_bn`), every
module is changed by the way its block declares it touches the stream (:mod:`pdenets.layers.stream`):

* ``read`` (1×1 maps that read the stream: P, C of ``eq3p``, the skip, the classifier): W → W T_in⁻¹;
* ``write`` (A and its bias, the skip, the stem conv): A → T_out A, b → T_out b; a stride-2 skip is both,
  S → T_out S T_in⁻¹;
* ``read_channelwise`` (a depthwise conv or an elementwise product on the stream; T must be monomial,
  T[σ(j), j] = λ_j): the internal channels that follow u_j move to those of u_σ(j)
  (:func:`~pdenets.layers.stream.lift_permutation`), depthwise kernels (and declared ``div_rows``) are divided
  by λ_j, the declared rows (C) and columns (A) move with them;
* ``write_channelwise`` (Eq. (4)'s product, Eq. (5)'s fixed sum in the output channels): the declared rows
  follow the permutation Π of T_out (C → Π C T_in⁻¹), the declared factors take its scales μ_i.

:func:`transformed_params` computes the new tensors as differentiable functions of the T's (teleportation
differentiates through it); :func:`transform` returns a new model. ``strict=False`` applies the linear rules
even when a channelwise touch would need a monomial T and leaves the channelwise part unchanged: this is the
naive transformation that a power check must catch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn

from pdenets.layers.stream import Touch, lift_permutation
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


@dataclass
class _Space:
    """An internal channel space of a block under a monomial T: where channel c goes (rho), the scale its
    depthwise kernels are divided by (div, read side), the scale its ``scale_rows`` factors take (mul, write side)."""

    rho: torch.Tensor
    div: torch.Tensor | None = None
    mul: torch.Tensor | None = None
    src: torch.Tensor | None = None
    perm: torch.Tensor | None = None


@dataclass
class _Ctx:
    """What one block (or the network level) is transformed with."""

    prefix: str
    label: str
    bi: Basis
    bo: Basis
    strict: bool
    params: dict[str, torch.Tensor]
    modules: dict[str, nn.Module]

    def mono(self, b: Basis, what: str) -> Basis:
        """``b`` if monomial; else an error (``strict``) or the identity (the naive transformation)."""
        if b.monomial:
            return b
        if self.strict:
            raise ValueError(f"{self.prefix} ({self.label}{what}) needs a monomial change of basis; "
                             "got a non-monomial T")
        return Basis(None, b.t.shape[0], b.t.dtype)

    def path(self, module: str) -> str:
        return f"{self.prefix}.{module}" if self.prefix else module


def _spaces(ctx: _Ctx, touches: tuple[Touch, ...]) -> dict[str, _Space]:
    """Permutation and scales of every channel space (docs/design.md §3: T[σ(j), j] = λ_j moves the internal
    channels of u_j to those of u_σ(j)); a space both read and written takes the written permutation, which
    must be lifted from the read one."""
    spaces: dict[str, _Space] = {}
    for t in touches:
        if t.role == "read_channelwise":
            r = ctx.mono(ctx.bi, "")
            src = t.channels.source(r.perm.numel())
            sp = spaces.setdefault(t.channels.space, _Space(lift_permutation(src, r.perm)))
            sp.div, sp.src, sp.perm = r.scale[src], src, r.perm
    for t in touches:
        if t.role == "write_channelwise":
            ro = ctx.mono(ctx.bo, f" {t.module}")
            dst = t.channels.source(ro.perm.numel())
            rho = lift_permutation(dst, ro.perm)
            sp = spaces.setdefault(t.channels.space, _Space(rho))
            sp.rho, sp.mul = rho, ro.scale[dst]
            if ctx.strict and sp.src is not None and not torch.equal(sp.src[sp.rho], sp.perm[sp.src]):
                raise ValueError(f"{ctx.prefix} ({ctx.label}): the output permutation is not lifted from the "
                                 "input permutation")
    return spaces


def _linear_ops(ctx: _Ctx, touches: tuple[Touch, ...], spaces: dict[str, _Space]) -> dict[str, dict]:
    """Per 1×1 module: which of W → T_out W, W → W T_in⁻¹, row scales, row/column moves apply."""
    ops: dict[str, dict] = {}
    for t in touches:
        if t.role == "read" and not ctx.bi.identity:
            ops.setdefault(t.module, {})["read"] = True
        elif t.role == "write" and not ctx.bo.identity:
            ops.setdefault(t.module, {})["write"] = t
    for t in touches:
        if t.channelwise:
            sp, ch = spaces[t.channels.space], t.channels
            for m in ch.rows + ch.div_rows:
                ops.setdefault(m, {})["rows"] = sp.rho
            for m in ch.div_rows:
                ops[m]["div"] = sp.div
            for m in ch.cols:
                ops.setdefault(m, {})["cols"] = sp.rho
            for m in ch.scale_rows:
                ops.setdefault(m, {})["scale"] = sp.mul
    return ops


def _apply_linear(ctx: _Ctx, module: str, op: dict, out: dict[str, torch.Tensor]) -> None:
    name = ctx.path(module) + ".weight"
    if name not in ctx.params:
        raise ValueError(f"{ctx.path(module)} is not a plain 1×1 map any more (gauge-fixed?): cannot transform")
    w = out.get(name, ctx.params[name])
    a = w.reshape(w.shape[0], w.shape[1], -1)  # (out, in, kernel): 1×1 maps, or a stem conv that only writes
    if "write" in op:
        a = (ctx.bo.t @ a.reshape(a.shape[0], -1)).reshape(a.shape)
    if "read" in op:
        a = a.squeeze(2) @ ctx.bi.tinv if a.shape[2] == 1 else torch.einsum("ijr,jk->ikr", a, ctx.bi.tinv)
        a = a.reshape(a.shape[0], a.shape[1], -1)
    if "scale" in op:
        a = a * op["scale"].view(-1, 1, 1)
    if "div" in op:
        a = a / op["div"].view(-1, 1, 1)
    if "rows" in op:
        a = _scatter(a, op["rows"])
    if "cols" in op:
        a = _scatter(a, op["cols"], dim=1)
    out[name] = a.reshape(w.shape)
    t = op.get("write")
    if t is not None and t.bias is not None:
        out[ctx.path(t.bias)] = ctx.bo.t @ ctx.params[ctx.path(t.bias)]


def _transform_touches(ctx: _Ctx, touches: tuple[Touch, ...], out: dict[str, torch.Tensor]) -> None:
    """New tensors of everything ``touches`` name, under T_in = ``ctx.bi`` and T_out = ``ctx.bo``."""
    spaces = _spaces(ctx, touches)
    for t in touches:
        if t.channelwise:
            sp = spaces[t.channels.space]
            for k in t.channels.kernels:
                mod = ctx.modules[ctx.path(k)]
                if ctx.strict and getattr(mod, "shared", False) and not torch.equal(
                        mod.kernel_index[sp.rho], mod.kernel_index):
                    raise ValueError(f"{ctx.path(k)}: the permutation does not keep the shared kernels")
                _raw_dw(ctx.params, out, ctx.path(k), sp.rho, sp.div, mod)
    for module, op in _linear_ops(ctx, touches, spaces).items():
        _apply_linear(ctx, module, op, out)


def transformed_params(model: nn.Module, analysis: Analysis, element: GroupElement, strict: bool = True,
                       params: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """New values of every parameter the element changes, as functions of ``element.mats`` (differentiable).

    ``model`` must be folded (:func:`fold_bn`). Every block is transformed by the touches it declares
    (:class:`~pdenets.layers.stream.BlockSpec`), the stem and the classifier by the network's
    (:class:`~pdenets.layers.stream.StreamSpec`). Raises ``ValueError`` if ``strict`` and a segment's T is not
    compatible with a channelwise reader/writer (not monomial, or an Eq. (5) permutation that is not lifted).
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
    for seg, touch in (analysis.spec.touches if analysis.spec is not None else ()):
        if touch.role == "read" and f"{touch.module}.weight" not in params:
            continue  # a gauge-fixed classifier (Trapezoid1x1) is left as it is, as before the declarations
        if not bases[seg].identity:
            _transform_touches(_Ctx("", "network", bases[seg], bases[seg], strict, params, modules), (touch,), out)
    for info in analysis.blocks:
        bi, bo = bases[info.seg_in], bases[info.seg_out]
        if not (bi.identity and bo.identity):
            _transform_touches(_Ctx(info.name, info.equation, bi, bo, strict, params, modules),
                               info.spec.touches, out)
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
    except segments whose permutation is lifted from a transformed one, which get the lift). Gauge-fixed
    segments (``Segment.fixed``) stay the identity: their fixed reader leaves only a discrete stabiliser."""
    generator = generator or torch.Generator().manual_seed(0)
    mats: list[torch.Tensor | None] = []
    for s in analysis.segments:
        chosen = (segments is None or s.index in segments) and not s.fixed
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
