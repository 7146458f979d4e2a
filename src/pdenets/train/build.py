"""The model of a run: built from ``cfg.model``, taken from an artifact (``--init-from``, resume), or given.

Every model the trainer saves must carry a build record (:func:`pdenets.models.registry.build_record`), so
that its checkpoints rebuild it — with the structure of the artifact, e.g. a compressed model's widths.
"""

from __future__ import annotations

import inspect
import os
from typing import TYPE_CHECKING, Any

import torch.nn as nn

from pdenets.datasets import DatasetInfo
from pdenets.errors import UsageError

if TYPE_CHECKING:
    from pdenets.train.config import TrainConfig

__all__ = ["DATA_KWARGS", "artifact_meta", "build_model", "check_build_record", "check_classes", "check_model_kind",
           "model_create_kwargs", "model_from_artifact", "preflight"]


DATA_KWARGS = ("num_classes", "in_chans", "in_features")  # set by the trainer from the data set


def model_create_kwargs(name: str, info: DatasetInfo, model_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Constructor keywords for ``create_model(name)`` on a data set: ``num_classes`` and ``in_chans`` for
    image models; for other models only those of ``num_classes`` / ``in_features`` / ``in_chans`` that the
    constructor accepts. The model must take the data set's kind of input (:func:`check_model_kind`), and a
    ``-m num_classes`` (``in_chans``, ``in_features``) must agree with the data set."""
    from pdenets.models import registry

    check_model_kind(name, info)
    fn = registry._OTHER_MODELS.get(name)
    if fn is None:  # an image model: pdenets' own or timm's
        kw: dict[str, Any] = dict(num_classes=info.num_classes, in_chans=info.in_chans)
    else:
        params = inspect.signature(fn).parameters
        var_kw = any(p.kind == p.VAR_KEYWORD for p in params.values())
        wanted = dict(num_classes=info.num_classes, in_features=info.in_features,
                      in_chans=info.in_chans if info.kind == "image" else None)
        kw = {k: v for k, v in wanted.items() if v is not None and (k in params or var_kw)}
    for k, v in (model_kwargs or {}).items():
        if k in kw and v != kw[k]:
            raise UsageError(f"-m {k}={v!r} does not match data set {info.name!r}, which has {k} = {kw[k]}; "
                             f"drop -m {k} (the trainer sets it from the data set)")
    kw.update(model_kwargs or {})
    return kw


def check_model_kind(name: str, info: DatasetInfo) -> None:
    """Image models (pdenets' and timm's) need an image data set, the point models a vector one."""
    from pdenets.models import registry

    points = sorted(registry._OTHER_MODELS)
    if name not in registry._OTHER_MODELS and info.kind != "image":
        raise UsageError(f"model {name!r} takes images, but data set {info.name!r} holds {info.kind} data "
                         f"({info.in_features}-D points); use an image data set or a point model "
                         f"({', '.join(points)})")
    if name in registry._OTHER_MODELS and info.kind == "image":
        raise UsageError(f"model {name!r} takes points (vector data), but data set {info.name!r} holds images; "
                         f"use --dataset circles or an image model")


def build_model(name: str, create_kwargs: dict[str, Any]) -> nn.Module:
    """``pdenets.create_model(name, **create_kwargs)`` with one-line errors for unknown names and for arguments
    the constructor refuses (its ``TypeError``, ``ValueError``, ``KeyError`` or ``AssertionError`` becomes a
    :class:`UsageError` naming the ``-m`` arguments)."""
    from pdenets.models import create_model, list_models

    if name not in list_models():
        import timm

        if not timm.is_model(name):
            raise UsageError(f"unknown model {name!r} (see `pdenets models`)")
    try:
        return create_model(name, **create_kwargs)
    except (TypeError, ValueError, KeyError, AssertionError) as e:
        given = " ".join(f"-m {k}={v!r}" for k, v in create_kwargs.items() if k not in DATA_KWARGS)
        why = (str(e).splitlines() or [type(e).__name__])[0]
        raise UsageError(f"model {name!r} refused its arguments{f' ({given})' if given else ''}: {why}") from None


def preflight(cfg: TrainConfig) -> None:
    """What the start of a run would refuse, checked before any file is written or data loaded: the hooks
    (``cfg.hooks``), and the model of a fresh run — ``cfg.model`` built with the data set's classes and
    channels and the ``-m`` arguments on the meta device (no memory, no init cost), ``inject_nan_module``.
    Runs that take their model from an artifact (``resume`` of an existing run, ``init_from``) are checked
    when the artifact is read."""
    import torch

    from pdenets.datasets import dataset_info
    from pdenets.hooks import create_hook
    from pdenets.train.rundir import existing_run

    for spec in cfg.hooks:
        try:
            create_hook(spec)
        except ValueError as e:
            raise UsageError(f"--hook {spec}: {e}") from None
    if cfg.init_from or (cfg.resume and (cfg.resume != "auto" or existing_run(cfg.out))):
        return
    info = dataset_info(cfg.dataset, cfg.data_dir)
    with torch.device("meta"):
        model = build_model(cfg.model, model_create_kwargs(cfg.model, info, cfg.model_kwargs))
    names = dict(model.named_modules())
    if cfg.inject_nan_module is not None and cfg.inject_nan_module not in names:
        raise UsageError(f"--inject-nan-module {cfg.inject_nan_module!r} is not a module of {cfg.model!r}")


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
