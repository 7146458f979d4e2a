"""Weight-space symmetry of the QL-ConvNets (Liu-Shao-Bai §4, docs/design.md §3-§4).

* :func:`fold_bn` — the canonical eval form (every BatchNorm folded into its conv);
* :func:`analyze` — the exact group of every residual-stream segment;
* :func:`random_element`, :func:`transform`, :func:`verify` — group elements, the weights they give, checks;
* :func:`teleport` — move along the orbit (L1, 4-bit quantisation, gradient norm);
* :func:`compress_widths`, :func:`gauge_fix`, ``nuclear-prox`` hook — lossless compression;
* :func:`demo_summary` — the per-segment tables for ``pdenets demo``.
"""

from pdenets.symmetry.analyze import Analysis, Segment, analyze
from pdenets.symmetry.compress import compress_widths, gauge_fix
from pdenets.symmetry.fold import fold_bn
from pdenets.symmetry.report import demo_summary
from pdenets.symmetry.teleport import teleport
from pdenets.symmetry.transform import GroupElement, random_element, transform
from pdenets.symmetry.verify import verify

__all__ = ["Analysis", "GroupElement", "Segment", "analyze", "compress_widths", "demo_summary", "fold_bn",
           "gauge_fix", "random_element", "teleport", "transform", "verify"]
