"""Rotations of the residual stream for quantisation: Haar-random, randomised Hadamard, learned
(docs/design.md §16; QuaRot and SpinQuant for the ``eq3p`` ConvNets).

Every segment whose exact group contains O(n) — O itself (hardball/softball, Liu-Shao-Bai §4 made exact by the
``eq3p`` premix P, docs/design.md §3) and GL (identity activations) — may be rotated, u → Q u, Q ∈ O(n): readers
W → W Qᵀ, writers A → Q A, skips Q' S Qᵀ, classifier W Qᵀ (:func:`~pdenets.symmetry.transform.transformed_params`).
The float function is unchanged; the weights and the stream's activations are expressed in a new basis, which is
what per-channel weight and per-tensor activation quantisation are sensitive to (an outlier channel of the stream
is spread over all of them by a Hadamard matrix).

* ``none`` — the identity;
* ``random`` — Haar-random Q per segment (:func:`~pdenets.symmetry.groups.haar_orthogonal`);
* ``hadamard`` — randomised Hadamard Q = (I ⊗ H_b / √b) · diag(±1) (· a random permutation when b < n), b the
  largest power of two dividing n (block-Hadamard where n is not a power of two);
* ``learned`` — Q = Q₀ · exp(X − Xᵀ) (Q₀ the randomised Hadamard, exp of a skew matrix is exactly orthogonal),
  X optimised with Adam on the fake-quantised network's output error over calibration images
  (:func:`learn_rotation`; straight-through rounding, SpinQuant's Cayley optimisation done with the exponential).

Segments bounded by the stem's ReLU (positive monomials) or read channel by channel (raw Eq. (3)) admit no
rotation and stay as they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.func import functional_call

from pdenets.symmetry.analyze import Analysis
from pdenets.symmetry.groups import haar_orthogonal
from pdenets.symmetry.transform import GroupElement, transformed_params

__all__ = ["ROTATIONS", "LearnResult", "hadamard", "learn_rotation", "randomized_hadamard", "rotatable",
           "rotation_element"]

ROTATIONS = ("none", "random", "hadamard", "learned")


def rotatable(analysis: Analysis) -> list[int]:
    """Indices of the segments whose group contains O(n) (O or GL) and whose gauge is not fixed."""
    return [s.index for s in analysis.segments if s.group in ("O", "GL") and not s.fixed]


def hadamard(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Sylvester's Hadamard matrix of order n (a power of two), normalised to be orthogonal."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"Sylvester Hadamard matrices need a power of two, got {n}")
    h = torch.ones(1, 1, dtype=dtype)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(n)


def randomized_hadamard(n: int, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(I_{n/b} ⊗ H_b) · diag(random signs) [· random permutation if b < n], b = the largest power of two
    dividing n: orthogonal, every entry of a block ±1/√b (QuaRot's randomised Hadamard transform)."""
    b = n & -n
    t = torch.block_diag(*[hadamard(b, dtype)] * (n // b))
    signs = (torch.randint(0, 2, (n,), generator=generator) * 2 - 1).to(dtype)
    t = t * signs.unsqueeze(0)
    if b < n:
        t = t[:, torch.randperm(n, generator=generator)]
    return t


def rotation_element(analysis: Analysis, kind: str, generator: torch.Generator) -> GroupElement:
    """The ``none``, ``random`` or ``hadamard`` rotation of every rotatable segment (float64).

    Raises ``ValueError`` for an unknown kind, for ``learned`` (see :func:`learn_rotation`), or if a rotation is
    asked of a model without a rotatable segment."""
    if kind not in ROTATIONS or kind == "learned":
        raise ValueError(f"rotation_element: expected none, random or hadamard, got {kind!r}")
    mats: list[torch.Tensor | None] = [None] * len(analysis.segments)
    segs = rotatable(analysis)
    if kind != "none" and not segs:
        groups = ", ".join(f"{s.name} {s.group}" for s in analysis.segments)
        raise ValueError(f"no segment admits a rotation (groups: {groups}); only rotation 'none' applies")
    for i in segs if kind != "none" else ():
        n = analysis.segments[i].width
        mats[i] = haar_orthogonal(n, generator) if kind == "random" else randomized_hadamard(n, generator)
    return GroupElement(mats)


@dataclass
class LearnResult:
    """The learned element, the surrogate loss per step and the measured scores (step, value) of
    ``score``, the start (step 0) included; ``best_step`` is the step whose element was kept."""

    element: GroupElement
    losses: list[float] = field(default_factory=list)
    scores: list[tuple[int, float]] = field(default_factory=list)
    best_step: int = 0


def _mats(init: GroupElement, xs: dict[int, torch.Tensor]) -> list[torch.Tensor | None]:
    return [m if i not in xs else m @ torch.linalg.matrix_exp(xs[i] - xs[i].T) for i, m in enumerate(init.mats)]


def learn_rotation(folded: nn.Module, analysis: Analysis, sim_module: nn.Module, inputs: torch.Tensor,
                   init: GroupElement, score: Callable[[GroupElement], float], steps: int = 100, lr: float = 0.005,
                   score_every: int = 20, batch: int = 64, generator: torch.Generator | None = None
                   ) -> LearnResult:
    """Optimise Q_s = Q₀_s · exp(X_s − X_sᵀ) on every rotatable segment to minimise the relative output error
    ‖y_q − y‖² / ‖y‖² of ``sim_module`` (a :class:`~pdenets.quant.fakequant.QuantSim` module of ``folded`` in
    ``dynamic`` mode: straight-through rounding, scales of the current weights and batch) on ``inputs``
    (calibration images, never the test split).

    ``folded`` is the BN-folded float64 model, ``init`` the starting element (Q₀; the identity where ``None``);
    each Adam step uses ``batch`` images drawn from ``inputs`` (``generator``). Every ``score_every`` steps, and
    at the start, the element is scored by ``score`` (the measured error of the static integer model on the
    calibration images); the best scored element is returned.
    """
    base = {k: v.detach() for k, v in folded.named_parameters()}
    mats0 = [m if m is not None else (torch.eye(s.width, dtype=torch.float64) if s.index in rotatable(analysis)
                                      else None) for m, s in zip(init.mats, analysis.segments)]
    init = GroupElement(mats0)
    xs = {i: torch.zeros(analysis.segments[i].width, analysis.segments[i].width, dtype=torch.float64,
                         requires_grad=True) for i in rotatable(analysis)}
    with torch.no_grad():
        y = functional_call(folded, base, (inputs.double(),)).float()
    res = LearnResult(init, scores=[(0, score(init))])
    best = res.scores[0][1]
    if not xs:
        return res
    opt = torch.optim.Adam(list(xs.values()), lr=lr)
    x32, gen = inputs.float(), generator or torch.Generator().manual_seed(0)
    for step in range(1, steps + 1):
        idx = torch.randperm(len(x32), generator=gen)[:batch]
        opt.zero_grad()
        new = transformed_params(folded, analysis, GroupElement(_mats(init, xs)), params=base)
        yq = functional_call(sim_module, {k: v.float() for k, v in new.items()}, (x32[idx],), strict=False)
        loss = ((yq - y[idx]) ** 2).sum() / (y[idx] ** 2).sum()
        loss.backward()
        opt.step()
        res.losses.append(float(loss.detach()))
        if step % score_every == 0 or step == steps:
            with torch.no_grad():
                el = GroupElement([m.detach() if m is not None else None for m in _mats(init, xs)])
            val = score(el)
            res.scores.append((step, val))
            if val < best:
                best, res.element, res.best_step = val, el, step
    return res
