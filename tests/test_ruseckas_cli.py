"""`pdenets ruseckas`: a tiny circles run writes its metrics and figures; bad input is one line, exit 2."""

import json

import torch

from pdenets.analysis import ruseckas_figures as figs
from pdenets.cli import main
from pdenets.models.ruseckas import OdeConvNet


def test_circles_cli_smoke(tmp_path, capsys):
    rc = main(["ruseckas", "circles", "--model", "r3", "--epochs", "3", "--out", str(tmp_path)])
    assert rc == 0
    m = json.loads((tmp_path / "metrics.json").read_text())["ruseckas_circles_r3"]
    assert m["params"] == 240 and 0 <= m["test_acc"] <= 1 and 0 <= m["val_acc"] <= 1  # the test split, 100 points
    assert m["steps"] == 3 and (tmp_path / "runs" / "ruseckas_circles_r3" / "summary.json").is_file()
    for f in ("circles_data", "ruseckas_circles_r3_transformed", "ruseckas_circles_r3_trajectories",
              "ruseckas_circles_r3_parameters", "ruseckas_circles_r3_history"):
        assert (tmp_path / f"{f}.png").stat().st_size > 1000


def test_conv_figures(tmp_path):
    m = OdeConvNet(in_chans=1, channels=4, depth=3, num_classes=3, gamma=0.01)
    figs.plot_conv_parameters(m, tmp_path / "p.png")
    figs.plot_conv_activations(m, torch.rand(1, 8, 8), tmp_path / "a.png", label=0)
    assert (tmp_path / "p.png").exists() and (tmp_path / "a.png").exists()


def test_usage_errors(tmp_path, capsys):
    assert main(["ruseckas", "circles", "--epochs", "0", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--epochs" in err and "positive integer" in err
    assert main(["ruseckas", "digits", "--data-dir", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert "MNIST" in capsys.readouterr().err
