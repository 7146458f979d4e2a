"""CLI of `pdenets symmetry`, teleportation (same function, lower objective) and demo_summary."""

import warnings

import pytest
import torch

from _helpers import randomize_bn
from pdenets.cli import main
from pdenets.models.qlnet import QLNet
from pdenets.symmetry import demo_summary, fold_bn
from pdenets.symmetry.teleport import quant_output_error, quantize_rtn, stream_facing_l1, teleport

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cli_analyze(capsys):
    assert main(["symmetry", "analyze", "--model", "qlnet26_eq3p", "-m", "act=none"]) == 0
    out = capsys.readouterr().out
    assert "GL" in out and "Σ dim G" in out and str(128 * 128 + 256 * 256 + 512 * 512 + 64) in out
    assert main(["symmetry", "analyze", "--model", "no_such_model"]) == 2
    assert main(["symmetry", "analyze"]) == 2
    assert main(["symmetry", "compress", "--checkpoint", "/nonexistent/ckpt", "--out", "x.pth"]) == 2


def test_quantize_rtn_reference():
    w = torch.tensor([[0.7, -0.35, 0.1], [2.0, 1.0, -0.5]], dtype=torch.float64)
    # row 0: step 0.1 -> [0.7, -0.4 or -0.3 (round half to even: -3.5 -> -4), 0.1]; row 1: step 2/7
    q = quantize_rtn(w, 4)
    s1 = 2.0 / 7
    assert torch.allclose(q[0], torch.tensor([0.7, -0.4, 0.1], dtype=torch.float64))
    assert torch.allclose(q[1], torch.tensor([2.0, round(1.0 / s1) * s1, round(-0.5 / s1) * s1], dtype=torch.float64))


def test_teleport_same_function(f64):
    torch.manual_seed(0)
    m = randomize_bn(QLNet(block="eq3p", layers=(1, 1, 1), widths=(6, 12, 24), num_classes=5, stem="small",
                           act="softball")).eval()
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 5, (6,))
    with torch.no_grad():
        y0 = m(x)
    r = teleport(m, "l1", steps=20, lr=0.05)
    with torch.no_grad():
        assert (r.model(x) - y0).abs().max() / y0.abs().max() <= 1e-12
    assert stream_facing_l1(r.model) < 0.97 * stream_facing_l1(fold_bn(m))
    r = teleport(m, "quant4", steps=10, lr=0.05, inputs=x, score_every=5)
    assert quant_output_error(r.model, x)[0] <= quant_output_error(fold_bn(m), x)[0]
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        r = teleport(m, "gradnorm", steps=2, inputs=x, targets=y)
    assert r.skipped == [1, 2] and any("no-op" in str(i.message) for i in w)
    with pytest.raises(ValueError, match="objective"):
        teleport(m, "nope")


def test_demo_summary():
    torch.manual_seed(0)
    m = randomize_bn(QLNet(block="eq3p", layers=(1, 1, 1), widths=(6, 12, 24), num_classes=5, stem="small")).eval()
    text = demo_summary(m, torch.randn(4, 3, 8, 8))
    assert "Σ dim G" in text and "power check" in text and "positive_monomial" in text
