"""What every command that reads a model shares: the ``--checkpoint``/``--which`` options and the one
loader (:func:`pdenets.artifacts.load_artifact`), which takes every artifact pdenets writes."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch.nn as nn

from pdenets.errors import UsageError

CHECKPOINT_HELP = ("a model written by pdenets: a run directory, a checkpoint directory, an artifact directory "
                   "(written by `symmetry teleport|compress|fold`) or its model.safetensors")
WHICH_HELP = "checkpoint of a run directory: best (highest validation top-1) or last (default: best)"


def add_checkpoint_args(p: argparse.ArgumentParser, required: bool = True, group=None) -> None:
    """``--checkpoint/-c PATH`` (in ``group`` if given) and ``--which best|last``."""
    (group or p).add_argument("--checkpoint", "-c", required=required and group is None, metavar="PATH",
                              help=CHECKPOINT_HELP)
    p.add_argument("--which", choices=("best", "last"), default="best", help=WHICH_HELP)


def load_checkpoint(path: str, which: str = "best", device: str = "cpu", quiet: bool = False
                    ) -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode, metadata) of any artifact; prints which file it read unless ``quiet``."""
    from pdenets.artifacts import load_artifact

    if not Path(path).exists():
        raise UsageError(f"--checkpoint {path!r} does not exist ({CHECKPOINT_HELP})")
    model, meta = load_artifact(path, which, device)
    if not quiet:
        edits = ", ".join(e["op"] for e in meta.get("edits", [])) or "none"
        print(f"reading {meta['file']} ({meta['model']}; edits: {edits})", flush=True)
    return model, meta


def data_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The data-set fields of an artifact's metadata that a derived artifact keeps."""
    keys = ("dataset", "data_dir", "img_size", "crop_pct", "class_names", "num_classes", "in_chans", "in_features",
            "kind")
    return {k: meta[k] for k in keys if k in meta}
