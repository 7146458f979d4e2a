"""Per-epoch metrics to CSV and JSON lines (plus events such as NaN-guard failures), optional TensorBoard."""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from typing import Any

import torch


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """Number of samples whose target is among the top-k logits, for each k (k capped at the class count)."""
    maxk = min(max(ks), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices
    hit = pred.eq(target[:, None])
    return [int(hit[:, : min(k, maxk)].any(dim=1).sum()) for k in ks]


class MetricsLogger:
    """Appends epoch rows to ``metrics.csv`` and every record (rows and events) to ``metrics.jsonl``.

    ``enabled=False`` (non-zero ranks) makes every call a no-op. Resuming appends to the same files.
    """

    CSV_FIELDS = ("epoch", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr", "img_per_s",
                  "epoch_seconds", "wall_seconds", "nan_failures")

    def __init__(self, run_dir: str | os.PathLike, enabled: bool = True, tensorboard: bool = False) -> None:
        self.dir = Path(run_dir)
        self.enabled = enabled
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.dir / "tb"))
            except ImportError:  # tensorboard not installed: say so once, go on
                print("pdenets: tensorboard is not installed; --tensorboard ignored")

    def _jsonl(self, rec: dict[str, Any]) -> None:
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(rec, default=float) + "\n")

    def log_epoch(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        path = self.dir / "metrics.csv"
        new = not path.exists()
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.CSV_FIELDS, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)
        self._jsonl({"event": "epoch", "time": time.time(), **row})
        if self.tb is not None:
            for k, v in row.items():
                if k != "epoch" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["epoch"])
            self.tb.flush()

    def log_event(self, rec: dict[str, Any]) -> None:
        if self.enabled:
            self._jsonl({"time": time.time(), **rec})

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_epochs(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Epoch rows of ``metrics.jsonl`` (a resumed run's repeated epochs: the last one wins)."""
    path = Path(run_dir) / "metrics.jsonl"
    rows: dict[int, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("event") == "epoch":
                rows[rec["epoch"]] = rec
    return [rows[k] for k in sorted(rows)]


def read_events(run_dir: str | os.PathLike, event: str) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r.get("event") == event]
