"""Smoke test of the training slice: a tiny model trains, checkpoints, reloads and evaluates identically."""

import json

import torch

from _train_util import one_thread
from pdenets.train.checkpoint import load_model
from pdenets.train.config import resolve_config
from pdenets.train.data import build_loaders
from pdenets.train.evaluate import evaluate
from pdenets.train.trainer import train

TINY = dict(model_kwargs={"widths": [8, 8, 8, 8]}, img_size=8, batch_size=32, max_steps_per_epoch=3,
            progress=False, deterministic=True)


def test_train_tiny_writes_run_and_reloads(tmp_path):
    cfg = resolve_config(recipe="quick", overrides=dict(TINY, epochs=2, out=str(tmp_path / "run")))
    with one_thread():
        summary = train(cfg)
    run = tmp_path / "run"
    on_disk = json.loads((run / "summary.json").read_text())
    for k in ("model", "dataset", "epochs", "test_top1", "test_top5", "params", "wall_seconds"):
        assert k in on_disk
    assert on_disk["epochs"] == 2 and on_disk["model"] == "qlnet18_eq3_small"
    for f in ("config.yaml", "metrics.csv", "metrics.jsonl", "report.md", "curves.png", "confusion.png",
              "checkpoints/last/model.safetensors", "checkpoints/last/state.pt", "checkpoints/best/model.safetensors"):
        assert (run / f).is_file(), f
    assert len((run / "metrics.csv").read_text().splitlines()) == 3  # header + 2 epochs
    # the reloaded best checkpoint gives the same test metrics as the run's final (one) test evaluation
    model, meta = load_model(run / "checkpoints" / "best")
    assert meta["create_kwargs"] == {"num_classes": 10, "in_chans": 1, "widths": [8, 8, 8, 8]}
    assert meta["epoch"] == on_disk["best_epoch"] and meta["val_top1"] == on_disk["val_top1"]
    with one_thread():
        ev = evaluate(model, build_loaders(cfg).test, "cpu", confusion=True)
    assert abs(ev["top1"] - summary["test_top1"]) < 1e-9
    assert ev["n"] == 450 and sum(map(sum, ev["confusion"])) == 450
    # top-1 from the confusion matrix (an independent count) equals the reported top-1
    assert abs(100 * sum(ev["confusion"][i][i] for i in range(10)) / 450 - ev["top1"]) < 1e-9
    assert torch.isfinite(torch.tensor(ev["loss"]))
