"""A trained RH network through the command line (docs/design.md §14): the loss terms in metrics.csv, re-discretised
evaluation (``pdenets eval -m steps=… -m h=…``) and its artifact, ``pdenets pde kernels`` and ``pdenets rh
dynamics`` on the checkpoint."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

import pdenets
from pdenets.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN = ["train", "--model", "rh_hamiltonian_small", "-m", "widths=[4,4]", "-m", "steps=2", "-m", "h=0.5",
         "--img-size", "8", "--batch-size", "16", "--epochs", "2", "--max-steps-per-epoch", "3", "--hook", "rh-tv",
         "--hook", "box", "--no-progress"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rh") / "run"
    assert main([*TRAIN, "--out", str(out)]) == 0
    return out


def test_metrics_csv_has_the_loss_terms(run):
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and {"train_loss", "train_data_loss", "reg_rh-tv"} <= set(rows[0])
    assert "reg_box" not in rows[0]  # box has no penalty
    for r in rows:  # the total is the data loss plus the penalty (epoch means of the same steps)
        assert math.isclose(float(r["train_loss"]), float(r["train_data_loss"]) + float(r["reg_rh-tv"]), rel_tol=1e-6)
        assert float(r["reg_rh-tv"]) > 0
    # the hook's value is α₁ h Σ [φ_ε(Δθ/h) − √ε] (zero for θ constant in time): recompute it on the last weights
    model = pdenets.load(run, which="last")
    ref = 0.0
    for u in model.units():
        for seq in u.layer_parameters():
            for a, b in zip(seq[:-1], seq[1:]):
                d = ((b - a) / u.h).detach().double()
                ref += u.h * float((torch.sqrt(d * d + 1e-3) - math.sqrt(1e-3)).sum())
    hook = pdenets.hooks.create_hook("rh-tv")
    assert math.isclose(float(hook.penalty(model).detach()), 3e-4 * ref, rel_tol=1e-5)


def test_eval_rediscretized_and_its_artifact(run, tmp_path, capsys):
    out, saved = tmp_path / "ev", tmp_path / "model"
    assert main(["eval", "-c", str(run), "--out", str(out)]) == 0
    base = json.loads((out / "eval.json").read_text())
    assert main(["eval", "-c", str(run), "-m", "steps=6", "-m", "h=0.25", "--out", str(out / "r"), "--save-model",
                 str(saved)]) == 0
    rec = json.loads((out / "r" / "eval.json").read_text())
    assert rec["rediscretized"]["before"]["steps"] == [2, 2] and rec["rediscretized"]["after"] == dict(
        steps=[6, 6], h=0.25, scheme="symplectic_euler")
    assert "re-discretised" in capsys.readouterr().out
    m = pdenets.load(saved)
    assert [u.steps for u in m.units()] == [6, 6] and m.h == 0.25
    assert pdenets.artifacts.edits(m)[-1]["op"] == "rediscretize"
    assert main(["eval", "-c", str(saved), "--out", str(out / "again")]) == 0  # the artifact evaluates alike
    assert json.loads((out / "again" / "eval.json").read_text())["top1"] == rec["top1"]
    assert main(["eval", "-c", str(run), "-m", "factor=1", "--out", str(out / "same")]) == 0  # a no-op grid
    assert json.loads((out / "same" / "eval.json").read_text())["top1"] == base["top1"]
    assert main(["eval", "-c", str(run), "-m", "widths=[8,8]"]) == 2
    assert main(["eval", "-c", str(run), "-m", "scheme=rk4"]) == 0
    assert main(["eval", "-c", str(run), "-m", "scheme=leapfrog"]) == 2  # not a Hamiltonian scheme
    assert "does not apply" in capsys.readouterr().err


def test_train_init_from_a_rediscretized_artifact(run, tmp_path):
    saved = tmp_path / "model"
    assert main(["eval", "-c", str(run), "-m", "factor=3", "--out", str(tmp_path / "ev"), "--save-model",
                 str(saved)]) == 0
    out = tmp_path / "ft"
    assert main(["train", "--init-from", str(saved), "--epochs", "1", "--max-steps-per-epoch", "2", "--batch-size",
                 "16", "--no-progress", "--out", str(out)]) == 0
    m = pdenets.load(out)
    assert [u.steps for u in m.units()] == [6, 6] and m.h == pytest.approx(0.5 / 3)


def test_pde_kernels_and_dynamics_on_an_rh_checkpoint(run, tmp_path, capsys):
    assert main(["pde", "kernels", "-c", str(run), "--out", str(tmp_path / "k")]) == 0
    text = capsys.readouterr().out
    assert "time-stepped kernels" in text and "stages.0.unit0.layers_y" in text and "stages.1.unit0.layers_z" in text
    rows = list(csv.DictReader(open(tmp_path / "k" / "time_kernels.csv")))
    assert len(rows) == 2 * 2 * 2 and all(int(r["stencils"]) == 4 for r in rows)  # 2 units × 2 steps × (θ¹, θ²)
    shares = [sum(float(r[f"order{g}"]) for g in ("0", "1", "2", "3plus")) for r in rows]
    assert all(abs(s - 1) < 1e-5 for s in shares) and (tmp_path / "k" / "time_kernels.png").is_file()
    assert main(["rh", "dynamics", "-c", str(run), "--samples", "4", "--out", str(tmp_path / "d")]) == 0
    recs = json.loads((tmp_path / "d" / "dynamics.json").read_text())
    assert [len(r["norms"]) for r in recs] == [3, 3] and recs[0]["energies"][0] is None  # instance norm
