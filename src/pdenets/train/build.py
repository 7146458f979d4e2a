"""The model of a run: built from ``cfg.model``, taken from an artifact (``--init-from``, resume), or given.

Every model the trainer saves must carry a build record (:func:`pdenets.models.registry.build_record`), so
that its checkpoints rebuild it — with the structure of the artifact, e.g. a compressed model's widths.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import torch.nn as nn

from pdenets.datasets import DatasetInfo
from pdenets.errors import UsageError

__all__ = ["artifact_meta", "build_model", "check_build_record", "check_classes", "model_create_kwargs",
           "model_from_artifact"]


def model_create_kwargs(name: str, info: DatasetInfo, model_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Constructor keywords for ``create_model(name)`` on a data set: ``num_classes`` and ``in_chans`` for
    image models; for other models only those of ``num_classes`` / ``in_features`` / ``in_chans`` that the
    constructor accepts."""
    from pdenets.models import is_image_model, registry

    kw: dict[str, Any] = {}
    if is_image_model(name):
        kw = dict(num_classes=info.num_classes, in_chans=info.in_chans)
    else:
        fn = registry._OTHER_MODELS.get(name)
        if fn is None:
            raise UsageError(f"unknown model {name!r} (see `pdenets models`)")
        params = inspect.signature(fn).parameters
        var_kw = any(p.kind == p.VAR_KEYWORD for p in params.values())
        wanted = dict(num_classes=info.num_classes, in_features=info.in_features,
                      in_chans=info.in_chans if info.kind == "image" else None)
        kw = {k: v for k, v in wanted.items() if v is not None and (k in params or var_kw)}
    kw.update(model_kwargs or {})
    return kw


def build_model(name: str, create_kwargs: dict[str, Any]) -> nn.Module:
    """``pdenets.create_model(name, **create_kwargs)`` with one-line errors for unknown names and arguments."""
    from pdenets.models import create_model, list_models

    if name not in list_models():
        import timm

        if not timm.is_model(name):
            raise UsageError(f"unknown model {name!r} (see `pdenets models`)")
    try:
        return create_model(name, **create_kwargs)
    except TypeError as e:
        raise UsageError(f"model {name!r} does not accept these arguments: {e}") from None


def check_build_record(model: nn.Module) -> dict[str, Any]:
    """The build record of ``model``; a usage error if it has none (its checkpoints could not rebuild it)."""
    from pdenets.models.registry import build_record

    rec = build_record(model)
    if rec is None:
        raise UsageError(f"the given {type(model).__name__} carries no build record: build it with "
                         f"pdenets.create_model(name, ...) or load it with pdenets.load(path)")
    return rec


def model_from_artifact(path: str | os.PathLike, which: str = "best") -> tuple[nn.Module, dict[str, Any]]:
    """(model with the artifact's weights and structure, in training mode; the artifact's metadata)."""
    from pdenets.artifacts import load_artifact

    model, meta = load_artifact(path, which)
    return model.train(), meta


def check_classes(meta: dict[str, Any], info: DatasetInfo, where: str) -> None:
    """The artifact's model must predict the data set's number of classes."""
    n = meta.get("num_classes", (meta.get("create_kwargs") or {}).get("num_classes"))
    if n is not None and n != info.num_classes:
        raise UsageError(f"{where}: the model predicts {n} classes but data set {info.name!r} has "
                         f"{info.num_classes}")


def artifact_meta(path: str | os.PathLike, which: str = "best") -> dict[str, Any]:
    """The metadata of an artifact (model name, data set, image size ...) without reading its tensors."""
    import json

    from safetensors import safe_open

    from pdenets.artifacts import ArtifactError, resolve_artifact

    f = resolve_artifact(path, which)
    try:
        with safe_open(str(f), framework="pt", device="cpu") as sf:
            meta = json.loads((sf.metadata() or {}).get("pdenets") or "null")
    except Exception as e:  # foreign, truncated or corrupt file
        raise ArtifactError(f"cannot read {str(f)!r}: not a pdenets model file (safetensors) or corrupt "
                            f"({type(e).__name__})") from None
    if not isinstance(meta, dict) or "model" not in meta:
        raise ArtifactError(f"{str(f)!r} has no pdenets metadata with a model name")
    return meta
