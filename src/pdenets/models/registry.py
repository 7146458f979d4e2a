"""One registry for every model pdenets provides.

Image models (the QL-ConvNets, the Ruthotto-Haber networks) are registered with timm through
:func:`register_image_model`, so ``timm.create_model`` builds them after ``import pdenets``. Models that
are not image classifiers (e.g. the Ruseckas ODE networks on 2-D points) go through
:func:`register_model` into pdenets' own table. :func:`create_model` is the single entry point for both.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import timm
import torch.nn as nn
from timm.models import register_model as _timm_register_model

_IMAGE_MODELS: set[str] = set()
_OTHER_MODELS: dict[str, Callable[..., nn.Module]] = {}

ModelFn = Callable[..., nn.Module]

# Every model built through the registry records how to build it again (name + constructor arguments), so
# that any artifact written from it, or from a folded/compressed/teleported copy, can rebuild the tree
# (:mod:`pdenets.artifacts`). ``copy.deepcopy`` carries the record along.
BUILD_ATTR = "_pdenets_build"
_TIMM_KEYS = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "pretrained_model_args", "cache_dir")


def record_build(model: nn.Module, name: str, kwargs: dict[str, Any]) -> nn.Module:
    """Attach ``{'model': name, 'create_kwargs': kwargs}`` (timm's loader-only keys dropped) to ``model``."""
    kw = {k: v for k, v in kwargs.items() if k not in _TIMM_KEYS}
    model.__dict__[BUILD_ATTR] = dict(model=name, create_kwargs=kw)
    return model


def build_record(model: nn.Module) -> dict[str, Any] | None:
    """The build record of ``model`` (see :func:`record_build`), or None."""
    rec = getattr(model, BUILD_ATTR, None)
    return dict(model=rec["model"], create_kwargs=dict(rec["create_kwargs"])) if rec else None


def register_image_model(fn: ModelFn) -> ModelFn:
    """Register ``fn`` with timm (``timm.create_model(fn.__name__)``) and list it as a pdenets model."""
    _IMAGE_MODELS.add(fn.__name__)

    @functools.wraps(fn)
    def build(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return record_build(fn(pretrained=pretrained, **kwargs), fn.__name__, kwargs)

    return _timm_register_model(build)


def register_model(fn: ModelFn) -> ModelFn:
    """Register a non-image model under ``fn.__name__`` in pdenets' own table."""
    if fn.__name__ in _OTHER_MODELS or fn.__name__ in _IMAGE_MODELS:
        raise ValueError(f"model name {fn.__name__!r} is already registered")
    _OTHER_MODELS[fn.__name__] = fn
    return fn


def list_models(pattern: str | None = None) -> list[str]:
    """Names of all models pdenets provides, sorted; ``pattern`` is an fnmatch filter such as ``'qlnet50_*'``."""
    import fnmatch

    names = sorted(_IMAGE_MODELS | set(_OTHER_MODELS))
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return names


def is_image_model(name: str) -> bool:
    return name in _IMAGE_MODELS


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build any pdenets model by name (timm models too, since image models delegate to timm).

    Unknown names raise timm's own ``RuntimeError('Unknown model ...')``.
    """
    if name in _OTHER_MODELS:
        kwargs.pop("pretrained", None)
        return record_build(_OTHER_MODELS[name](**kwargs), name, kwargs)
    return record_build(timm.create_model(name, **kwargs), name, kwargs)
