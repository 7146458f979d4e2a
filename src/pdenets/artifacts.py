"""The model artifact: the one format of every file that holds a model (docs/design.md §8).

An artifact is a safetensors file (``model.safetensors``) whose metadata key ``pdenets`` holds JSON:

* ``format`` — ``"pdenets-artifact/1"``;
* ``model`` and ``create_kwargs`` — the registered name and constructor arguments that build the
  original module tree (recorded by :func:`pdenets.models.create_model` on every model it builds);
* ``modules`` — the modules that differ from that tree, each as ``{"name", "class", "config"}``
  (a folded derivative conv, an ``Identity`` where a BatchNorm was, a gauge-fixed reader ...); the class
  is a ``torch.nn`` or ``pdenets`` module class, rebuilt from ``config`` by its ``from_artifact_config``
  classmethod (or with no arguments);
* ``edits`` — the structural edits applied, in order, for people and tools (``fold_bn``,
  ``compress_widths``, ``gauge_fix``, ``teleport`` ...);
* anything else the writer adds (data set, image size, class names, epoch, metrics ...).

Tensor shapes come from the file itself, so widths changed by compression need no special record:
:func:`load_artifact` builds the original tree, swaps in the recorded modules, resizes every parameter and
buffer to the stored shape and dtype, and loads the state dict strictly. A directory artifact also holds
``meta.json`` (the same metadata, for people). Nothing here unpickles anything: a file that is not
safetensors (e.g. a crafted ``.pth``) is refused before any of its bytes are interpreted as objects.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from pdenets.errors import UsageError
from pdenets.models.registry import BUILD_ATTR, build_record, create_model

FORMAT = "pdenets-artifact/1"
WEIGHTS = "model.safetensors"
META = "meta.json"
EDITS_ATTR = "_pdenets_edits"
_ALLOWED_PREFIXES = ("pdenets.", "torch.nn.")
# Model attributes that state widths and class counts (timm's interface: ``reset_classifier`` and
# ``features_only`` read them). They follow the tensor shapes, so a compressed model or a reset classifier
# changes them; the artifact records those that differ from a fresh build (``attributes``) and sets them again.
SHAPE_ATTRS = ("num_classes", "num_features", "head_hidden_size", "feature_info", "widths")

__all__ = ["FORMAT", "META", "WEIGHTS", "ArtifactError", "add_edit", "artifact_bytes", "atomic_write_bytes", "edits",
           "feature_extractor", "load", "load_artifact", "read_artifact", "resolve_artifact", "save_artifact",
           "tensor_checksum", "verify_checksums", "write_error"]


class ArtifactError(UsageError):
    """An artifact that cannot be found, read or rebuilt (the message names the file)."""


# ---- the record a model carries ------------------------------------------------------------------------


def add_edit(model: nn.Module, op: str, **info: Any) -> None:
    """Append a structural edit (``op`` and JSON-able details) to the history ``model`` carries."""
    model.__dict__.setdefault(EDITS_ATTR, []).append(dict(op=op, **info))


def edits(model: nn.Module) -> list[dict[str, Any]]:
    """The structural edits applied to ``model`` so far (empty for a freshly built model)."""
    return list(getattr(model, EDITS_ATTR, []))


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DDP


def _class_path(mod: nn.Module) -> str:
    cls = type(mod)
    return f"{cls.__module__}.{cls.__qualname__}"


def _reference(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """The freshly built tree (built on the meta device: no memory, no init cost)."""
    try:
        with torch.device("meta"):
            return create_model(name, **copy.deepcopy(kwargs))
    except Exception:  # a constructor that needs real tensors
        return create_model(name, **copy.deepcopy(kwargs))


def _module_specs(model: nn.Module, reference: nn.Module) -> list[dict[str, Any]]:
    """The top-most modules of ``model`` whose class differs from the freshly built tree's."""
    ref = {n: type(m) for n, m in reference.named_modules()}
    specs: list[dict[str, Any]] = []
    replaced: list[str] = []
    for mname, mod in model.named_modules():
        if not mname or ref.get(mname) is type(mod):
            continue
        if any(mname.startswith(r + ".") for r in replaced):
            continue
        path = _class_path(mod)
        if not path.startswith(_ALLOWED_PREFIXES):
            raise ArtifactError(f"cannot save module {mname!r} of class {path}: only torch.nn and pdenets "
                                f"modules can be rebuilt from an artifact")
        cfg = mod.artifact_config() if hasattr(mod, "artifact_config") else {}
        specs.append(dict(name=mname, **{"class": path}, config=cfg))
        replaced.append(mname)
    return specs


def _metadata(model: nn.Module, meta: dict[str, Any] | None) -> dict[str, Any]:
    rec = build_record(model)
    if rec is None:
        raise ArtifactError("this model carries no build record (name and constructor arguments): build it with "
                            "pdenets.create_model(name, ...) or load it with pdenets.load(path)")
    name, kwargs = rec["model"], rec["create_kwargs"]
    ref = _reference(name, kwargs)
    out = dict(meta or {})
    out.update(format=FORMAT, model=name, create_kwargs=kwargs, modules=_module_specs(model, ref),
               edits=edits(model), params=sum(p.numel() for p in model.parameters()))
    if attrs := _attributes(model, ref):
        out["attributes"] = attrs
    return out


def _jsonable(value: Any) -> Any:
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return None


def _attributes(model: nn.Module, reference: nn.Module) -> dict[str, Any]:
    """The :data:`SHAPE_ATTRS` of ``model`` that differ from the freshly built tree's (JSON values)."""
    out = {}
    for k in SHAPE_ATTRS:
        if hasattr(model, k) and hasattr(reference, k):
            v = _jsonable(getattr(model, k))
            if v is not None and v != _jsonable(getattr(reference, k)):
                out[k] = v
    return out


def tensor_checksum(t: torch.Tensor) -> str:
    """SHA-256 (hex) of a tensor's raw bytes in row-major order (dtype and shape are checked separately)."""
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return hashlib.sha256(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"").hexdigest()


def artifact_bytes(model: nn.Module, meta: dict[str, Any] | None = None) -> tuple[bytes, dict[str, Any]]:
    """(safetensors bytes, metadata) of ``model``'s artifact; the metadata's ``checksums`` maps every tensor
    to :func:`tensor_checksum`, verified by :func:`read_artifact`."""
    from safetensors.torch import save as st_save

    model = _unwrap(model)
    full = _metadata(model, meta)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    full["checksums"] = {k: tensor_checksum(v) for k, v in tensors.items()}
    return st_save(tensors, metadata={"pdenets": json.dumps(full, default=str)}), full


def write_error(path: str | os.PathLike, e: BaseException) -> ArtifactError:
    """The one-line error for a failed write of ``path`` (full disk, quota, read-only, permissions)."""
    detail = getattr(e, "strerror", None) or (str(e).splitlines()[0] if str(e) else type(e).__name__)
    return ArtifactError(f"cannot write {str(path)!r}: {detail} (disk full, quota, or no permission?); nothing "
                         f"was replaced")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsync and ``os.replace`` (never a partial file).
    A failed write (e.g. a full disk) removes the temporary file, leaves ``path`` as it was and raises
    :func:`write_error`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_error(path, e) from None


def save_artifact(model: nn.Module, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as an artifact: ``path`` ending in ``.safetensors`` is the file itself, any other
    path is a directory that receives ``model.safetensors`` and ``meta.json``. Returns the weights file."""
    p = Path(path)
    if p.suffix in (".pth", ".pt", ".pkl", ".bin"):
        raise ArtifactError(f"{str(p)!r}: pdenets writes models as safetensors; give a directory or a "
                            f".safetensors file")
    data, full = artifact_bytes(model, meta)
    if p.suffix == ".safetensors":
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(p, data)
        return p
    if p.exists() and not p.is_dir():
        raise ArtifactError(f"--out {str(p)!r} is a file; give a directory or a .safetensors file")
    p.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(p / WEIGHTS, data)
    atomic_write_bytes(p / META, json.dumps(full, indent=2, default=str).encode())
    return p / WEIGHTS


# ---- finding and reading -----------------------------------------------------------------------------


def resolve_artifact(path: str | os.PathLike, which: str = "best") -> Path:
    """The weights file of an artifact given as a file, an artifact/checkpoint directory or a run directory
    (``which``: 'best' or 'last' checkpoint of a run; ``NAME.old`` is used when a kill interrupted a swap)."""
    if which not in ("best", "last"):
        raise ArtifactError(f"which must be 'best' or 'last', got {which!r}")
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if not p.exists():
        raise ArtifactError(f"checkpoint {str(p)!r} does not exist")
    other = "last" if which == "best" else "best"
    candidates: list[Path] = []
    for base in (p, p / "checkpoints"):
        candidates += [base, base / which, base / f"{which}.old", base / other, base / f"{other}.old"]
    for c in candidates:
        if (c / WEIGHTS).is_file():
            return c / WEIGHTS
    raise ArtifactError(f"no model under {str(p)!r} (expected {WEIGHTS} in it, in checkpoints/{which} "
                        f"or checkpoints/{other})")


def read_artifact(path: str | os.PathLike, which: str = "best") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, metadata) of an artifact; one-line :class:`ArtifactError` naming the file otherwise."""
    from safetensors import safe_open

    f = resolve_artifact(path, which)
    try:
        with safe_open(str(f), framework="pt", device="cpu") as sf:
            meta_s = (sf.metadata() or {}).get("pdenets")
            tensors = {k: sf.get_tensor(k) for k in sf.keys()}
    except Exception as e:  # safetensors raises its own error types for foreign, truncated or corrupt files
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ArtifactError(f"cannot read {str(f)!r}: not a pdenets model file (safetensors) or corrupt "
                            f"({detail})") from None
    if meta_s is None:
        raise ArtifactError(f"{str(f)!r} has no pdenets metadata (not written by pdenets?)")
    try:
        meta = json.loads(meta_s)
    except json.JSONDecodeError:
        raise ArtifactError(f"{str(f)!r} has corrupt pdenets metadata") from None
    if not isinstance(meta, dict) or "model" not in meta:
        raise ArtifactError(f"{str(f)!r}: pdenets metadata without a model name")
    verify_checksums(tensors, meta, f)
    return tensors, meta


def verify_checksums(tensors: dict[str, torch.Tensor], meta: dict[str, Any], where: Path) -> None:
    """Compare every tensor with the checksum the writer recorded (artifacts of pdenets < 1.1 have none)."""
    sums = meta.get("checksums")
    if sums is None:
        return
    if set(sums) != set(tensors):
        raise ArtifactError(f"{str(where)!r} is corrupt: its tensors do not match the list it was written with")
    bad = [k for k, v in tensors.items() if tensor_checksum(v) != sums[k]]
    if bad:
        raise ArtifactError(f"{str(where)!r} is corrupt: {len(bad)} tensor(s) fail their checksum (first: "
                            f"{bad[0]}); its bytes changed after it was written")


# ---- rebuilding ----------------------------------------------------------------------------------------


def _import_class(path: str, where: Path) -> type:
    mod_name, _, cls_name = path.rpartition(".")
    if not path.startswith(_ALLOWED_PREFIXES) or not mod_name:
        raise ArtifactError(f"{str(where)!r}: module class {path!r} is not a torch.nn or pdenets class")
    try:
        obj: Any = importlib.import_module(mod_name)
        for part in cls_name.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        raise ArtifactError(f"{str(where)!r}: unknown module class {path!r} (written by a newer pdenets?)") from None
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise ArtifactError(f"{str(where)!r}: {path!r} is not a module class")
    return obj


def _set_module(model: nn.Module, name: str, mod: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, mod)


def _conform(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Give every parameter/buffer named in ``tensors`` the stored shape and dtype (creating missing ones,
    e.g. the bias a folded BatchNorm leaves on its conv)."""
    for key, v in tensors.items():
        mod_name, _, attr = key.rpartition(".")
        try:
            mod = model.get_submodule(mod_name) if mod_name else model
        except AttributeError:
            continue  # reported by load_state_dict
        cur = getattr(mod, attr, None)
        if cur is not None and cur.shape == v.shape and cur.dtype == v.dtype:
            continue
        if attr in mod._buffers:
            mod._buffers[attr] = torch.empty_like(v)
        else:
            req = cur.requires_grad if isinstance(cur, nn.Parameter) else v.is_floating_point()
            setattr(mod, attr, nn.Parameter(torch.empty_like(v), requires_grad=req))


def rebuild(meta: dict[str, Any], tensors: dict[str, torch.Tensor], where: Path) -> nn.Module:
    """The module tree described by ``meta`` with ``tensors`` loaded."""
    kwargs = meta.get("create_kwargs") or {}
    try:
        model = create_model(meta["model"], **copy.deepcopy(kwargs))
    except (RuntimeError, TypeError, ValueError) as e:
        raise ArtifactError(f"{str(where)!r}: cannot build model {meta['model']!r}: {e}") from None
    for spec in sorted(meta.get("modules", []), key=lambda s: s["name"].count(".")):
        cls = _import_class(spec["class"], where)
        cfg = spec.get("config") or {}
        mod = cls.from_artifact_config(cfg) if hasattr(cls, "from_artifact_config") else cls(**cfg)
        _set_module(model, spec["name"], mod)
    _conform(model, tensors)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise ArtifactError(f"{str(where)!r} does not match model {meta['model']!r}: missing "
                            f"{', '.join(missing[:3]) or '-'}{' ...' if len(missing) > 3 else ''}; unexpected "
                            f"{', '.join(unexpected[:3]) or '-'}{' ...' if len(unexpected) > 3 else ''}")
    for k, v in (meta.get("attributes") or {}).items():
        if k in SHAPE_ATTRS and hasattr(model, k):
            setattr(model, k, tuple(v) if isinstance(getattr(model, k), tuple) else v)
    model.__dict__[EDITS_ATTR] = list(meta.get("edits", []))
    model.__dict__[BUILD_ATTR] = dict(model=meta["model"], create_kwargs=kwargs)
    return model


def load_artifact(path: str | os.PathLike, which: str = "best", device: str | torch.device = "cpu"
                  ) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of any pdenets artifact — a ``.safetensors`` file, an artifact or checkpoint
    directory, or a run directory (``which`` picks its 'best' or 'last' checkpoint) — and return it in eval
    mode with its metadata (``meta['file']`` is the weights file read)."""
    f = resolve_artifact(path, which)
    tensors, meta = read_artifact(f)
    model = rebuild(meta, tensors, f)
    meta["file"] = str(f)
    return model.to(device).eval(), meta


def load(path: str | os.PathLike, which: str = "best", device: str | torch.device = "cpu",
         features_only: bool = False, out_indices: tuple[int, ...] | None = None) -> nn.Module:
    """``pdenets.load(path)``: the model of any artifact (see :func:`load_artifact`), in eval mode.

    ``features_only=True`` returns its feature extractor instead (:func:`feature_extractor`), as
    ``timm.create_model(name, features_only=True, out_indices=...)`` does for a fresh model — with the
    widths of the loaded one (a compressed model's feature maps have the compressed widths)."""
    model = load_artifact(path, which, device)[0]
    return feature_extractor(model, out_indices) if features_only else model


def feature_extractor(model: nn.Module, out_indices: tuple[int, ...] | None = None) -> nn.Module:
    """timm's ``features_only`` wrapper around a copy of a built model, in eval mode.

    ``FeatureGetterNet`` (the model's ``forward_intermediates``) where the model has one, else
    ``FeatureHookNet`` without rewriting: the model's own forward runs (classifier removed) and hooks on the
    ``feature_info`` modules collect the maps — unlike ``FeatureListNet``, this does not depend on the order in
    which the children were registered. ``out_indices`` (default: every ``feature_info`` entry) picks the maps;
    ``.feature_info.channels()`` gives their widths, the model's current ones (a compressed model carries them,
    docs/design.md §13).
    """
    from timm.models._features import FeatureGetterNet, FeatureHookNet

    info = getattr(model, "feature_info", None)
    if not info:
        raise ArtifactError(f"{type(model).__name__} declares no feature_info: it has no features_only form")
    idx = tuple(range(len(info))) if out_indices is None else tuple(out_indices)
    if any(not isinstance(i, int) or not -len(info) <= i < len(info) for i in idx):
        raise ArtifactError(f"out_indices {idx} out of range for {len(info)} feature levels")
    model = copy.deepcopy(model)
    if callable(getattr(model, "forward_intermediates", None)):
        return FeatureGetterNet(model, out_indices=idx).eval()
    return FeatureHookNet(model, out_indices=idx, no_rewrite=True).eval()
