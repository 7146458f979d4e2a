"""Group analysis of a residual network: for every residual-stream segment, its width and its exact group.

A *segment* is the stretch of the residual stream that one change of basis T acts on. Identity skips carry
the basis unchanged from block to block, so a segment is a whole stage: it starts at the stem (stage 1) or at
the stride-2 block whose learned 1×1 skip S writes it (T_next S T⁻¹), and it ends where the next stride-2
block reads it (or at the classifier, W T⁻¹, after the final activation and the average pooling, which
commutes with T). With ``act_placement='all'`` the activations at every block end lie *inside* the
segment: an identity skip around an activation forces the same T on both sides, so they constrain the
segment's group instead of starting new segments.

Nothing here knows a block or a layer name: the model declares its segments, stem, final activation and
classifier (``model.stream_spec()``, :class:`~pdenets.layers.stream.StreamSpec`) and every block how it touches
the stream (``block.stream_spec()``, :class:`~pdenets.layers.stream.BlockSpec`). The group is the intersection
of the constraints of everything that touches the segment (:mod:`pdenets.symmetry.groups`, docs/design.md §3):

* network-level bounds (the stem's ReLU + max-pool on stage 1: permutation × positive diagonal);
* every activation applied to the segment's channels: radial → O, hardtanh → signed permutations,
  ReLU → positive monomial, none → GL;
* 1×1 readers and writers (``eq3p``'s P, C, A; the skip S; the classifier) → nothing (GL);
* channelwise readers (Eqs. 3-5's depthwise D on the raw stream, the products u ⊙ C u of Eqs. 6-7) →
  monomial on the segment read; channelwise writers (Eq. (4)'s product, Eq. (5)'s fixed sum) → monomial on
  the segment written. A block whose internal channels are both read and written channel by channel (Eq. (5))
  ties the permutation of the segment it writes to the one it reads (``coupled_from``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from pdenets.layers.stream import MONO, POS, BlockSpec, StreamSpec, Touch
from pdenets.symmetry.groups import ACT_CONSTRAINTS, group_dim, group_name

__all__ = ["Analysis", "BlockInfo", "Segment", "analyze", "stream_spec"]


@dataclass
class BlockInfo:
    name: str
    equation: str
    seg_in: int
    seg_out: int
    has_skip_conv: bool
    spec: BlockSpec = field(default_factory=lambda: BlockSpec(()))

    def touches(self, role: str) -> list[Touch]:
        return [t for t in self.spec.touches if t.role == role]


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
    fixed: list[str] = field(default_factory=list)  # gauge-fixed readers: only the stabiliser is left

    @property
    def compressible(self) -> bool:
        """Readers and writers are all linear maps and T may rotate (GL or O): width reduction applies."""
        return MONO not in self.constraints and POS not in self.constraints


@dataclass
class Analysis:
    model_name: str
    segments: list[Segment]
    blocks: list[BlockInfo]
    stem: str
    has_fc: bool
    spec: StreamSpec | None = None

    @property
    def total_dim(self) -> int:
        return sum(s.dim for s in self.segments)

    def model_touches(self, seg: int, role: str) -> list[Touch]:
        """Network-level touches (stem, classifier) of segment ``seg`` with ``role``."""
        return [t for i, t in (self.spec.touches if self.spec else ()) if i == seg and t.role == role]

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


def stream_spec(model: nn.Module) -> StreamSpec:
    """The model's declaration of its residual stream (``model.stream_spec()``), or a ``ValueError``."""
    fn = getattr(model, "stream_spec", None)
    if not callable(fn):
        raise ValueError(f"analyze expects a model that declares its residual stream (a stream_spec() method, "
                         f"e.g. a pdenets QLNet), got {type(model).__name__}")
    return fn()


def _weight(model: nn.Module, path: str) -> torch.Tensor | None:
    w = getattr(model.get_submodule(path), "weight", None) if path else None
    return w if isinstance(w, torch.Tensor) else None


def _segment_width(model: nn.Module, a: Analysis, seg: int) -> int:
    """Rows of the first 1×1 writer of the segment (they change under compression), else the block's o."""
    for t in a.model_touches(seg, "write"):
        if (w := _weight(model, t.module)) is not None:
            return w.shape[0]
    for b in a.blocks:
        if b.seg_out == seg:
            for t in b.touches("write"):
                if (w := _weight(model, f"{b.name}.{t.module}")) is not None:
                    return w.shape[0]
            return int(model.get_submodule(b.name).out_chs)
    raise ValueError(f"segment {seg} has no writer")


def _block_infos(model: nn.Module, spec: StreamSpec) -> list[BlockInfo]:
    out = []
    for sb in spec.blocks:
        blk = model.get_submodule(sb.path)
        if not callable(getattr(blk, "stream_spec", None)):
            raise ValueError(f"{sb.path} is not a QL block ({type(blk).__name__}): it declares no stream_spec()")
        bs = blk.stream_spec()
        label = bs.label or getattr(blk, "equation", "") or type(blk).__name__
        out.append(BlockInfo(sb.path, label, sb.seg_in, sb.seg_out, getattr(blk, "downsample", None) is not None,
                             bs))
    return out


def _constraints(model: nn.Module, a: Analysis) -> tuple[list[set[str]], list[list[str]], list[list[str]],
                                                         list[int | None]]:
    """Per segment: constraints, reasons, activations, and the segment its permutation is lifted from."""
    n = len(a.spec.segments)
    cons: list[set[str]] = [set() for _ in range(n)]
    why: list[list[str]] = [[] for _ in range(n)]
    acts: list[list[str]] = [[] for _ in range(n)]
    couple: list[int | None] = [None] * n
    for bd in a.spec.bounds:
        cons[bd.segment] |= bd.constraints
        why[bd.segment].append(bd.reason)
    for b in a.blocks:
        for t in b.spec.touches:
            seg = b.seg_in if t.reads else b.seg_out
            cons[seg] |= t.constraints
            if t.channelwise and t.reason:
                why[seg].append(f"{b.equation}: {t.reason}")
        if b.spec.coupled() and b.seg_in != b.seg_out:
            couple[b.seg_out] = b.seg_in
        for act in b.spec.acts:
            if (k := _act_name(model.get_submodule(f"{b.name}.{act}"))) != "none":
                cons[b.seg_out] |= ACT_CONSTRAINTS[k]
                acts[b.seg_out].append(f"{k}@{b.name}")
    for seg, path, label in a.spec.acts:
        if (k := _act_name(model.get_submodule(path))) != "none":
            cons[seg] |= ACT_CONSTRAINTS[k]
            acts[seg].append(f"{k}@{label}")
    return cons, why, acts, couple


def _gauge_fixed(model: nn.Module, a: Analysis, seg: int) -> list[str]:
    """Gauge-fixable readers of ``seg`` that were already replaced (no plain weight left)."""
    paths = [f"{b.name}.{t.module}" for b in a.blocks if b.seg_in == seg for t in b.touches("read") if t.gauge]
    paths += [t.module for t in a.model_touches(seg, "read") if t.gauge]
    return [p for p in paths if _weight(model, p) is None]


def _reason(a: Analysis, i: int, why: list[str], acts: list[str], couple: int | None, fixed: list[str]) -> str:
    reasons = list(dict.fromkeys(why))
    if acts:
        kinds = sorted({x.split("@")[0] for x in acts})
        reasons.append(f"{'/'.join(kinds)} ×{len(acts)}")
    else:
        reasons.append("no activation (identity)" if i > 0 else "")
    linear = sorted({b.equation for b in a.blocks if i in (b.seg_in, b.seg_out) and b.spec.linear})
    if linear:
        reasons.append(f"{'/'.join(linear)} read/write it via 1×1 maps")
    if couple is not None:
        reasons.append(f"permutation lifted from seg {couple}")
    if fixed:
        reasons.append(f"gauge already fixed at {fixed[0]} (only its stabiliser is left)")
    return "; ".join(r for r in reasons if r)


def analyze(model: nn.Module) -> Analysis:
    """Per-segment group analysis of a model that declares its stream (:class:`~pdenets.models.qlnet.QLNet`,
    folded or not)."""
    spec = stream_spec(model)
    name = getattr(model, "default_cfg", {}).get("architecture", type(model).__name__) if hasattr(
        model, "default_cfg") else type(model).__name__
    a = Analysis(name, [], _block_infos(model, spec), spec.stem, False, spec)
    last = len(spec.segments) - 1
    a.has_fc = any(isinstance(model.get_submodule(t.module), nn.Linear) for t in a.model_touches(last, "read"))
    cons, why, acts, couple = _constraints(model, a)
    for i, seg_name in enumerate(spec.segments):
        c = frozenset(cons[i])
        g = group_name(c)
        w = _segment_width(model, a, i)
        fixed = _gauge_fixed(model, a, i)
        reason = _reason(a, i, why[i], acts[i], couple[i], fixed)
        dim = 0 if fixed else group_dim(g, w)  # the stabiliser of a fixed gauge is discrete
        a.segments.append(Segment(i, seg_name, w, g, dim, reason, c, acts[i], couple[i], fixed))
    return a
