"""Evaluation of a classifier on a loader: top-1 / top-5 (percent), mean cross-entropy, confusion matrix."""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from pdenets.train.data import to_device
from pdenets.train.distributed import DistInfo, all_reduce_sum
from pdenets.train.metrics import topk_correct

__all__ = ["autocast_ctx", "evaluate", "unwrap"]


def autocast_ctx(device: torch.device, amp: str | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``amp`` ('bf16' or 'fp16') on ``device``; a null context without AMP."""
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside ``torch.compile`` and DDP wrappers."""
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DDP


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: str | torch.device = "cpu", *, num_classes: int | None = None,
             amp: str | None = None, channels_last: bool = False, dist_info: DistInfo | None = None,
             confusion: bool = False, progress: bool = False) -> dict[str, Any]:
    """Top-1 / top-5 accuracy (percent), mean cross-entropy and sample count of ``model`` on ``loader``.

    Under DDP each rank evaluates its shard and the sums are all-reduced. ``confusion=True`` adds the
    confusion matrix (rows: true class, columns: predicted class) as a nested list.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    counts = torch.zeros(3, dtype=torch.float64, device=device)  # n, top1, top5
    cm = None
    for x, y in tqdm(loader, desc="eval", leave=False, disable=not progress, file=sys.stderr):
        x, y = to_device(x, y, device, channels_last)
        with autocast_ctx(device, amp):
            out = model(x)
        out = out.float()
        loss_sum += F.cross_entropy(out, y, reduction="sum").double()
        c1, c5 = topk_correct(out, y)
        counts += torch.tensor([len(y), c1, c5], dtype=torch.float64, device=device)
        if confusion:
            k = num_classes or out.shape[1]
            if cm is None:
                cm = torch.zeros(k, k, dtype=torch.float64, device=device)
            cm += torch.bincount(y * k + out.argmax(1), minlength=k * k).reshape(k, k).to(cm)
    d = dist_info or DistInfo()
    loss_sum, counts = all_reduce_sum(loss_sum, d), all_reduce_sum(counts, d)
    model.train(was_training)
    n = max(counts[0].item(), 1.0)
    res: dict[str, Any] = dict(top1=100.0 * counts[1].item() / n, top5=100.0 * counts[2].item() / n,
                               loss=loss_sum.item() / n, n=int(counts[0].item()))
    if confusion:
        if cm is None:
            cm = torch.zeros(num_classes or 1, num_classes or 1, dtype=torch.float64, device=device)
        res["confusion"] = all_reduce_sum(cm, d).long().cpu().tolist()
    return res
