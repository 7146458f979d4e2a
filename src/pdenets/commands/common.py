"""What the commands share: the ``--checkpoint``/``--which`` options and the one loader
(:func:`pdenets.artifacts.load_artifact`), which takes every artifact pdenets writes; and the argparse
``type=`` helpers that check every number, device, ``-m KEY=VALUE`` and output path where it is parsed
(:func:`positive_int`, :func:`finite_float`, :func:`probability`, :func:`field_type` for the options of
:class:`~pdenets.train.config.TrainConfig`, ...), so that bad input is one line and exit code 2."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.nn as nn

from pdenets.errors import UsageError
from pdenets.train.config import NON_NEGATIVE, POSITIVE, SEED_RANGE, Range, check_device, check_out_path

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


# ---- argparse types ---------------------------------------------------------------------------------------


def number_type(kind: type, rng: Range, name: str) -> Callable[[str], Any]:
    """An argparse ``type=``: parse ``kind`` (int or float) and require it in ``rng`` (floats also finite)."""

    def parse(s: str) -> Any:
        try:
            v = kind(s)
        except ValueError:
            v = None
        if v is None or not rng.contains(v):
            raise argparse.ArgumentTypeError(f"expected {rng.describe(kind is int)}, got {s!r}")
        return v

    parse.__name__ = name
    return parse


positive_int = number_type(int, Range(1), "positive_int")
non_negative_int = number_type(int, NON_NEGATIVE, "non_negative_int")
seed_int = number_type(int, SEED_RANGE, "seed_int")
finite_float = number_type(float, Range(), "finite_float")
positive_float = number_type(float, POSITIVE, "positive_float")
non_negative_float = number_type(float, NON_NEGATIVE, "non_negative_float")
probability = number_type(float, Range(0, 1), "probability")


def field_type(name: str) -> Callable[[str], Any]:
    """The argparse ``type=`` of the :class:`~pdenets.train.config.TrainConfig` field ``name``: its annotated
    int/float type within its :data:`~pdenets.train.config.FIELD_RANGES` entry (one table for the command
    line and the YAML file)."""
    from pdenets.train.config import FIELD_RANGES, numeric_kind

    kind = numeric_kind(name)
    if kind is None:
        raise ValueError(f"TrainConfig.{name} is not a numeric field")
    return number_type(kind, FIELD_RANGES.get(name, Range()), name)


def boolean(s: str) -> bool:
    """argparse ``type=`` for an on/off option: 1/true/yes/on or 0/false/no/off."""
    v = s.lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def device_type(s: str) -> str:
    """argparse ``type=`` for ``--device``: auto, cpu or an available cuda[:N]."""
    try:
        return check_device(s, "device")
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("device ")) from None


def model_kwarg(s: str) -> tuple[str, Any]:
    """argparse ``type=`` for ``-m KEY=VALUE``: (key, the value read as YAML)."""
    import yaml

    k, sep, v = s.partition("=")
    if not sep or not k.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {s!r}")
    try:
        return k.strip(), yaml.safe_load(v)
    except yaml.YAMLError as e:
        why = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise argparse.ArgumentTypeError(f"{s!r}: the value is not valid YAML ({why})") from None


def check_out(value: Any, option: str = "--out", kind: str = "dir", suffixes: tuple[str, ...] = ()) -> Path:
    """Refuse an unusable output path before any work (:func:`pdenets.train.config.check_out_path`)."""
    return check_out_path(value, option, kind, suffixes)
