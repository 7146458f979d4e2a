"""Compression with the symmetry: exact width reduction, gauge fixing, and a lossy PCA fallback.

**Width reduction (lossless).** In a segment whose group contains O (or GL), everything written into the
stream is a linear combination of the columns of the stacked *writer matrix*
``M = [A₁ b₁ | S b_S | A₂ b₂ | ...]`` (the folded 1×1 maps and biases that write the segment; the radial
activations only rescale vectors, which keeps them in the span). If M has numerical rank r < n (SVD in
float64), the stream lives in the span of the first r left singular vectors U_r: writers become U_rᵀ A,
readers W U_r, the classifier W U_r, and the segment has r channels. The radius R of hardball/softball is kept
at its original value: |U_r z| = |z|. Segments are processed in order, so a reduction cascades into the
readers of the next stage. Segments bounded by the stem's ReLU or read channel by channel (monomial groups)
are not rotated.

**Gauge fixing.** The group also lets one fix one matrix per segment: with T = Qᵀ from an LQ decomposition,
the first gauge-fixable reader P (declared ``Touch('read', gauge=True)``: the first ``eq3p`` block's P reading the
segment, else the classifier) becomes lower
trapezoidal, P T⁻¹ = L, removing the k·n − (entries of L) parameters above the diagonal (n(n−1)/2 for a square
P); for a GL segment with a square invertible P, T = P turns it into the identity (n² parameters removed).

**Lossy fallback** (clearly *lossy*): PCA of the stream on calibration data, one orthonormal U per segment
(SliceGPT-style), keeping a chosen width; :func:`pca_curve` reports agreement against the kept width.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from pdenets.artifacts import add_edit
from pdenets.layers.stream import Touch
from pdenets.symmetry.analyze import Analysis, Segment, analyze
from pdenets.symmetry.fold import fold_bn, is_folded
from pdenets.symmetry.transform import GroupElement, load_params, transformed_params

__all__ = ["Trapezoid1x1", "compress_widths", "gauge_fix", "pca_compress", "pca_curve", "rotatable",
           "segment_writers", "sync_stream_widths", "writer_matrix"]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _writer_touches(analysis: Analysis, seg: int) -> list[tuple[str, Touch]]:
    """(prefix, touch) of the 1×1 maps that write segment ``seg``: the network's (stem), then the blocks' in
    order. A block that also writes the segment channel by channel (Eq. (4)'s product, Eq. (5)'s sum)
    contributes none: such a segment has a monomial group and no writer matrix to compress."""
    out = [("", t) for t in analysis.model_touches(seg, "write")]
    for b in analysis.blocks:
        if b.seg_out == seg and not b.touches("write_channelwise"):
            out += [(b.name, t) for t in b.touches("write")]
    return out


def _readers(analysis: Analysis, seg: int) -> list[str]:
    """Paths of the 1×1 maps that read segment ``seg`` (blocks in order, then the network's: the classifier)."""
    out = [f"{b.name}.{t.module}" for b in analysis.blocks if b.seg_in == seg for t in b.touches("read")]
    return out + [t.module for t in analysis.model_touches(seg, "read")]


def rotatable(analysis: Analysis, seg: int) -> bool:
    """Whether segment ``seg`` may be rotated (GL or O: every reader and writer is a 1×1 map)."""
    s = analysis.segments[seg]
    return s.compressible and all(b.spec.linear for b in analysis.blocks if seg in (b.seg_in, b.seg_out))


def segment_writers(analysis: Analysis, seg: int, bn_names: bool = False) -> list[tuple[str, str | None]]:
    """(weight name, bias name) of the 1×1 maps that write segment ``seg`` (folded names, or the unfolded
    (weight, BN) names with ``bn_names=True``), as the blocks declare them (``Touch(role='write')``)."""
    join = lambda prefix, name: f"{prefix}.{name}" if prefix and name else name  # noqa: E731
    return [(join(prefix, t.module) + ".weight", join(prefix, t.bn if bn_names else t.bias))
            for prefix, t in _writer_touches(analysis, seg)]


def writer_matrix(model: nn.Module, analysis: Analysis, seg: int) -> torch.Tensor:
    """The stacked writer matrix [A₁ b₁ | S b_S | ...] of segment ``seg`` of a folded model (float64)."""
    p = dict(model.named_parameters())
    cols = []
    for w, b in segment_writers(analysis, seg):
        cols.append(p[w].detach().double().reshape(p[w].shape[0], -1))
        if b is not None:
            cols.append(p[b].detach().double().reshape(-1, 1))
    return torch.cat(cols, 1)


def _basis_change(model: nn.Module, analysis: Analysis, seg: int, u: torch.Tensor) -> dict[str, torch.Tensor]:
    """New tensors for the stream of ``seg`` expressed in the orthonormal columns of u (n × r)."""
    if not rotatable(analysis, seg):
        raise ValueError(f"segment {seg} is read or written channel by channel: cannot rotate it")
    p = dict(model.named_parameters())
    dt = next(iter(p.values())).dtype
    u = u.to(dt)
    new: dict[str, torch.Tensor] = {}

    def left(name: str) -> None:  # writer: rows → Uᵀ rows
        w = new.get(name, p[name].detach())
        new[name] = torch.einsum("ir,i...->r...", u, w)

    def right(name: str) -> None:  # reader: columns → columns U
        w = new.get(name, p[name].detach())
        new[name] = torch.einsum("ki...,ir->kr...", w, u)

    for w, b in segment_writers(analysis, seg):
        left(w)
        if b is not None:
            left(b)
    for path in _readers(analysis, seg):
        if f"{path}.weight" in p:  # a gauge-fixed reader (no plain weight) is left alone
            right(f"{path}.weight")
    return new


def sync_stream_widths(model: nn.Module, analysis: Analysis | None = None) -> nn.Module:
    """Make the timm attributes that state stream widths follow the tensors after a width change (in place).

    Each ``feature_info`` entry whose module ends a segment (a block, or the stage that holds it) gets that
    segment's width as ``num_chs``; ``num_features`` and ``head_hidden_size`` (what ``forward_head`` and
    ``reset_classifier`` read) get the width of the last segment; a ``widths`` tuple with one entry per segment
    gets the segment widths. Without this a compressed model would keep its uncompressed widths there, and
    ``reset_classifier`` would build a classifier of the wrong size. Returns ``model``.
    """
    a = analysis or analyze(model)
    widths = [s.width for s in a.segments]
    ends: dict[str, int] = {}
    for b in a.blocks:  # in order: the last block of a stage names the stage's output width
        ends[b.name] = b.seg_out
        if "." in b.name:
            ends[b.name.rpartition(".")[0]] = b.seg_out
    info = getattr(model, "feature_info", None)
    if isinstance(info, list):
        model.feature_info = [dict(f, num_chs=widths[ends[f["module"]]]) if f.get("module") in ends else dict(f)
                              for f in info]
    last = a.blocks[-1].seg_out if a.blocks else len(widths) - 1
    for attr in ("num_features", "head_hidden_size"):
        if isinstance(getattr(model, attr, None), int):
            setattr(model, attr, widths[last])
    if isinstance(getattr(model, "widths", None), (tuple, list)) and len(model.widths) == len(widths):
        model.widths = tuple(widths)
    return model


@dataclass
class SegmentCompression:
    index: int
    width: int
    rank: int
    sigma_max: float
    sigma_dropped: float
    params_removed: int
    sigma_kept_min: float = float("nan")
    note: str = ""


def compress_widths(model: nn.Module, rtol: float = 1e-6) -> tuple[nn.Module, list[SegmentCompression]]:
    """Exact width reduction of every rotatable segment whose writer matrix has numerical rank r < n.

    ``rtol``: singular values ≤ rtol·σ_max count as zero (in float64). Returns the compressed folded model
    (shared-kernel form; ``feature_info``, ``num_features`` and ``widths`` follow the new widths,
    :func:`sync_stream_widths`) and one row per segment.
    """
    folded = model if is_folded(model) else fold_bn(model, share_kernels=True)
    folded = copy.deepcopy(folded).eval()
    rows = []
    analysis = analyze(folded)
    for seg in analysis.segments:
        if seg.index == 0 or not rotatable(analysis, seg.index):
            rows.append(SegmentCompression(seg.index, seg.width, seg.width, float("nan"), float("nan"), 0,
                                           note=f"not rotatable ({seg.group})"))
            continue
        m = writer_matrix(folded, analysis, seg.index)
        u, s, _ = torch.linalg.svd(m, full_matrices=False)
        r = int((s > rtol * s[0]).sum()) if s[0] > 0 else 0
        r = max(r, 1)
        dropped = float(s[r]) if r < s.numel() else 0.0
        if r >= seg.width:
            rows.append(SegmentCompression(seg.index, seg.width, seg.width, float(s[0]), 0.0, 0, note="full rank"))
            continue
        before = n_params(folded)
        folded = load_params(folded, _basis_change(folded, analysis, seg.index, u[:, :r]))
        analysis = analyze(folded)
        rows.append(SegmentCompression(seg.index, seg.width, r, float(s[0]), dropped, before - n_params(folded),
                                       sigma_kept_min=float(s[r - 1])))
    sync_stream_widths(folded, analysis)
    add_edit(folded, "compress_widths", rtol=rtol, widths={r.index: [r.width, r.rank] for r in rows})
    return folded, rows


class Trapezoid1x1(nn.Module):
    """A 1×1 conv (``kind='conv'``) or linear map whose k×n weight is lower trapezoidal (W[i, j] = 0 for
    j > i): only the entries on or below the diagonal are stored (gauge-fixed reader)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, kind: str = "conv") -> None:
        super().__init__()
        k, n = weight.shape
        mask = torch.ones(k, n, dtype=torch.bool).tril()
        self.register_buffer("index", mask.flatten().nonzero().squeeze(1), persistent=False)
        self.k, self.n, self.kind = k, n, kind
        self.values = nn.Parameter(weight.detach().flatten()[self.index].clone())
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    def artifact_config(self) -> dict:
        """Shapes and settings to rebuild this module from an artifact (:mod:`pdenets.artifacts`)."""
        return dict(k=self.k, n=self.n, kind=self.kind, bias=self.bias is not None)

    @classmethod
    def from_artifact_config(cls, c: dict) -> Trapezoid1x1:
        return cls(torch.zeros(c["k"], c["n"]), torch.zeros(c["k"]) if c["bias"] else None, c["kind"])

    @staticmethod
    def stored(k: int, n: int) -> int:
        return int(torch.ones(k, n).tril().sum())

    def full_weight(self) -> torch.Tensor:
        w = self.values.new_zeros(self.k * self.n).index_copy(0, self.index, self.values)
        return w.view(self.k, self.n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.full_weight()
        if self.kind == "conv":
            return F.conv2d(x, w[:, :, None, None], self.bias)
        return F.linear(x, w, self.bias)

    def extra_repr(self) -> str:
        return f"{self.n}, {self.k}, kind={self.kind!r}, stored={self.values.numel()}"


@dataclass
class GaugeRow:
    index: int
    group: str
    matrix: str
    form: str
    params_removed: int


def _gauge_target(model: nn.Module, analysis: Analysis, seg: int) -> str | None:
    """The first gauge-fixable reader of ``seg`` (``Touch(role='read', gauge=True)``) that is still a plain map:
    the blocks' in order (``eq3p``'s P), then the network's (the classifier)."""
    paths = [f"{b.name}.{t.module}" for b in analysis.blocks if b.seg_in == seg
             for t in b.touches("read") if t.gauge]
    paths += [t.module for t in analysis.model_touches(seg, "read") if t.gauge]
    for path in paths:
        if isinstance(model.get_submodule(path), (nn.Conv2d, nn.Linear)):
            return path
    return None


def _fix_reader(model: nn.Module, analysis: Analysis, seg: Segment, name: str) -> tuple[nn.Module, GaugeRow]:
    """Make reader ``name`` of ``seg`` lower trapezoidal (or the identity) by a group element."""
    w = model.get_submodule(name).weight
    p = w.detach().double().reshape(w.shape[0], w.shape[1])
    k, n = p.shape
    mod = model.get_submodule(name)
    if seg.group == "GL" and isinstance(mod, nn.Conv2d) and mod.bias is None and k == n \
            and torch.linalg.matrix_rank(p) == n:
        t, form = p, "identity"  # P T⁻¹ = I
    else:
        q, _ = torch.linalg.qr(p.T, mode="complete")  # Pᵀ = Q R  ⇒  P Q = Rᵀ lower trapezoidal
        t, form = q.T, "lower trapezoidal"
    el = GroupElement([t if i == seg.index else None for i in range(len(analysis.segments))])
    model = load_params(model, transformed_params(model, analysis, el, strict=True))
    mod = model.get_submodule(name)
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if form == "identity":
        setattr(parent, attr, nn.Identity())
        return model, GaugeRow(seg.index, seg.group, name, form, k * n)
    linear = isinstance(mod, nn.Linear)
    setattr(parent, attr, Trapezoid1x1(mod.weight.detach().reshape(k, n), mod.bias if linear else None,
                                      "linear" if linear else "conv"))
    return model, GaugeRow(seg.index, seg.group, name, form, k * n - Trapezoid1x1.stored(k, n))


def gauge_fix(model: nn.Module) -> tuple[nn.Module, list[GaugeRow]]:
    """Fix the gauge of every GL/O segment (see module docstring). Returns the new model and what it removed."""
    folded = model if is_folded(model) else fold_bn(model, share_kernels=True)
    folded = copy.deepcopy(folded).eval()
    analysis = analyze(folded)
    rows = []
    for seg in analysis.segments:
        name = _gauge_target(folded, analysis, seg.index) if seg.compressible else None
        if name is not None:
            folded, row = _fix_reader(folded, analysis, seg, name)
            rows.append(row)
    add_edit(folded, "gauge_fix", layers={g.matrix: g.form for g in rows})
    return folded, rows


# ---- lossy: PCA of the stream ------------------------------------------------------------------------------


@torch.no_grad()
def stream_covariance(model: nn.Module, analysis: Analysis, inputs: torch.Tensor) -> list[torch.Tensor | None]:
    """Uncentred second moment Σ x xᵀ of the stream vectors of each rotatable segment (block outputs)."""
    covs: list[torch.Tensor | None] = [None] * len(analysis.segments)
    hooks = []
    mods = dict(model.named_modules())
    for b in analysis.blocks:
        seg = analysis.segments[b.seg_out]
        if seg.index == 0 or not seg.compressible:
            continue

        def hook(_m, _a, out, i=seg.index):
            z = out.detach().double().transpose(0, 1).reshape(out.shape[1], -1)
            c = z @ z.T
            covs[i] = c if covs[i] is None else covs[i] + c

        hooks.append(mods[b.name].register_forward_hook(hook))
    try:
        model(inputs)
    finally:
        for h in hooks:
            h.remove()
    return covs


def pca_compress(model: nn.Module, inputs: torch.Tensor, keep: float) -> nn.Module:
    """LOSSY: keep the top ``keep`` fraction of principal directions of every rotatable segment (calibrated on
    ``inputs``) and drop the rest. The function changes; measure it (:func:`pca_curve`)."""
    folded = model if is_folded(model) else fold_bn(model, share_kernels=True)
    folded = copy.deepcopy(folded).eval()
    analysis = analyze(folded)
    covs = stream_covariance(folded, analysis, inputs.to(next(folded.parameters()).dtype))
    for seg in analysis.segments:
        c = covs[seg.index]
        if c is None or not rotatable(analysis, seg.index):
            continue
        evals, evecs = torch.linalg.eigh(c)
        r = max(1, round(keep * seg.width))
        u = evecs[:, evals.argsort(descending=True)[:r]]
        folded = load_params(folded, _basis_change(folded, analysis, seg.index, u))
        analysis = analyze(folded)
    return sync_stream_widths(folded, analysis)


@torch.no_grad()
def pca_curve(model: nn.Module, calib: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor | None = None,
              keeps: tuple[float, ...] = (1.0, 0.75, 0.5, 0.375, 0.25, 0.125)) -> list[dict[str, float]]:
    """LOSSY PCA fallback: for each kept fraction, parameters, top-1 agreement with the original model and
    (with ``targets``) accuracy."""
    model = model.eval()
    ref = model(inputs).argmax(1)
    out = []
    for k in keeps:
        m = pca_compress(model, calib, k)
        pred = m(inputs.to(next(m.parameters()).dtype)).argmax(1)
        row = {"keep": k, "params": n_params(m), "agreement": (pred == ref).double().mean().item()}
        if targets is not None:
            row["accuracy"] = (pred == targets).double().mean().item()
        out.append(row)
    return out
