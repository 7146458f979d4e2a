"""Teleportation: move along the symmetry orbit to weights that compute the same function but are better for a
purpose (docs/design.md §4).

Exact group elements are parametrised per segment: T = exp(X − Xᵀ) for O (the exponential of a skew matrix is
orthogonal to round-off), T = exp(X) for GL (T⁻¹ = exp(−X)), T = diag(e^s) for the monomial families (the
discrete permutations do not move the objectives); segments with a finite group (signed permutations,
permutations) stay put. The objective is differentiated through :func:`transformed_params` and minimised with
Adam; the function is unchanged at every step because every T is a group element.

Objectives:

* ``l1`` — the L1 norm of the stream-facing weights (sparsity);
* ``quant4`` — per-channel round-to-nearest 4-bit quantisation (SpinQuant-style rotation). The optimiser
  minimises a smooth proxy (Σ over output channels of row length × max|w|², the expected RTN error with step
  max|w|/7); the path is scored by the measured 4-bit output error on a calibration batch and the best point,
  the original basis included, is kept;
* ``gradnorm`` — maximise the gradient norm of the loss on a batch (Zhao et al.'s teleport for faster
  optimisation). O is an isometry of parameter space: loss *and gradient norm* are identical at w and T·w,
  so on O segments this is provably a no-op and they are skipped with a warning. It acts on GL segments and
  on the scalings of monomial segments.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.func import functional_call

from pdenets.symmetry.analyze import Analysis, analyze
from pdenets.symmetry.fold import fold_bn, is_folded
from pdenets.symmetry.transform import GroupElement, load_params, random_element, transformed_params

__all__ = ["OBJECTIVES", "TeleportResult", "quantize_rtn", "quant_output_error", "stream_facing_l1", "teleport"]

OBJECTIVES = ("l1", "quant4", "gradnorm")


@dataclass
class TeleportResult:
    model: nn.Module
    element: GroupElement
    objective: str
    before: float
    after: float
    history: list[float] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    extra: dict[str, float] = field(default_factory=dict)


def _stream_keys(model: nn.Module, analysis: Analysis) -> list[str]:
    el = random_element(analysis, torch.Generator().manual_seed(0))
    with torch.no_grad():
        keys = transformed_params(model, analysis, el).keys()
    return sorted(k for k in keys if not k.endswith(".bias"))


def stream_facing_l1(model: nn.Module, analysis: Analysis | None = None) -> float:
    """Σ|w| over the weights that read or write the residual stream (folded model)."""
    analysis = analysis or analyze(model)
    p = dict(model.named_parameters())
    return float(sum(p[k].detach().double().abs().sum() for k in _stream_keys(model, analysis)))


def quantize_rtn(w: torch.Tensor, bits: int = 4) -> torch.Tensor:
    """Symmetric per-output-channel round-to-nearest quantisation (levels −2^(b−1) … 2^(b−1)−1)."""
    qmax = 2 ** (bits - 1) - 1
    flat = w.reshape(w.shape[0], -1)
    scale = flat.abs().amax(1, keepdim=True).clamp_min(1e-30) / qmax
    return ((flat / scale).round().clamp(-qmax - 1, qmax) * scale).reshape(w.shape)


def _quant_keys(model: nn.Module) -> list[str]:
    out = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1):
            out.append(f"{name}.weight")
    return out


@torch.no_grad()
def quant_output_error(model: nn.Module, inputs: torch.Tensor, bits: int = 4,
                       params: dict[str, torch.Tensor] | None = None) -> tuple[float, float]:
    """(relative output error, top-1 agreement) of the model (with ``params`` replacing some of its parameters)
    when every conv/linear weight is quantised per channel, round-to-nearest, to ``bits`` bits."""
    p = {**dict(model.named_parameters()), **(params or {})}
    q = {k: quantize_rtn(p[k], bits) for k in _quant_keys(model)}
    y = functional_call(model, p, (inputs,))
    yq = functional_call(model, {**p, **q}, (inputs,))
    return (float((yq - y).norm() / y.norm()), float((yq.argmax(1) == y.argmax(1)).double().mean()))


def _quant_proxy(tensors: dict[str, torch.Tensor], keys: list[str]) -> torch.Tensor:
    total = 0.0
    for k in keys:
        flat = tensors[k].reshape(tensors[k].shape[0], -1)
        total = total + (flat.shape[1] * flat.abs().amax(1) ** 2).sum() / (12 * 49)
    return total


def _check_args(objective: str, inputs: torch.Tensor | None, targets: torch.Tensor | None) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown teleport objective {objective!r}; expected one of {', '.join(OBJECTIVES)}")
    if objective in ("quant4", "gradnorm") and inputs is None:
        raise ValueError(f"objective {objective!r} needs a batch of inputs")
    if objective == "gradnorm" and targets is None:
        raise ValueError("objective 'gradnorm' needs targets for the loss")


def _variables(analysis: Analysis, objective: str, segments: list[int] | None
               ) -> tuple[dict[int, tuple[str, torch.Tensor]], list[int]]:
    """The generator of every segment to move (X for O/GL, log-scales for monomials) and the skipped O segments."""
    variables: dict[int, tuple[str, torch.Tensor]] = {}
    skipped = []
    for s in analysis.segments:
        if (segments is not None and s.index not in segments) or s.fixed:  # a fixed gauge cannot move
            continue
        if objective == "gradnorm" and s.group == "O":
            skipped.append(s.index)
            continue
        if s.group in ("O", "GL"):
            variables[s.index] = (s.group, torch.zeros(s.width, s.width, dtype=torch.float64, requires_grad=True))
        elif s.group in ("monomial", "positive_monomial"):
            variables[s.index] = ("diag", torch.zeros(s.width, dtype=torch.float64, requires_grad=True))
    if skipped:
        warnings.warn(f"teleport gradnorm: segments {skipped} have group O, an isometry of parameter space: "
                      "the gradient norm is invariant there (provably a no-op), skipped", stacklevel=3)
    return variables, skipped


def _element(variables: dict[int, tuple[str, torch.Tensor]], n_segments: int) -> GroupElement:
    """exp(X − Xᵀ) for O, exp(X) for GL, diag(e^s) for the monomial families (exact group elements)."""
    mats: list[torch.Tensor | None] = [None] * n_segments
    for i, (kind, x) in variables.items():
        if kind == "O":
            mats[i] = torch.linalg.matrix_exp(x - x.T)
        elif kind == "GL":
            mats[i] = torch.linalg.matrix_exp(x)
        else:
            mats[i] = torch.diag(x.exp())
    return GroupElement(mats)


class _Objective:
    """The differentiable objective along the orbit and its measured score (both to minimise)."""

    def __init__(self, folded: nn.Module, analysis: Analysis, objective: str, inputs: torch.Tensor | None,
                 targets: torch.Tensor | None) -> None:
        self.folded, self.analysis, self.objective, self.targets = folded, analysis, objective, targets
        self.base = {k: v.detach() for k, v in folded.named_parameters()}
        self.keys = _stream_keys(folded, analysis)
        self.x64 = inputs.double() if inputs is not None else None

    def value(self, el: GroupElement) -> torch.Tensor:
        new = transformed_params(self.folded, self.analysis, el, params=self.base)
        t = {**self.base, **new}
        if self.objective == "l1":
            return sum(t[k].abs().sum() for k in self.keys)
        if self.objective == "quant4":
            return _quant_proxy(t, [k for k in _quant_keys(self.folded) if k in new])
        leaves = {k: (v if v.requires_grad else v.clone().requires_grad_(True)) for k, v in t.items()}
        loss = nn.functional.cross_entropy(functional_call(self.folded, leaves, (self.x64,)), self.targets)
        grads = torch.autograd.grad(loss, list(leaves.values()), create_graph=True, allow_unused=True)
        return -sum((g * g).sum() for g in grads if g is not None)

    def score(self, el: GroupElement) -> float:
        """The measured value to minimise (−‖∇L‖² for gradnorm, the measured 4-bit output error for quant4)."""
        if self.objective == "gradnorm":
            return float(self.value(el).detach())
        with torch.no_grad():
            if self.objective == "quant4":
                new = transformed_params(self.folded, self.analysis, el, params=self.base)
                return quant_output_error(self.folded, self.x64, params=new)[0]
            return float(self.value(el))


def _optimise(obj: _Objective, variables: dict[int, tuple[str, torch.Tensor]], before: float, steps: int,
              lr: float, score_every: int, progress: bool, max_log_norm: float | None
              ) -> tuple[float, GroupElement, list[float]]:
    """Adam on the generators; the best scored element (the identity, scored ``before``, included) and the
    score history."""
    n = len(obj.analysis.segments)
    best_val, best_el, history = before, GroupElement([None] * n), [before]
    if not variables:
        return best_val, best_el, history
    opt = torch.optim.Adam([x for _, x in variables.values()], lr=lr)
    it = range(steps)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"teleport {obj.objective}", leave=False)
    for step in it:
        opt.zero_grad()
        val = obj.value(_element(variables, n))
        if not torch.isfinite(val):
            break
        val.backward()
        opt.step()
        if max_log_norm is not None:
            with torch.no_grad():
                for kind, x in variables.values():
                    if kind != "O" and x.norm() > max_log_norm:
                        x.mul_(max_log_norm / x.norm())
        if (step + 1) % score_every == 0 or step == steps - 1:
            with torch.no_grad():
                el = GroupElement([m.detach() if m is not None else None for m in _element(variables, n).mats])
            val_el = obj.score(el)
            history.append(val_el)
            if val_el < best_val:
                best_val, best_el = val_el, el
    return best_val, best_el, history


def teleport(model: nn.Module, objective: str = "l1", steps: int = 200, lr: float = 0.02,
             inputs: torch.Tensor | None = None, targets: torch.Tensor | None = None,
             segments: list[int] | None = None, score_every: int = 10, progress: bool = False,
             max_log_norm: float | None = None) -> TeleportResult:
    """Teleport ``model`` (folded in float64 internally) to minimise ``objective``; returns the new folded model.

    ``inputs`` is needed for ``quant4`` (calibration batch for the measured error) and, with ``targets``, for
    ``gradnorm``. ``segments`` restricts the search (default: every segment with a continuous group).
    ``max_log_norm`` bounds ‖X‖_F of the GL / scaling generators (default 1 for ``gradnorm``, whose objective is
    unbounded on GL: cond(T) ≤ e² keeps the teleported model numerically equivalent).
    """
    if max_log_norm is None and objective == "gradnorm":
        max_log_norm = 1.0
    _check_args(objective, inputs, targets)
    folded = copy.deepcopy(model).double().eval()
    folded = folded if is_folded(folded) else fold_bn(folded)
    analysis = analyze(folded)
    variables, skipped = _variables(analysis, objective, segments)
    obj = _Objective(folded, analysis, objective, inputs, targets)
    before = obj.score(GroupElement([None] * len(analysis.segments)))
    after, best_el, history = _optimise(obj, variables, before, steps, lr, score_every, progress, max_log_norm)
    new_model = folded if all(m is None for m in best_el.mats) else load_params(
        folded, transformed_params(folded, analysis, best_el))
    if objective == "gradnorm":
        before, after = -before, -after  # report the gradient norm² itself (higher is the goal)
        history = [-h for h in history]
    res = TeleportResult(new_model.eval(), best_el, objective, before, after, history, skipped)
    if objective == "quant4":
        res.extra["agreement_before"] = quant_output_error(folded, obj.x64)[1]
        res.extra["agreement_after"] = quant_output_error(new_model, obj.x64)[1]
    if math.isnan(after):  # pragma: no cover - defensive
        raise RuntimeError("teleport diverged")
    return res


def weight_histograms(before: nn.Module, after: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Stream-facing weights (flattened) of two folded models, for the before/after histogram."""
    a = analyze(before)
    keys = _stream_keys(before, a)
    pb, pa = dict(before.named_parameters()), dict(after.named_parameters())
    return (torch.cat([pb[k].detach().flatten().double() for k in keys]),
            torch.cat([pa[k].detach().flatten().double() for k in keys]))
