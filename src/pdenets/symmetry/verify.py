"""Verification of a symmetry: output differences in float32 / float64, and a power check.

A claimed symmetry passes when the transformed model computes the same outputs; but with small activations a
radial activation is almost linear, so a transformation that is *not* a symmetry can look like one
(docs/design.md §4). The power check therefore (1) scales the inputs so that the stream reaching every radial
activation has |x| ≈ R, and (2) applies, segment by segment, an element of the next larger group with the same
Frobenius norm (orthogonal on an Eq. (3) segment, GL on an O segment, sign flips through a ReLU) using the same
rules. It must change the outputs clearly; a GL segment (nothing larger) gets a random weight perturbation of the
same norm as the change made by its group element.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.func import functional_call

from pdenets.layers.activations import HardBall, SoftBall
from pdenets.symmetry.analyze import Analysis, analyze
from pdenets.symmetry.fold import fold_bn
from pdenets.symmetry.groups import power_element
from pdenets.symmetry.transform import GroupElement, random_element, transformed_params

__all__ = ["SegmentCheck", "VerifyResult", "radial_input_scale", "verify"]


@dataclass
class SegmentCheck:
    index: int
    group: str
    width: int
    err32: float
    err64: float
    err64_scaled: float
    power_group: str
    power_err: float


@dataclass
class VerifyResult:
    err32: float
    err64: float
    max_abs32: float
    pred_agreement: float
    input_scale: float
    rows: list[SegmentCheck] = field(default_factory=list)

    def table(self) -> str:
        out = [f"{'seg':<4}{'width':>6}  {'group':<19}{'fp32 rel':>10}{'fp64 rel':>10}{'fp64@R':>10}  "
               f"{'power check (next larger group)':<34}{'rel':>9}"]
        out.append("-" * 104)
        for r in self.rows:
            out.append(f"{r.index:<4}{r.width:>6}  {r.group:<19}{r.err32:>10.1e}{r.err64:>10.1e}"
                       f"{r.err64_scaled:>10.1e}  {r.power_group:<34}{r.power_err:>9.1e}")
        out.append("-" * 104)
        out.append(f"all segments at once: fp32 rel {self.err32:.1e} (max |Δ| {self.max_abs32:.1e}), "
                   f"fp64 rel {self.err64:.1e}, top-1 agreement {100 * self.pred_agreement:.2f}%; "
                   f"power-check inputs scaled ×{self.input_scale:.3g} so |x| ≈ R at the radial activations")
        return "\n".join(out)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


@torch.no_grad()
def radial_input_scale(model: nn.Module, inputs: torch.Tensor) -> float:
    """Scalar α such that the median |x| at the radial activations' inputs is ≈ R for inputs α·x (1 if none)."""
    radial = [m for m in model.modules() if isinstance(m, (HardBall, SoftBall))]
    if not radial:
        return 1.0
    ratios: list[float] = []

    def hook(mod, args, _out):
        ratios.append(math.log(args[0].norm(dim=1).median().clamp_min(1e-30).item() / mod.radius))

    hs = [m.register_forward_hook(hook) for m in radial]
    best, best_score = 1.0, float("inf")
    try:
        for k in range(-6, 9):
            alpha = 2.0 ** (k * 2 / 3)
            ratios.clear()
            model(inputs * alpha)
            score = sum(abs(r) for r in ratios) / len(ratios)
            if score < best_score:
                best, best_score = alpha, score
    finally:
        for h in hs:
            h.remove()
    return best


class _Run:
    """A transformed model evaluated with ``functional_call`` (no copies of the module tree)."""

    def __init__(self, f64: nn.Module, f32: nn.Module, new: dict[str, torch.Tensor]) -> None:
        self.f64, self.f32, self.new = f64, f32, new

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float64:
            return functional_call(self.f64, self.new, (x,))
        return functional_call(self.f32, {k: v.float() for k, v in self.new.items()}, (x,))


def _power_run(run, base: _Run, params: dict[str, torch.Tensor], analysis: Analysis, seg: int,
               el: GroupElement, generator: torch.Generator) -> tuple[_Run, str]:
    """The transformation a power check applies to segment ``seg`` (docs/design.md §4): an element of the next
    larger group with the same ‖T‖_F, or (GL) random weights with the same ‖Δθ‖ as the group element's."""
    h, larger = power_element(analysis.segments[seg].group, el.mats[seg], generator)
    if h is not None:
        n = len(analysis.segments)
        return run(GroupElement([h if i == seg else None for i in range(n)]), strict=False), \
            f"{larger} (same ‖T‖_F)"
    delta = {k: v - params[k] for k, v in base.new.items()}
    norm = math.sqrt(sum(float((d * d).sum()) for d in delta.values()))
    rnd = {k: torch.randn(v.shape, generator=generator, dtype=v.dtype) for k, v in delta.items()}
    rn = math.sqrt(sum(float((d * d).sum()) for d in rnd.values()))
    return _Run(base.f64, base.f32, {k: params[k] + v * (norm / rn) for k, v in rnd.items()}), \
        "random weights (same ‖Δθ‖)"


@torch.no_grad()
def verify(model: nn.Module, element: GroupElement | None = None, inputs: torch.Tensor | None = None,
           generator: torch.Generator | None = None, per_segment: bool = True, power: bool = True,
           analysis: Analysis | None = None) -> VerifyResult:
    """Check that ``element`` (``None``: a random element of every segment's group) keeps the outputs on ``inputs``.

    ``model`` is the model as trained (BN or folded, any dtype; it is not modified). Float64 errors compare the
    transformed folded float64 model with the original in float64; float32 errors compare the transformed model
    cast to float32 with the original float32 model (folding round-off included).
    """
    if isinstance(element, torch.Tensor):  # verify(model, inputs) / verify(model, inputs, element)
        element, inputs = (inputs if isinstance(inputs, GroupElement) else None), element
    if inputs is None:
        raise ValueError("verify needs a batch of inputs")
    generator = generator or torch.Generator().manual_seed(0)
    m64 = copy.deepcopy(model).eval().double()
    f64 = fold_bn(m64)
    f32 = copy.deepcopy(f64).float()
    analysis = analysis or analyze(f64)
    element = element or random_element(analysis, generator)
    x64, x32 = inputs.double(), inputs.float()
    y64 = m64(x64)
    y32 = m64.float()(x32)  # the original model in float32 (m64 is a private copy)
    params = dict(f64.named_parameters())

    def run(el: GroupElement, strict: bool = True) -> _Run:
        return _Run(f64, f32, transformed_params(f64, analysis, el, strict=strict, params=params))

    t = run(element)
    yt32 = t(x32)
    res = VerifyResult(_rel(yt32, y32), _rel(t(x64), y64), (yt32 - y32).abs().max().item(),
                       (yt32.argmax(1) == y32.argmax(1)).double().mean().item(), radial_input_scale(f64, x64))
    if not per_segment:
        return res
    xs = x64 * res.input_scale
    ys = f64(xs)
    for s in analysis.segments:
        if element.mats[s.index] is None:
            continue
        # this segment alone (segments whose permutation is lifted from it follow with the lift)
        el = random_element(analysis, generator, segments=[s.index])
        if not any(seg.coupled_from is not None for seg in analysis.segments):
            el.mats[s.index] = element.mats[s.index]
        ts = run(el)
        e32, e64, e64s = _rel(ts(x32), y32), _rel(ts(x64), y64), _rel(ts(xs), ys)
        perr, pname = float("nan"), "-"
        if power:
            tp, pname = _power_run(run, ts, params, analysis, s.index, el, generator)
            perr = _rel(tp(xs), ys)
        res.rows.append(SegmentCheck(s.index, s.group, s.width, e32, e64, e64s, pname, perr))
    return res
