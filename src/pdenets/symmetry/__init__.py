"""Weight-space symmetry of the QL-ConvNets (Liu-Shao-Bai §4, DESIGN.md §3-§4).

* :func:`fold_bn` — the canonical eval form (every BatchNorm folded into its conv);
"""

from pdenets.symmetry.fold import fold_bn

__all__ = ["fold_bn"]
