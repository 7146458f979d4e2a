"""Exact width reduction of rank-deficient segments, gauge fixing, save/load, nuclear-prox (float64)."""

import pytest
import torch

from _helpers import randomize_bn
from pdenets.artifacts import load_artifact, save_artifact
from pdenets.models import create_model
from pdenets.symmetry.analyze import analyze
from pdenets.symmetry.compress import compress_widths, gauge_fix, n_params, segment_writers
from pdenets.symmetry.fold import fold_bn

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(act="softball", layers=(1, 2, 1)):
    torch.manual_seed(0)
    model = create_model("qlnet18_eq3p_small", layers=layers, widths=(6, 12, 24), num_classes=5, act=act)
    return randomize_bn(model).eval()


def _make_rank_deficient(folded, seg, r):
    """Project every writer of ``seg`` onto a random r-dimensional subspace (a structurally deficient model)."""
    a = analyze(folded)
    n = a.segments[seg].width
    u, _ = torch.linalg.qr(torch.randn(n, r, generator=torch.Generator().manual_seed(seg)))
    proj = u @ u.T
    p = dict(folded.named_parameters())
    with torch.no_grad():
        for w, b in segment_writers(a, seg):
            p[w].copy_(torch.einsum("ij,j...->i...", proj, p[w]))
            p[b].copy_(proj @ p[b])


def test_compress_exact_and_loadable(f64, tmp_path):
    model = _model()
    folded = fold_bn(model, share_kernels=True)
    _make_rank_deficient(folded, 1, 5)
    _make_rank_deficient(folded, 2, 9)
    x = torch.randn(3, 3, 8, 8)
    small, rows = compress_widths(folded)
    assert [r.rank for r in rows] == [6, 5, 9]
    # independent count of what must disappear: seg 1 (12 -> 5) loses rows of A (4·6 cols + bias) and of S
    # (6 cols + bias) in layer2.0, and columns of P, C (12 + 48 rows) and the rows/cols of the two-block stage
    n1 = 12 - 5
    removed1 = n1 * (24 + 1 + 6 + 1)                     # layer2.0 writers
    removed1 += n1 * (12 + 48) + n1 * (48 + 1)           # layer2.1 reads (P, C) and writes (A, b)
    removed1 += n1 * (12 + 48) + n1 * 24                 # layer3.0 reads (P, C, S)
    n2 = 24 - 9
    removed2 = n2 * (48 + 1 + 1) + n2 * 5 + n2 * 5 * 0   # layer3.0 A (4·12 cols), biases, S rows (now 5 cols)
    removed2 += n2 * 5                                    # fc columns
    assert rows[1].params_removed == removed1
    assert rows[2].params_removed == removed2
    assert n_params(folded) - n_params(small) == removed1 + removed2
    with torch.no_grad():
        y, ys = folded(x), small(x)
    assert (ys - y).abs().max() / y.abs().max() <= 1e-12
    # radius kept at its original value
    assert small.layer3[0].act.radius == model.layer3[0].act.radius
    path = tmp_path / "c.safetensors"
    save_artifact(small, path)
    loaded, meta = load_artifact(path)
    assert [e["op"] for e in meta["edits"]] == ["fold_bn", "compress_widths"]
    assert n_params(loaded) == n_params(small) and loaded.layer3[0].act.radius == model.layer3[0].act.radius
    with torch.no_grad():
        assert (loaded.double()(x) - y).abs().max() / y.abs().max() <= 1e-12
    # full-rank model: nothing to drop
    _, rows = compress_widths(fold_bn(model, share_kernels=True))
    assert all(r.params_removed == 0 for r in rows)


def test_gauge_fix_exact(f64, tmp_path):
    x = torch.randn(2, 3, 8, 8)
    # stage 2 (12 wide) is read first by layer2.1's P; stage 3 (24 wide) only by fc (5×24, keeps 15 entries)
    for act, expect in (("softball", [("layer2.1.conv_p", 12 * 11 // 2), ("fc", 5 * 24 - 15)]),
                        ("none", [("layer2.1.conv_p", 144), ("fc", 5 * 24 - 15)])):
        model = _model(act)
        folded = fold_bn(model, share_kernels=True)
        fixed, rows = gauge_fix(folded)
        assert [(r.matrix, r.params_removed) for r in rows] == expect
        assert n_params(folded) - n_params(fixed) == sum(e for _, e in expect)
        with torch.no_grad():
            y, yf = folded(x), fixed(x)
        assert (yf - y).abs().max() / y.abs().max() <= 1e-12
        path = tmp_path / f"g_{act}"
        save_artifact(fixed, path)
        loaded, _ = load_artifact(path)
        assert n_params(loaded) == n_params(fixed)
        with torch.no_grad():
            assert (loaded.double()(x) - y).abs().max() / y.abs().max() <= 1e-12


def test_nuclear_prox_hook_soft_thresholds_and_reduces_rank(f64):
    from pdenets.hooks import create_hook
    from pdenets.symmetry.compress import writer_matrix

    model = _model()
    sv0 = torch.linalg.svdvals(writer_matrix(fold_bn(model), analyze(fold_bn(model)), 2))
    tau = float(sv0[len(sv0) // 2])
    hook = create_hook(f"nuclear-prox:{tau / 0.1}")
    hook.after_step(model, lr=0.1)
    sv1 = torch.linalg.svdvals(writer_matrix(fold_bn(model), analyze(fold_bn(model)), 2))
    assert torch.allclose(sv1, (sv0 - tau).clamp_min(0), atol=1e-10)
    small, rows = compress_widths(fold_bn(model, share_kernels=True))
    assert rows[2].rank == int((sv0 > tau).sum()) < 24 and rows[2].params_removed > 0
