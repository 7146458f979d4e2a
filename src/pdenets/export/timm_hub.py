"""Hub-ready folders: what ``timm.models.push_to_hf_hub`` uploads and ``timm.create_model("local-dir:DIR")`` reads.

The layout is timm's ``save_for_hf(model, DIR, safe_serialization=True)`` (docs/design.md §13):

* ``config.json`` — written by timm's own ``save_config_for_hf``: ``architecture`` (the registered name),
  ``num_classes``, ``num_features``, ``global_pool``, ``label_names`` (the data set's class names when the
  artifact knows them), ``model_args`` (the constructor arguments) and ``pretrained_cfg`` (input size, mean/std
  and crop of the data the weights were trained on, where known);
* ``model.safetensors`` — the state dict. Its safetensors metadata is also a pdenets artifact record, so
  ``pdenets.load(DIR)`` and every ``--checkpoint`` read the folder as well.

timm rebuilds a model from the name and ``model_args`` only (``timm.create_model("local-dir:DIR",
pretrained=True)``, after ``import pdenets`` registers the names), so a folder is written only for a model whose
modules and tensor shapes are those of a fresh build from its name and arguments (:func:`timm_rebuild_problem`).
A folded, teleported, gauge-fixed or compressed model is not: folding replaces modules, and QLNet's arguments
give one width per stage, not the separate stream and inner widths that compression leaves — those go to ONNX
or stay pdenets artifacts.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from pdenets.errors import UsageError

CONFIG = "config.json"
WEIGHTS = "model.safetensors"

__all__ = ["CONFIG", "WEIGHTS", "check_timm_folder", "data_config", "save_timm_folder", "timm_model_args",
           "timm_rebuild_problem"]


def timm_model_args(model: nn.Module) -> dict[str, Any]:
    """The constructor arguments timm will rebuild ``model`` with: its build record's, with the current class
    count (a reset classifier)."""
    from pdenets.models.registry import build_record

    rec = build_record(model)
    kwargs = dict(rec["create_kwargs"]) if rec else {}
    if isinstance(getattr(model, "num_classes", None), int):
        kwargs["num_classes"] = model.num_classes
    return kwargs


def _first_difference(model: nn.Module, ref: nn.Module) -> str:
    """The first module class or tensor shape of ``model`` that differs from ``ref`` (empty if none)."""
    mods, ref_mods = dict(model.named_modules()), dict(ref.named_modules())
    for name, m in mods.items():
        if name and type(ref_mods.get(name)) is not type(m):
            was = type(ref_mods[name]).__name__ if name in ref_mods else "nothing"
            return f"module {name} is {type(m).__name__} where a fresh build has {was}"
    sd, ref_sd = model.state_dict(), ref.state_dict()
    for k, v in sd.items():
        if k not in ref_sd:
            return f"tensor {k} is not in a fresh build"
        if tuple(v.shape) != tuple(ref_sd[k].shape):
            return f"tensor {k} is {'x'.join(map(str, v.shape))}, a fresh build's {'x'.join(map(str, ref_sd[k].shape))}"
    missing = [k for k in ref_sd if k not in sd]
    return f"tensor {missing[0]} of a fresh build is missing" if missing else ""


def timm_rebuild_problem(model: nn.Module) -> str:
    """Why timm could not rebuild ``model`` from its registered name and :func:`timm_model_args` (empty string if
    it can): no build record or no ``pretrained_cfg``, or modules / tensor shapes that differ from a fresh build
    (built on the meta device) — with the structural edits that made them differ."""
    from pdenets.artifacts import edits
    from pdenets.models.registry import build_record, create_model, is_image_model

    rec = build_record(model)
    if rec is None:
        return "it carries no build record (build it with pdenets.create_model or load it with pdenets.load)"
    if not is_image_model(rec["model"]) and not _is_timm(rec["model"]):
        return f"{rec['model']} is not a timm-registered image model"
    if not isinstance(getattr(model, "pretrained_cfg", None), dict):
        return "it has no timm pretrained_cfg (it was not built by timm's factory)"
    try:
        with torch.device("meta"):
            ref = create_model(rec["model"], **timm_model_args(model))
    except Exception as e:  # any constructor failure means timm cannot rebuild it either
        return f"{rec['model']} cannot be rebuilt from its arguments ({type(e).__name__}: {e})"
    diff = _first_difference(model, ref)
    if not diff:
        return ""
    ops = list(dict.fromkeys(e["op"] for e in edits(model)))
    why = f"its structure was changed by {', '.join(ops)}" if ops else "its structure differs from a fresh build"
    note = ("; QLNet's widths= sets a stage's stream and inner widths together, compression changes the stream's "
            "only" if "compress_widths" in ops else "")
    return f"{why} ({diff}), which no constructor arguments of {rec['model']} express{note}"


def _is_timm(name: str) -> bool:
    import timm

    return timm.is_model(name)


def _dataset_stats(meta: dict[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the inputs in timm's convention (images in [0, 1]) for the artifact's data set, where known."""
    from pdenets.datasets.vision import TORCHVISION_SETS

    name = meta.get("dataset")
    if name == "digits":
        from pdenets.datasets.digits import DigitsDataset

        d = DigitsDataset("test", int(meta.get("img_size") or 16))
        return (d.mean,), (d.std,)
    if name in TORCHVISION_SETS:
        return tuple(TORCHVISION_SETS[name]["mean"]), tuple(TORCHVISION_SETS[name]["std"])
    return (), ()


def data_config(model: nn.Module, meta: dict[str, Any]) -> dict[str, Any]:
    """The preprocessing of the data the weights were trained on, from an artifact's metadata: ``input_size``
    (channels, image size), ``crop_pct``, ``mean``/``std`` (digits and the torchvision sets). Empty for a
    model built by name."""
    out: dict[str, Any] = {}
    if meta.get("in_chans") or meta.get("img_size"):
        c, h, w = model.pretrained_cfg.get("input_size", (3, 224, 224))
        c = int(meta.get("in_chans") or getattr(model, "in_chans", c))
        h = w = int(meta["img_size"]) if meta.get("img_size") else h
        out["input_size"] = (c, h, w)
    if meta.get("crop_pct") is not None:
        out["crop_pct"] = float(meta["crop_pct"])
    mean, std = _dataset_stats(meta)
    if mean:
        out["mean"], out["std"] = mean, std
    return out


def _write_config(model: nn.Module, path: Path, meta: dict[str, Any]) -> None:
    """``config.json`` by timm's own ``save_config_for_hf`` (the file ``push_to_hf_hub`` uploads)."""
    from timm.models._hub import save_config_for_hf

    model_config: dict[str, Any] = {}
    names = meta.get("class_names")
    if isinstance(names, list) and len(names) == getattr(model, "num_classes", None):
        model_config["label_names"] = [str(n) for n in names]
    data = data_config(model, meta)
    extra: dict[str, Any] = {}
    if "data_config" in inspect.signature(save_config_for_hf).parameters:
        extra["data_config"] = data
    elif data:  # older timm: the preprocessing goes into pretrained_cfg directly
        model_config["pretrained_cfg"] = data
    try:
        save_config_for_hf(model, str(path), model_config=model_config, model_args=timm_model_args(model), **extra)
    except (TypeError, ValueError) as e:
        raise UsageError(f"cannot write {str(path)!r} for timm: {e}") from None


def save_timm_folder(model: nn.Module, out: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as a hub-ready folder ``out`` (``config.json`` + ``model.safetensors``; see the module
    docstring) and return it. ``meta``: the artifact metadata it came from (data set, image size, class names,
    kept in the weights file's pdenets record). A model timm cannot rebuild raises :class:`UsageError`."""
    from pdenets.artifacts import artifact_bytes, atomic_write_bytes

    problem = timm_rebuild_problem(model)
    if problem:
        raise UsageError(f"timm rebuilds a model from its name and model_args only, and {problem}: export it as "
                         f"ONNX (--format onnx) or share the pdenets artifact itself (pdenets.load)")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a file; --format timm writes a folder")
    out.mkdir(parents=True, exist_ok=True)
    keep = {k: v for k, v in (meta or {}).items()
            if k in ("dataset", "img_size", "in_chans", "crop_pct", "class_names", "num_classes", "kind",
                     "val_top1", "test_top1", "epoch")}
    data, _ = artifact_bytes(model, dict(keep, source=(meta or {}).get("file")))
    atomic_write_bytes(out / WEIGHTS, data)
    _write_config(model, out / CONFIG, meta or {})
    return out


def check_timm_folder(folder: str | Path, model: nn.Module, x: torch.Tensor) -> float:
    """Max |timm.create_model("local-dir:folder", pretrained=True)(x) − model(x)| (both in eval mode)."""
    import timm

    rebuilt = timm.create_model(f"local-dir:{Path(folder).resolve()}", pretrained=True).eval()
    rebuilt = rebuilt.to(next(model.parameters()).dtype)
    was = model.training
    model.eval()
    with torch.no_grad():
        err = float((rebuilt(x) - model(x)).abs().max())
    model.train(was)
    return err
