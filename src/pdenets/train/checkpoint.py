"""Training checkpoints: a model artifact plus a training state for exact resume.

A checkpoint is a directory (``RUN/checkpoints/last``, ``RUN/checkpoints/best``) holding

* ``model.safetensors`` + ``meta.json`` — the model artifact (:mod:`pdenets.artifacts`: weights, the
  build record and structural edits, the data set, epoch and metrics), so the directory alone rebuilds
  the model with :func:`pdenets.load`;
* ``state.pt`` (``last`` only) — optimizer, scheduler, scaler, EMA, hooks, NaN-guard and RNG states,
  epoch and step, tensors and plain containers only (read with ``torch.load(weights_only=True)``).

Writing is atomic: the directory is written as ``NAME.tmp-PID`` and swapped in with two renames
(``NAME`` → ``NAME.old``, ``NAME.tmp-PID`` → ``NAME``), so a run killed at any moment leaves either the
previous or the new checkpoint complete; :func:`resolve_checkpoint` falls back to ``NAME.old`` if a kill
landed between the two renames. A corrupt or truncated file raises :class:`CheckpointError` naming it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from pdenets.artifacts import (
    META,
    WEIGHTS,
    ArtifactError,
    artifact_bytes,
    atomic_write_bytes,
    load_artifact,
    read_artifact,
    resolve_artifact,
    write_error,
)

STATE = "state.pt"
CheckpointError = ArtifactError


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_checkpoint(ckpt_dir: str | os.PathLike, model: nn.Module, meta: dict[str, Any],
                    train_state: dict[str, Any] | None = None) -> Path:
    """Write checkpoint directory ``ckpt_dir`` (the artifact of ``model`` with ``meta``, and ``train_state``
    if given) atomically (see module docstring); returns its path. A failed write (full disk, quota) removes
    the temporary directory, leaves the previous checkpoint intact and raises a one-line error naming it."""
    final = Path(ckpt_dir)
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    old = final.with_name(f"{final.name}.old")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        _write_checkpoint_files(tmp, model, meta, train_state)
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as a RuntimeError
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(final, e) from None
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def _write_checkpoint_files(tmp: Path, model: nn.Module, meta: dict[str, Any],
                            train_state: dict[str, Any] | None) -> None:
    """model.safetensors, state.pt (its SHA-256 goes into meta.json) and meta.json (last), each fsynced."""
    data, full = artifact_bytes(model, meta)
    (tmp / WEIGHTS).write_bytes(data)
    _fsync_file(tmp / WEIGHTS)
    if train_state is not None:
        torch.save(train_state, tmp / STATE)
        _fsync_file(tmp / STATE)
        full["state_sha256"] = _file_sha256(tmp / STATE)
    (tmp / META).write_text(json.dumps(full, indent=2, default=str))
    _fsync_file(tmp / META)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_problem(ckpt_dir: str | os.PathLike) -> str | None:
    """Why ``ckpt_dir`` is not a complete, resumable checkpoint (a missing file, a checksum that fails), or
    None when it is one. Cheap: the weights are checked when they are read."""
    d = Path(ckpt_dir)
    for name in (WEIGHTS, META, STATE):
        if not (d / name).is_file():
            return f"{d / name} is missing"
    try:
        meta = json.loads((d / META).read_text())
    except (OSError, json.JSONDecodeError):
        return f"{d / META} is unreadable"
    want = meta.get("state_sha256")
    if want is not None and _file_sha256(d / STATE) != want:
        return f"{d / STATE} fails its checksum (corrupt)"
    return None


def resolve_checkpoint(path: str | os.PathLike, prefer: str = "last") -> Path:
    """The checkpoint directory (or weights file, when given one) of a run directory, a checkpoint directory
    or a file; ``prefer`` ('last' or 'best') picks the checkpoint of a run."""
    p = Path(path).expanduser()
    f = resolve_artifact(p, prefer)
    return f if p.is_file() else f.parent


def read_weights(path: str | os.PathLike, prefer: str = "best") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, metadata) of a checkpoint or artifact."""
    return read_artifact(path, prefer)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu", prefer: str = "best"
               ) -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode, metadata) of a checkpoint or artifact: :func:`pdenets.artifacts.load_artifact`."""
    return load_artifact(path, prefer, device)


def load_training_state(ckpt: str | os.PathLike) -> dict[str, Any]:
    """The ``state.pt`` of a checkpoint directory (or the file itself); clear error if unreadable."""
    p = Path(ckpt)
    f = p if p.is_file() else p / STATE
    if not f.is_file():
        raise CheckpointError(f"no training state {str(f)!r} (only 'last' checkpoints can be resumed)")
    problem = checkpoint_problem(f.parent) if (f.parent / META).is_file() else None
    if problem is not None and STATE in problem:
        raise CheckpointError(f"training state {str(f)!r} is corrupt: {problem}; resume from another checkpoint")
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read training state {str(f)!r}: corrupt or truncated "
                              f"({type(e).__name__})") from None
