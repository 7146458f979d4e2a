"""How a network touches its residual stream: the declarations the symmetry code iterates over.

A change of basis u → T u of one residual-stream *segment* (Liu-Shao-Bai §4; docs/design.md §3) changes the
weights of exactly the modules that read or write that segment. Each block declares them
(:meth:`pdenets.layers.ql_blocks.QLBlock.stream_spec`, a :class:`BlockSpec`), and the network declares its stage
structure, stem, final activation and classifier (``QLNet.stream_spec()``, a :class:`StreamSpec`).
:mod:`pdenets.symmetry` (``analyze``, ``fold_bn``, ``transform``, ``compress_widths``, ``gauge_fix``, the
``nuclear-prox`` hook) only iterates over these declarations, so a new block needs no change there.

The four roles of a :class:`Touch` (module paths are relative to the block, or to the model at network level):

* ``read`` — a 1×1 map (conv or linear) reads the stream linearly: W → W T⁻¹ (no constraint on T);
* ``write`` — a 1×1 map writes the stream (its output is added to it): A → T A, its bias b → T b;
* ``read_channelwise`` — the stream is read channel by channel (a depthwise conv on the raw stream, an
  elementwise product with it): T must be **monomial**, T[σ(j), j] = λ_j. The touch's :class:`Channels` says
  which internal channels follow stream channel j, and which modules those internal channels pass through;
* ``write_channelwise`` — the stream is written channel by channel (an elementwise product in the stream
  channels, a fixed sum onto them): again monomial T on the segment written.

An internal channel space shared by a ``read_channelwise`` and a ``write_channelwise`` touch (same
``Channels.space``) ties the permutation of the segment written to the one of the segment read (Eq. (5)'s
fixed sum: a *lifted* permutation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

__all__ = ["MONO", "ORTH", "POS", "BNFold", "BlockSpec", "Channels", "Role", "SegmentBound", "StreamBlock",
           "StreamSpec", "Touch", "lift_permutation"]

Role = Literal["read", "read_channelwise", "write", "write_channelwise"]
ROLES = ("read", "read_channelwise", "write", "write_channelwise")

# Constraints on T (their intersections are the groups of pdenets.symmetry.groups).
MONO, ORTH, POS = "mono", "orth", "pos"


@dataclass(frozen=True)
class Channels:
    """An internal channel space that follows the stream channel by channel.

    Internal channel c belongs to stream channel ``c // fan`` (``layout='grouped'``: the fan channels of one
    stream channel are consecutive) or ``c % n`` (``layout='tiled'``: the stream repeated ``fan`` times). Under
    a monomial T (T[σ(j), j] = λ_j) the internal channels of j move to those of σ(j), in the same order
    (:func:`lift_permutation`), and:

    * ``kernels`` — depthwise modules producing these channels from the stream (or from a space transforming
      like it): their kernels are divided by λ_j (so D(T u) keeps its values), channels moved;
    * ``rows`` — 1×1 maps whose output channels are these channels: rows moved;
    * ``div_rows`` — like ``rows``, and divided by λ_j as well (a factor that takes the scale back out of a
      product u ⊙ (Q u) when no depthwise kernel follows);
    * ``cols`` — 1×1 maps whose input channels are these channels: columns moved;
    * ``scale_rows`` — (``write_channelwise``) factors of a product whose rows take the scale λ_i of the
      stream channel i they end up in.
    """

    space: str
    fan: int = 1
    layout: Literal["grouped", "tiled"] = "grouped"
    kernels: tuple[str, ...] = ()
    rows: tuple[str, ...] = ()
    div_rows: tuple[str, ...] = ()
    cols: tuple[str, ...] = ()
    scale_rows: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.layout not in ("grouped", "tiled") or self.fan < 1:
            raise ValueError(f"Channels: layout must be 'grouped' or 'tiled' and fan ≥ 1, got {self!r}")

    def source(self, n: int) -> torch.Tensor:
        """Stream channel of each of the ``fan·n`` internal channels (n stream channels)."""
        c = torch.arange(n * self.fan)
        return c // self.fan if self.layout == "grouped" else c % n


@dataclass(frozen=True)
class Touch:
    """One way a block (or the network) touches the residual stream.

    Args:
        module: path of the module (relative to the block / model); for channelwise touches that are not a
            module (a product, a fixed sum) a descriptive name.
        role: ``'read'``, ``'read_channelwise'``, ``'write'`` or ``'write_channelwise'`` (module docstring).
        bias: ``write``: path of the bias *parameter* that the writer adds in the folded model
            (``'conv_a.bias'``; Eq. (4): ``'bn_a.bias'``, the shift kept after the product).
        bn: ``write``: the BatchNorm after the writer in the unfolded model (the ``nuclear-prox`` hook works
            on the folded form s ⊙ A, β − s ⊙ μ).
        gauge: ``read``: a reader the gauge fixing may replace by a lower-trapezoidal map (the block calls it
            as a black box).
        channels: the internal channel space of a channelwise touch.
        reason: what it does, for the analysis table (channelwise touches).
    """

    module: str
    role: Role
    bias: str | None = None
    bn: str | None = None
    gauge: bool = False
    channels: Channels | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"Touch role must be one of {', '.join(ROLES)}, got {self.role!r}")
        if self.channelwise and self.channels is None:
            raise ValueError(f"Touch {self.module!r}: a {self.role} touch needs its Channels")

    @property
    def channelwise(self) -> bool:
        return self.role.endswith("_channelwise")

    @property
    def reads(self) -> bool:
        return self.role.startswith("read")

    @property
    def constraints(self) -> frozenset[str]:
        """What the touch forces on T: monomial for channelwise touches, nothing (GL) for 1×1 maps."""
        return frozenset({MONO}) if self.channelwise else frozenset()


@dataclass(frozen=True)
class BNFold:
    """How a BatchNorm folds into its conv in eval mode (:func:`pdenets.symmetry.fold.fold_bn`).

    ``kind``: ``'conv'`` — scale into the rows, shift into the conv's bias; ``'depthwise'`` — a derivative conv
    becomes a ``FoldedDepthwise``; ``'product'`` — the BN follows a product (conv output) ⊙ (…): scale into the
    conv's rows, shift kept as a ``ChannelBias`` in place of the BN (Eq. (4)).
    """

    conv: str
    bn: str
    kind: Literal["conv", "depthwise", "product"] = "conv"


@dataclass(frozen=True)
class BlockSpec:
    """The declaration of one residual block: its touches, BN folds, and activations on the segment written."""

    touches: tuple[Touch, ...]
    folds: tuple[BNFold, ...] = ()
    acts: tuple[str, ...] = ()
    label: str = ""

    @property
    def linear(self) -> bool:
        """Reads and writes the stream only through 1×1 maps (no constraint on T)."""
        return not any(t.channelwise for t in self.touches)

    def coupled(self) -> bool:
        """A channel space read and written channel by channel: the written permutation is lifted."""
        rd = {t.channels.space for t in self.touches if t.role == "read_channelwise"}
        return any(t.channels.space in rd for t in self.touches if t.role == "write_channelwise")


@dataclass(frozen=True)
class StreamBlock:
    """A block of the network: its path, the segment it reads and the segment it writes."""

    path: str
    seg_in: int
    seg_out: int


@dataclass(frozen=True)
class SegmentBound:
    """A constraint on a segment from outside the blocks (the stem's ReLU + max-pool)."""

    segment: int
    constraints: frozenset[str]
    reason: str


@dataclass(frozen=True)
class StreamSpec:
    """The declaration of a network's residual stream.

    ``segments``: segment names in order; ``blocks``: every residual block (reading/writing segments);
    ``touches``: network-level ``(segment, Touch)`` (the stem writes segment 0, the classifier reads the last);
    ``acts``: ``(segment, module, label)`` of activations outside the blocks (the final one);
    ``bounds``: other constraints; ``folds``: network-level BN folds (the stem); ``stem``: a label.
    """

    segments: tuple[str, ...]
    blocks: tuple[StreamBlock, ...]
    touches: tuple[tuple[int, Touch], ...] = ()
    acts: tuple[tuple[int, str, str], ...] = ()
    bounds: tuple[SegmentBound, ...] = ()
    folds: tuple[BNFold, ...] = ()
    stem: str = ""


def lift_permutation(src: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """ρ with ρ[c] = the k-th internal channel of stream channel σ(src[c]), k the rank of c among those of
    src[c]: where internal channel c goes when the stream is permuted by ``perm`` (σ)."""
    n = perm.numel()
    table = torch.argsort(src, stable=True).view(n, -1)  # table[j, k]: k-th internal channel of stream j
    rank = torch.empty_like(src)
    rank[table.flatten()] = torch.arange(table.shape[1]).repeat(n)
    return table[perm[src], rank]
