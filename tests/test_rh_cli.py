"""`pdenets rh ...`: the experiments run end to end on a tiny budget and reject bad input."""

import json

import pytest

from pdenets.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def test_rh_fractions_smoke(tmp_path, capsys):
    out = tmp_path / "frac"
    rc = main(["rh", "fractions", "--fractions", "0.1,0.2", "--networks", "hamiltonian", "--train-steps", "2",
               "--batch-size", "16", "--no-progress", "--out", str(out)])
    assert rc == 0
    rows = json.loads((out / "results.json").read_text())
    assert [r["fraction"] for r in rows] == [0.1, 0.2]
    # ⌈f × 111⌉ per class: 111 is the smallest class of the 1144 training images (203 are the validation split)
    assert rows[0]["n_train"] == 10 * 12 and rows[1]["n_train"] == 10 * 23
    for r in rows:  # confusion matrix rows sum to the test-set class counts (450 test images)
        assert sum(map(sum, r["confusion"])) == 450
        assert abs(sum(r["confusion"][i][i] for i in range(10)) / 450 - r["test_acc"]) < 1e-6
        assert r["steps"] == 2 and 0 <= r["val_acc"] <= 1
        run = out / "runs" / f"hamiltonian-{round(100 * r['fraction'])}pct"  # every run is a trainer run
        assert json.loads((run / "summary.json").read_text())["steps"] == 2
        assert (run / "checkpoints" / "last" / "model.safetensors").is_file()
    assert (out / "fractions.png").stat().st_size > 0 and (out / "confusion.png").stat().st_size > 0
    merged = tmp_path / "merged"
    assert main(["rh", "plot", str(out), str(out / "results.json"), "--out", str(merged)]) == 0
    assert len(json.loads((merged / "results.json").read_text())) == 4 and (merged / "fractions.png").exists()
    assert main(["rh", "plot", str(tmp_path / "nothing")]) == 2


def test_rh_bad_input(capsys):
    assert main(["rh", "fractions", "--fractions", "0,2"]) == 2
    assert "--fractions" in capsys.readouterr().err
    assert main(["rh", "fractions", "--networks", "elliptic"]) == 2
    assert main(["rh", "deepen", "--dataset", "stl10"]) == 2
    assert "--data-dir" in capsys.readouterr().err


def test_rh_stability_command(capsys):
    import torch

    assert main(["rh", "stability", "--channels", "2", "--size", "4", "--time-steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "Hamiltonian linearisation" in out and "reconstruction error" in out
    assert torch.get_default_dtype() == torch.float32  # float64 by explicit dtypes, not the process default
