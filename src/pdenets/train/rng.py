"""Seeding and the RNG states a checkpoint carries (Python, NumPy, torch, CUDA; every rank's under DDP)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from pdenets.train.distributed import DistInfo

__all__ = ["gather_rng_states", "restore_rank_rng", "rng_state", "seed_everything", "set_rng_state"]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (the training run's streams)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states in a form ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state()
    state = dict(python=random.getstate(), numpy=[np_state[0], torch.from_numpy(np_state[1].copy()),
                                                  int(np_state[2]), int(np_state[3]), float(np_state[4])],
                 torch=torch.get_rng_state())
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _convert(obj: Any, to_numpy: bool) -> Any:
    if to_numpy and torch.is_tensor(obj):
        return obj.cpu().numpy()
    if not to_numpy and isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, dict):
        return {k: _convert(v, to_numpy) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_convert(v, to_numpy) for v in obj)
    return obj


def gather_rng_states(d: DistInfo) -> Any:
    """This process's RNG state, or under DDP the list of every rank's (what rank 0 saves for resume)."""
    local = rng_state()
    if not d.distributed:
        return local
    import torch.distributed as tdist

    gathered: list[Any] = [None] * d.world_size
    tdist.all_gather_object(gathered, _convert(local, True))  # tensors do not pickle through gloo
    return [_convert(g, False) for g in gathered]


def restore_rank_rng(saved: Any, d: DistInfo) -> None:
    """Restore this rank's RNG state from what :func:`gather_rng_states` saved."""
    set_rng_state(saved[d.rank] if isinstance(saved, list) and d.rank < len(saved) else saved)

