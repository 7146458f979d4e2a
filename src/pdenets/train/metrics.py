"""Per-epoch metrics to CSV and JSON lines (plus events such as NaN-guard failures), optional TensorBoard."""

from __future__ import annotations

import csv
import io
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

    ``metrics.csv`` has the columns :data:`CSV_FIELDS` and then any other numeric key of the rows, in the
    order they first appear (the trainer's ``train_data_loss`` and ``reg_<hook>`` loss terms).
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

    def _rows(self) -> list[dict[str, Any]]:
        path = self.dir / "metrics.csv"
        if not path.is_file():
            return []
        with open(path, newline="") as f:
            return [r for r in csv.DictReader(f) if (r.get("epoch") or "").isdigit()]

    def _write_rows(self, rows: list[dict[str, Any]]) -> None:
        """Rewrite metrics.csv atomically (a kill or a full disk leaves the previous file, never half a row)."""
        from pdenets.artifacts import atomic_write_bytes

        extra = [k for r in rows for k, v in r.items()
                 if isinstance(k, str) and k not in self.CSV_FIELDS and isinstance(v, (int, float, str))]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=[*self.CSV_FIELDS, *dict.fromkeys(extra)], extrasaction="ignore",
                           lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        atomic_write_bytes(self.dir / "metrics.csv", buf.getvalue().encode())

    def truncate(self, epochs_done: int) -> None:
        """Keep the metrics.csv rows of epochs 1..``epochs_done`` (a resumed run trains the others again)."""
        if self.enabled:
            rows = self._rows()
            keep = [r for r in rows if int(r["epoch"]) <= epochs_done]
            if len(keep) != len(rows):
                self._write_rows(keep)

    def log_epoch(self, row: dict[str, Any]) -> None:
        """One metrics.csv row per epoch (a row of the same epoch, left by a killed run, is replaced)."""
        if not self.enabled:
            return
        rows = [r for r in self._rows() if int(r["epoch"]) < int(row["epoch"])]
        self._write_rows([*rows, row])
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
