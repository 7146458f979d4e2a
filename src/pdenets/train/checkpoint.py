"""Checkpoints: safetensors weights that rebuild their own model, plus a training state for exact resume.

A checkpoint is a directory (``RUN/checkpoints/last``, ``RUN/checkpoints/best``) holding

* ``model.safetensors`` — the weights; its metadata (key ``pdenets``) is the JSON :func:`model_meta`
  (model name, constructor kwargs, ``num_classes``/``in_chans``, data set, epoch, metrics), so the file
  alone is enough for :func:`load_model`;
* ``state.pt`` (``last`` only) — optimizer, scheduler, scaler, EMA, hooks, NaN-guard and RNG states,
  epoch and step (loadable with ``torch.load(weights_only=True)``);
* ``meta.json`` — the same metadata, for people.

Writing is atomic: the directory is written as ``NAME.tmp-PID`` and swapped in with two renames
(``NAME`` → ``NAME.old``, ``NAME.tmp-PID`` → ``NAME``), so a run killed at any moment leaves either the
previous or the new checkpoint complete; :func:`resolve_checkpoint` falls back to ``NAME.old`` if a kill
landed between the two renames. Files are only ever read when loading; a corrupt or truncated file raises
:class:`CheckpointError` naming it and is left untouched.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from pdenets.errors import UsageError

WEIGHTS = "model.safetensors"
STATE = "state.pt"
META = "meta.json"


class CheckpointError(UsageError):
    """A checkpoint that cannot be found or read (the message names the file)."""


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_weights(path: str | os.PathLike, state_dict: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Weights + metadata to a safetensors file, atomically."""
    from safetensors.torch import save as st_save

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    atomic_write_bytes(path, st_save(tensors, metadata={"pdenets": json.dumps(meta, default=str)}))


def save_checkpoint(ckpt_dir: str | os.PathLike, model_state: dict[str, torch.Tensor], meta: dict[str, Any],
                    train_state: dict[str, Any] | None = None) -> Path:
    """Write checkpoint directory ``ckpt_dir`` atomically (see module docstring); returns its path."""
    final = Path(ckpt_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    old = final.with_name(f"{final.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_weights(tmp / WEIGHTS, model_state, meta)
    if train_state is not None:
        torch.save(train_state, tmp / STATE)
        _fsync_file(tmp / STATE)
    (tmp / META).write_text(json.dumps(meta, indent=2, default=str))
    _fsync_file(tmp / META)
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def resolve_checkpoint(path: str | os.PathLike, prefer: str = "last") -> Path:
    """A checkpoint directory or weights file from a run directory, a checkpoint directory or a file.

    For a run directory, ``prefer`` ('last' or 'best') picks the checkpoint; ``NAME.old`` is used when a
    kill interrupted the swap. Raises :class:`CheckpointError` when nothing is found.
    """
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if not p.exists():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist")
    candidates = []
    for base in (p, p / "checkpoints"):
        other = "best" if prefer == "last" else "last"
        candidates += [base, base / prefer, base / f"{prefer}.old", base / other, base / f"{other}.old"]
    for c in candidates:
        if (c / WEIGHTS).is_file():
            return c
    raise CheckpointError(f"no checkpoint under {str(p)!r} (expected {WEIGHTS} in it, in checkpoints/last "
                          f"or checkpoints/best)")


def _weights_file(path: str | os.PathLike, prefer: str = "best") -> Path:
    p = resolve_checkpoint(path, prefer)
    return p if p.is_file() else p / WEIGHTS


def read_weights(path: str | os.PathLike, prefer: str = "best") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, metadata) from a weights file or checkpoint; clear error on a corrupt file."""
    from safetensors import safe_open

    f = _weights_file(path, prefer)
    try:
        with safe_open(str(f), framework="pt", device="cpu") as sf:
            meta_s = (sf.metadata() or {}).get("pdenets")
            tensors = {k: sf.get_tensor(k) for k in sf.keys()}
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt headers
        raise CheckpointError(f"cannot read checkpoint {str(f)!r}: corrupt or truncated "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if meta_s is None:
        raise CheckpointError(f"checkpoint {str(f)!r} has no pdenets metadata (not written by pdenets?)")
    try:
        meta = json.loads(meta_s)
    except json.JSONDecodeError:
        raise CheckpointError(f"checkpoint {str(f)!r} has corrupt pdenets metadata") from None
    return tensors, meta


def build_model_from_meta(meta: dict[str, Any]) -> nn.Module:
    """The model described by checkpoint metadata, freshly initialised."""
    from pdenets.models import create_model

    return create_model(meta["model"], **meta.get("create_kwargs", {}))


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu", prefer: str = "best"
               ) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model saved at ``path`` (a ``.safetensors`` file, a checkpoint directory or a run
    directory — then ``prefer`` picks 'best' or 'last') and load its weights. Returns (model in eval
    mode, metadata)."""
    tensors, meta = read_weights(path, prefer)
    model = build_model_from_meta(meta)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        f = _weights_file(path, prefer)
        raise CheckpointError(f"checkpoint {str(f)!r} does not match model {meta['model']!r}: "
                              f"{len(missing)} missing and {len(unexpected)} unexpected tensors")
    return model.to(device).eval(), meta


def load_training_state(ckpt: str | os.PathLike) -> dict[str, Any]:
    """The ``state.pt`` of a checkpoint directory (or the file itself); clear error if unreadable."""
    p = Path(ckpt)
    f = p if p.is_file() else p / STATE
    if not f.is_file():
        raise CheckpointError(f"no training state {str(f)!r} (only 'last' checkpoints can be resumed)")
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read training state {str(f)!r}: corrupt or truncated "
                              f"({type(e).__name__})") from None
