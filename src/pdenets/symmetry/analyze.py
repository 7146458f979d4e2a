"""Group analysis of a QL-ConvNet: for every residual-stream segment, its width and its exact group.

A *segment* is the stretch of the residual stream that one change of basis T acts on. Identity skips carry
the basis unchanged from block to block, so a segment is a whole stage: it starts at the stem (stage 1) or at
the stride-2 block whose learned 1×1 skip S writes it (T_next S T⁻¹), and it ends where the next stride-2
block reads it (or at the classifier, W T⁻¹, after the final activation and the average pooling, which
commutes with T). With ``act_placement='all'`` the activations at every block end lie *inside* the
segment: an identity skip around an activation forces the same T on both sides, so they constrain the
segment's group instead of starting new segments.

The group is the intersection of the constraints of everything that touches the segment
(:mod:`pdenets.symmetry.groups`, DESIGN.md §3):

* the stem's ReLU + max-pool (stage 1): permutation × positive diagonal;
* every activation applied to the segment's channels: radial → O, hardtanh → signed permutations,
  ReLU → positive monomial, none → GL;
* blocks that read the stream only through learned 1×1 maps (``eq3p``: P, C; the skip S) → GL;
* blocks that read the raw stream channel by channel (Eq. 3's depthwise D, Eq. 4's D, Eq. 5's D, the
  elementwise products u ⊙ C u of Eqs. 6-7) → monomial; Eq. (4)'s product in the output channels and
  Eq. (5)'s fixed sum S also force a monomial T on the segment they write. Eq. (5)'s fixed sum ties output
  channel i to input channel ⌊i·g/m⌋, so the permutation of the segment written by an Eq. (5) stride-2
  block is lifted from the previous one (``coupled_from``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn as nn

from pdenets.layers.ql_blocks import QLBlock
from pdenets.symmetry.groups import ACT_CONSTRAINTS, group_dim, group_name

RAW_READERS = {"eq3": "depthwise D reads the raw stream", "eq4": "depthwise D reads the raw stream",
               "eq5": "depthwise D reads the raw stream", "eq6": "u ⊙ C u multiplies the raw stream",
               "eq7": "u ⊙ C u multiplies the raw stream"}
RAW_WRITERS = {"eq4": "A(Du) ⊙ Cu is a product in the stream channels",
               "eq5": "the fixed sum S writes the stream channel by channel"}


@dataclass
class BlockInfo:
    name: str
    equation: str
    seg_in: int
    seg_out: int
    has_skip_conv: bool


@dataclass
class Segment:
    index: int
    name: str
    width: int
    group: str
    dim: int
    reason: str
    constraints: frozenset[str]
    acts: list[str] = field(default_factory=list)
    coupled_from: int | None = None

    @property
    def compressible(self) -> bool:
        """Readers and writers are all linear maps and T may rotate (GL or O): width reduction applies."""
        return "mono" not in self.constraints and "pos" not in self.constraints


@dataclass
class Analysis:
    model_name: str
    segments: list[Segment]
    blocks: list[BlockInfo]
    stem: str
    has_fc: bool

    @property
    def total_dim(self) -> int:
        return sum(s.dim for s in self.segments)

    def table(self) -> str:
        rows = [f"{'seg':<4}{'name':<9}{'width':>6}  {'group':<19}{'dim G':>8}  reason"]
        rows.append("-" * 100)
        for s in self.segments:
            rows.append(f"{s.index:<4}{s.name:<9}{s.width:>6}  {s.group:<19}{s.dim:>8}  {s.reason}")
        rows.append("-" * 100)
        rows.append(f"{'':<19}{'Σ dim G':<25}{self.total_dim:>8}")
        return "\n".join(rows)


def _act_name(mod: nn.Module) -> str:
    name = type(mod).__name__.lower()
    for key in ("hardball", "softball", "hardtanh", "relu"):
        if key in name:
            return key
    return "none"


def _stream_width(model: nn.Module, stage: int) -> int:
    if stage == 0:
        return model.conv1.weight.shape[0]
    blk = model.stages[stage][0]
    if blk.downsample is not None:
        return blk.downsample[0].weight.shape[0]
    return blk.out_chs


def analyze(model: nn.Module) -> Analysis:
    """Per-segment group analysis of a QL-ConvNet (:class:`~pdenets.models.qlnet.QLNet`, folded or not)."""
    if not hasattr(model, "stages") or not hasattr(model, "conv1"):
        raise ValueError(f"analyze expects a QL-ConvNet (pdenets QLNet), got {type(model).__name__}")
    n_seg = len(model.stages)
    cons: list[set[str]] = [set() for _ in range(n_seg)]
    why: list[list[str]] = [[] for _ in range(n_seg)]
    acts: list[list[str]] = [[] for _ in range(n_seg)]
    couple: list[int | None] = [None] * n_seg
    cons[0] |= {"mono", "pos"}
    why[0].append("stem ReLU + max-pool" if not isinstance(model.maxpool, nn.Identity) else "stem ReLU")
    blocks: list[BlockInfo] = []
    for si, stage in enumerate(model.stages):
        for bi, blk in enumerate(stage):
            if not isinstance(blk, QLBlock):
                raise ValueError(f"layer{si + 1}.{bi} is not a QL block ({type(blk).__name__})")
            seg_in = si - 1 if (si > 0 and bi == 0) else si
            eq = blk.equation
            blocks.append(BlockInfo(f"layer{si + 1}.{bi}", eq, seg_in, si, blk.downsample is not None))
            if eq in RAW_READERS:
                cons[seg_in].add("mono")
                why[seg_in].append(f"{eq}: {RAW_READERS[eq]}")
            if eq in RAW_WRITERS:
                cons[si].add("mono")
                why[si].append(f"{eq}: {RAW_WRITERS[eq]}")
                if eq == "eq5" and seg_in != si:
                    couple[si] = seg_in
            a = _act_name(blk.act)
            if a != "none":
                cons[si] |= ACT_CONSTRAINTS[a]
                acts[si].append(f"{a}@layer{si + 1}.{bi}")
    fa = _act_name(model.final_act)
    if fa != "none":
        cons[-1] |= ACT_CONSTRAINTS[fa]
        acts[-1].append(f"{fa}@final")
    segments = []
    for i in range(n_seg):
        reasons = list(dict.fromkeys(why[i]))
        if acts[i]:
            kinds = sorted({a.split("@")[0] for a in acts[i]})
            reasons.append(f"{'/'.join(kinds)} ×{len(acts[i])}")
        else:
            reasons.append("no activation (identity)" if i > 0 else "")
        eqs = sorted({b.equation for b in blocks if b.seg_in == i or b.seg_out == i})
        linear = [e for e in eqs if e not in RAW_READERS and e not in RAW_WRITERS]
        if linear:
            reasons.append(f"{'/'.join(linear)} read/write it via 1×1 maps")
        if couple[i] is not None:
            reasons.append(f"permutation lifted from seg {couple[i]}")
        fixed = [b.name for b in blocks if b.seg_in == i and type(getattr(model.get_submodule(b.name), "conv_p",
                 None)).__name__ in ("Trapezoid1x1", "Identity")]
        if i == n_seg - 1 and type(getattr(model, "fc", None)).__name__ == "Trapezoid1x1":
            fixed.append("fc")
        if fixed:
            reasons.append(f"gauge already fixed at {fixed[0]} (only its stabiliser is left)")
        c = frozenset(cons[i])
        g = group_name(c)
        w = _stream_width(model, i)
        segments.append(Segment(i, f"stage{i + 1}", w, g, group_dim(g, w), "; ".join(r for r in reasons if r),
                                c, acts[i], couple[i]))
    name = getattr(model, "default_cfg", {}).get("architecture", type(model).__name__) if hasattr(
        model, "default_cfg") else type(model).__name__
    return Analysis(name, segments, blocks, "imagenet" if not isinstance(model.maxpool, nn.Identity) else "small",
                    isinstance(getattr(model, "fc", None), nn.Linear))
