"""Table 1 of Liu-Shao-Bai as an experiment: every model trained with one recipe and the same seeds.

Table 1 compares ResNet50, MobileNet_v3_large and the blocks of Eqs. (3)-(7) with their activation placements
"under one identical training strategy". :func:`run_comparison` trains every (model, seed) pair with the
trainer (:class:`pdenets.train.trainer.Trainer`), each into its own run directory ``DIR/runs/<key>-s<seed>``,
and writes the table (docs/design.md §15):

* ``DIR/table.md`` — the form of Table 1: model, parameters, GMACs, test top-1 as mean ± std over the seeds
  (the sample standard deviation, ddof = 1), activation, and the per-seed values the statistics come from;
* ``DIR/table.json`` — the same with every run's summary values and the settings;
* ``DIR/top1_vs_params.png`` — test top-1 against parameters, error bars ± one std;
* ``DIR/compare.json`` — the settings of the comparison (the resolved training configuration without the
  per-run fields), so that a later invocation on the same ``DIR`` either continues it or is refused.

Resumable: a run whose ``summary.json`` says ``completed`` (or ``diverged``: the NaN guard gave up, an outcome
of the recipe) is reused; any other is continued with ``resume='auto'`` (exact and kill-safe, §9.1), which
starts it afresh when it had not finished its first epoch. So a killed comparison continues where it stopped,
and a comparison can be extended by more models or seeds.

Model specs: ``NAME`` or ``NAME:KEY=VALUE[:KEY=VALUE...]`` (values read as YAML, like ``-m``), e.g.
``qlnet18_eq3_small:act=relu@all``; any timm model name works. The presets ``table1`` (the paper's twelve
rows) and ``activations`` (the four placements of Eq. (3)) are built at a *layout*: ``50`` (the paper's
ResNet-50 skeleton, for images of 128 px and more) or ``18_small`` (one block per stage, 3×3 stem, half
widths; the default below 128 px), any of ``50``/``26``/``18`` with or without ``_small``.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pdenets.errors import UsageError

__all__ = ["LAYOUTS", "PRESETS", "ModelSpec", "default_layout", "mean_std", "parse_models", "preset_models",
           "run_comparison", "table_markdown"]

LAYOUTS = ("50", "26", "18", "50_small", "26_small", "18_small")
STD_NOTE = "sample standard deviation over seeds (ddof = 1)"
FINAL = ("completed", "diverged")  # a run with one of these statuses is not trained again
# Fields of the training configuration that differ between the runs of one comparison, or do not change a result.
PER_RUN = ("model", "model_kwargs", "seed", "out", "resume", "overwrite", "progress", "report", "stop_after",
           "tensorboard", "log_interval", "workers", "device", "init_from", "init_which", "data_dir")


@dataclass(frozen=True)
class ModelSpec:
    """One row: a registered model name (pdenets' or timm's), its constructor arguments and a label."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    @property
    def text(self) -> str:
        """The spec as written on the command line: ``NAME[:KEY=VALUE...]``."""
        return ":".join([self.name, *(f"{k}={_yaml(v)}" for k, v in self.kwargs.items())])

    @property
    def key(self) -> str:
        """A directory-safe identifier of the row (its runs are ``runs/<key>-s<seed>``)."""
        return re.sub(r"[^A-Za-z0-9_.=@,+-]", "", self.text.replace(":", "+").replace(" ", ""))


def _yaml(v: Any) -> str:
    import yaml

    return yaml.safe_dump(v, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


# ---- model lists ------------------------------------------------------------------------------------------

# Table 1's rows: (label, variant suffix of the QL skeleton or a timm name, constructor arguments).
_TABLE1: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("ResNet (bottleneck)", "resnet", {}),
    ("MobileNet_v3_large", "timm:mobilenetv3_large_100", {}),
    ("Eq. (3)", "eq3", dict(act="relu@all")),
    ("Eq. (3)", "eq3", dict(act="hardtanh@ds")),
    ("Eq. (3)", "eq3", dict(act="hardball@ds")),
    ("Eq. (3)", "eq3", {}),
    ("Eq. (3) (no ws)", "eq3_nows", {}),
    ("Eq. (3) (no ws, x6)", "eq3_nows_x6", {}),
    ("Eq. (4)", "eq4", {}),
    ("Eq. (5)", "eq5", {}),
    ("Eq. (6)", "eq6", {}),
    ("Eq. (7) (no ws, x6)", "eq7_nows_x6", {}),
)
_ACTIVATIONS = tuple(r for r in _TABLE1[2:6])
PRESETS: dict[str, tuple[tuple[str, str, dict[str, Any]], ...]] = {"table1": _TABLE1, "activations": _ACTIVATIONS}


def default_layout(img_size: int) -> str:
    """The QL skeleton at a data set's scale: the paper's ``50`` (ResNet-50 layout, ImageNet stem) from 128 px
    on, else ``18_small`` (one block per stage, 3×3 stem without max-pool, widths 32-256)."""
    return "50" if img_size >= 128 else "18_small"


def preset_models(preset: str, layout: str) -> list[ModelSpec]:
    """The rows of ``preset`` ('table1' or 'activations') on the QL skeleton ``layout`` (:data:`LAYOUTS`)."""
    if preset not in PRESETS:
        raise UsageError(f"unknown model preset {preset!r}; expected one of {', '.join(PRESETS)}")
    if layout not in LAYOUTS:
        raise UsageError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    depth, _, small = layout.partition("_")
    specs = []
    for label, variant, kwargs in PRESETS[preset]:
        name = variant[5:] if variant.startswith("timm:") else f"qlnet{depth}_{variant}" + ("_small" if small else "")
        specs.append(ModelSpec(name, dict(kwargs), label))
    return specs


def _split_top(text: str) -> list[str]:
    """``text`` split at the commas outside brackets (``a:widths=[8,8],b`` → two items)."""
    items, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    return [s.strip() for s in [*items, cur] if s.strip()]


def parse_model_spec(text: str) -> ModelSpec:
    """``NAME[:KEY=VALUE...]`` → :class:`ModelSpec` (values read as YAML)."""
    import yaml

    name, *parts = text.split(":")
    kwargs: dict[str, Any] = {}
    for p in parts:
        k, sep, v = p.partition("=")
        if not sep or not k.strip():
            raise UsageError(f"model {text!r}: expected NAME:KEY=VALUE[:KEY=VALUE...], got {p!r}")
        try:
            kwargs[k.strip()] = yaml.safe_load(v)
        except yaml.YAMLError:
            raise UsageError(f"model {text!r}: the value of {k.strip()!r} is not valid YAML") from None
    if not name.strip():
        raise UsageError(f"model {text!r}: no model name")
    return ModelSpec(name.strip(), kwargs)


def parse_models(text: str, layout: str) -> list[ModelSpec]:
    """A ``--models`` list: comma-separated specs and preset names (``table1``, ``activations``), in order,
    without repeats."""
    specs: list[ModelSpec] = []
    for item in _split_top(text):
        for s in preset_models(item, layout) if item in PRESETS else [parse_model_spec(item)]:
            if s.key not in {x.key for x in specs}:
                specs.append(s)
    if not specs:
        raise UsageError("--models is empty")
    return specs


# ---- statistics and the table -----------------------------------------------------------------------------


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """(mean, sample standard deviation with ddof = 1) of ``values``; the std is None for fewer than 2."""
    n = len(values)
    if n == 0:
        return None, None
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def describe(spec: ModelSpec, data_kwargs: dict[str, Any]) -> tuple[str, str]:
    """(row label, activation) of a model built with ``data_kwargs`` (``num_classes``, ``in_chans``, ...) and the
    spec's arguments: the paper's names for the QL rows — "Eq. (3) (no ws, x6)" — and ``act@placement``; for any
    other model its name and "(its own)"."""
    import torch

    from pdenets.models import create_model

    with torch.device("meta"):
        m = create_model(spec.name, **{**data_kwargs, **spec.kwargs})
    block, act = getattr(m, "block_name", None), getattr(m, "act_name", None)
    if block is None or act is None:
        return spec.label or spec.name, "(its own)"
    activation = f"{act}@{m.act_placement}"
    if spec.label:
        return spec.label, activation
    if block.startswith("resnet_"):
        return f"ResNet ({block[7:]})", activation
    first = m.layer1[0]
    flags = [f for f, on in (("no ws", not getattr(first, "weight_sharing", True)),
                             (f"x{getattr(first, 'multiplier', 4)}", getattr(first, "multiplier", 4) != 4)) if on]
    eq = re.fullmatch(r"eq(\d+)(p?)", block)
    label = (f"Eq. ({eq.group(1)})" + (" + P" if eq.group(2) else "")) if eq else block
    return label + (f" ({', '.join(flags)})" if flags else ""), activation


def _count(n: int) -> str:
    """A parameter count as in Table 1: 8.61M; 316k below a million."""
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}k" if n >= 1e4 else f"{n:,}"


def _fmt(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "—"
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"


def table_markdown(table: dict[str, Any]) -> str:
    """``table.md``: the rows in the form of Table 1, with the command, settings and statistic named."""
    s = table["settings"]
    img = s.get("img_size")
    size, px, what = (f"{img}×{img} image", f", {img} px", "images") if img else ("input", "", "samples")
    lines = [f"# Table 1 comparison on {s['dataset']}", "",
             f"Command: `{table['command']}`" if table.get("command") else "", "",
             f"Recipe `{s.get('recipe')}`: {s['epochs']} epochs, batch {s['batch_size']}, {s['opt']} lr {s['lr']:g}"
             f"{px}; seeds {', '.join(map(str, table['seeds']))}. Top-1: the test split "
             f"({table.get('test_samples') or '?'} {what}), scored once with the best-validation weights; "
             f"mean ± {STD_NOTE}. GMACs of one {size}.", "",
             "| model | spec | #parameters | GMACs | top-1 (%) | activation | per seed (top-1 %) |",
             "|---|---|---:|---:|---:|---|---|"]
    for r in table["rows"]:
        seeds = ", ".join(f"s{x['seed']}: {x['test_top1']:.2f}" + ("†" if x["status"] == "diverged" else "")
                          for x in r["runs"] if x["test_top1"] is not None)
        gm = f"{r['gmacs']:.3g}" if r["gmacs"] is not None else "—"
        lines.append(f"| {r['label']} | `{r['spec']}` | {_count(r['params'])} | {gm} | "
                     f"{_fmt(r['test_top1_mean'], r['test_top1_std'])} | {r['activation']} | {seeds or '—'} |")
    if any(x["status"] == "diverged" for r in table["rows"] for x in r["runs"]):
        lines += ["", "† the NaN guard stopped this run (status diverged); its best-validation weights were scored."]
    pending = [r["spec"] for r in table["rows"] if r["n"] < len(table["seeds"])]
    if pending:
        lines += ["", f"Incomplete rows (runs missing): {', '.join(pending)}."]
    return "\n".join(lines).replace("\n\n\n", "\n\n") + "\n"


def plot_table(table: dict[str, Any], path: Path, window: float = 15.0) -> Path:
    """Test top-1 against parameters (log scale), error bars ± one sample std, one numbered marker per row (the
    legend names them). Rows more than ``window`` points below the best are drawn as ▼ on the lower edge, their
    value in the legend, so that they do not flatten the others."""
    from pdenets.utils.plotting import save_figure, subplots

    rows = [r for r in table["rows"] if r["test_top1_mean"] is not None]
    fig, ax = subplots(figsize=(9, 5))
    if rows:
        best = max(r["test_top1_mean"] for r in rows)
        shown = [r for r in rows if r["test_top1_mean"] >= best - window]
        lo = min(r["test_top1_mean"] - (r["test_top1_std"] or 0) for r in shown) - 0.5
        hi = min(100.0, max(r["test_top1_mean"] + (r["test_top1_std"] or 0) for r in shown)) + 0.5
        for i, r in enumerate(rows, 1):
            ql = r["label"].startswith("Eq.")
            name = f"{i}. {r['label']}" + (f" {r['activation']}" if ql else "")
            if r["test_top1_mean"] < lo:
                below = _fmt(r["test_top1_mean"], r["test_top1_std"])
                ax.plot(r["params"], lo, "v", color="0.4", ms=7, label=f"{name}: {below} (below the axis)")
                y = lo
            else:
                ax.errorbar(r["params"], r["test_top1_mean"], yerr=r["test_top1_std"] or 0, fmt="o" if ql else "s",
                            capsize=3, ms=5, label=name, color=f"C{(i - 1) % 10}")
                y = r["test_top1_mean"]
            ax.annotate(str(i), (r["params"], y), textcoords="offset points", xytext=(4, 3), fontsize=7)
        ax.set_ylim(lo - 0.3, hi)
        handles, labels = ax.get_legend_handles_labels()
        order = sorted(range(len(labels)), key=lambda k: int(labels[k].split(".")[0]))
        ax.legend([handles[k] for k in order], [labels[k] for k in order], fontsize=7, loc="center left",
                  bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1e6:g}M"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("parameters")
    ax.set_ylabel("test top-1 (%)")
    s = table["settings"]
    ax.set_title(f"{s['dataset']}, recipe {s.get('recipe')}, seeds {', '.join(map(str, table['seeds']))}: "
                 f"mean ± sample std", fontsize=9)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


# ---- running the comparison -------------------------------------------------------------------------------


def run_config(overrides: dict[str, Any], spec: ModelSpec, seed: int, run_dir: Path | str,
               model_kwargs: dict[str, Any] | None = None, fresh: bool = False) -> Any:
    """The :class:`~pdenets.train.config.TrainConfig` of one run: the comparison's ``overrides`` (recipe, data
    set, epochs, ...; progress bars and the per-run report off unless given), the row's model with ``model_kwargs``
    (every row's) and the spec's own arguments, the seed and the run directory; ``resume='auto'`` unless
    ``fresh`` (then ``overwrite``)."""
    from pdenets.train.config import resolve_config

    ov: dict[str, Any] = dict(progress=False, report=False)
    ov.update({k: v for k, v in overrides.items() if v is not None})
    ov.update(model=spec.name, model_kwargs={**(model_kwargs or {}), **spec.kwargs}, seed=seed, out=str(run_dir))
    ov.update(dict(resume=None, overwrite=True) if fresh else dict(resume="auto"))
    return resolve_config(overrides=ov)


def image_size(cfg: Any) -> int:
    """The image side the runs of ``cfg`` train at (its ``img_size``, else the data set's default)."""
    from pdenets.datasets import dataset_info
    from pdenets.train.data import default_img_size

    return int(default_img_size(cfg, dataset_info(cfg.dataset, cfg.data_dir)) or 224)


def settings_of(cfg: Any, model_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """What every run of a comparison shares: the configuration without :data:`PER_RUN` fields, and the
    constructor arguments given to every row (JSON-normalised)."""
    s = {k: v for k, v in cfg.to_dict().items() if k not in PER_RUN}
    s["model_kwargs_all"] = dict(model_kwargs or {})
    return json.loads(json.dumps(s))


def check_settings(out: Path, settings: dict[str, Any], overwrite: bool) -> None:
    """Refuse to continue a comparison in ``out`` whose settings differ (unless ``overwrite``); a setting that only
    one of them records (a field of another pdenets version) is compared as its default."""
    f = out / "compare.json"
    if overwrite or not f.is_file():
        return
    try:
        old = json.loads(f.read_text())["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(f"{f} is not a comparison record; choose another --out or use --overwrite") from None
    from pdenets.train.config import TrainConfig

    default = TrainConfig().to_dict()  # a field one record lacks (another version) counts as its default
    diff = sorted(k for k in set(old) | set(settings) if old.get(k, default.get(k)) != settings.get(k, default.get(k)))
    if diff:
        what = "; ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in diff[:4])
        raise UsageError(f"{out} holds a comparison with other settings ({what}); continue it with its own "
                         f"options, start it over with --overwrite, or choose another --out")


def finished_summary(run_dir: Path) -> dict[str, Any] | None:
    """The summary of a run that is not trained again (status completed or diverged), else None."""
    try:
        s = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return s if isinstance(s, dict) and s.get("status") in FINAL else None


def _resumable(run_dir: Path) -> bool:
    """Whether ``resume='auto'`` continues ``run_dir`` from a complete checkpoint (the trainer's own test; a run
    with only damaged checkpoints is the trainer's one-line error, raised when it is trained)."""
    from pdenets.train.rundir import auto_resume_checkpoint

    try:
        return auto_resume_checkpoint(run_dir) is not None
    except UsageError:
        return False


def _run_record(s: dict[str, Any], seed: int, out: Path) -> dict[str, Any]:
    run = Path(s.get("run_dir", ""))
    return dict(seed=seed, status=s.get("status"), test_top1=s.get("test_top1"), val_top1=s.get("val_top1"),
                best_epoch=s.get("best_epoch"), epochs=s.get("epochs"), params=s.get("params"),
                wall_seconds=s.get("wall_seconds"), test_samples=s.get("test_samples"),
                run_dir=str(run.relative_to(out)) if run.is_relative_to(out) else str(run))


@dataclass
class _Row:
    spec: ModelSpec
    label: str
    activation: str
    params: int
    gmacs: float | None
    runs: dict[int, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        runs = [self.runs[s] for s in sorted(self.runs)]
        tops = [r["test_top1"] for r in runs if r["test_top1"] is not None]
        vals = [r["val_top1"] for r in runs if r["val_top1"] is not None]
        (tm, ts), (vm, vs) = mean_std(tops), mean_std(vals)
        return dict(label=self.label, spec=self.spec.text, key=self.spec.key, model=self.spec.name,
                    kwargs=self.spec.kwargs, activation=self.activation, params=self.params, gmacs=self.gmacs,
                    n=len(tops), test_top1_mean=tm, test_top1_std=ts, val_top1_mean=vm, val_top1_std=vs,
                    runs=runs)


def _make_row(spec: ModelSpec, model_kwargs: dict[str, Any], cfg: Any, img: int) -> _Row:
    """Label, activation, parameters and GMACs (one image, meta device: :mod:`pdenets.models.stats`)."""
    import torch

    from pdenets.datasets import dataset_info
    from pdenets.models.stats import model_stats
    from pdenets.train.build import build_model, model_create_kwargs

    info = dataset_info(cfg.dataset, cfg.data_dir)
    kw = {**model_kwargs, **spec.kwargs}
    full = model_create_kwargs(spec.name, info, kw)
    with torch.device("meta"):
        build_model(spec.name, full)  # unknown names and refused arguments: one line, before any training
    shape = (1, info.in_chans, img, img) if info.kind == "image" else (1, info.in_features)
    st = model_stats(spec.name, input_shape=shape, **full)
    label, act = describe(ModelSpec(spec.name, kw, spec.label), full)
    return _Row(spec, label, act, st.params, st.gmacs)


def _table(rows: list[_Row], seeds: Sequence[int], settings: dict[str, Any], command: str | None,
           timing: list[dict[str, Any]]) -> dict[str, Any]:
    """``table.json``; ``timing``: one entry per invocation of the comparison (wall and CPU seconds, runs trained
    and reused), the last one this invocation's."""
    out_rows = [r.as_dict() for r in rows]
    samples = next((x["test_samples"] for r in out_rows for x in r["runs"] if x.get("test_samples")), None)
    train_wall = sum(x["wall_seconds"] or 0.0 for r in out_rows for x in r["runs"])
    return dict(format="pdenets-compare/1", command=command, statistic=STD_NOTE, seeds=list(seeds),
                settings=settings, test_samples=samples, rows=out_rows, runs_wall_seconds=train_wall,
                invocations=timing)


def _earlier_invocations(out: Path) -> list[dict[str, Any]]:
    """The ``invocations`` of ``out/table.json`` from earlier runs of the comparison (none if unreadable)."""
    try:
        inv = json.loads((out / "table.json").read_text()).get("invocations", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [x for x in inv if isinstance(x, dict)] if isinstance(inv, list) else []


def _write(out: Path, table: dict[str, Any], figure: bool) -> None:
    from pdenets.train.checkpoint import atomic_write_text

    atomic_write_text(out / "table.json", json.dumps(table, indent=2))
    atomic_write_text(out / "table.md", table_markdown(table))
    if figure:
        plot_table(table, out / "top1_vs_params.png")


def run_comparison(out: str | os.PathLike, models: Sequence[ModelSpec], seeds: Sequence[int],
                   overrides: dict[str, Any] | None = None, model_kwargs: dict[str, Any] | None = None, *,
                   overwrite: bool = False, command: str | None = None,
                   log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train every model of ``models`` with every seed of ``seeds`` under one recipe (``overrides``: the training
    options, ``recipe`` and ``dataset`` included; ``model_kwargs``: constructor arguments of every row) and write
    ``table.md``, ``table.json`` and ``top1_vs_params.png`` into ``out`` (module docstring). Finished runs are
    reused, unfinished ones resumed; ``overwrite`` trains every run afresh. ``log`` gets one line per run (default:
    printed at once). Returns the table."""
    from pdenets.train.rundir import RunLock
    from pdenets.train.trainer import train

    out, overrides, model_kwargs = Path(out), dict(overrides or {}), dict(model_kwargs or {})
    if not models or not seeds:
        raise UsageError("a comparison needs at least one model and one seed")
    t0, c0 = time.time(), time.process_time()
    template = run_config(overrides, models[0], seeds[0], out / "runs" / "template", model_kwargs, fresh=True)
    img, settings = image_size(template), settings_of(template, model_kwargs)
    rows = [_make_row(s, model_kwargs, template, img) for s in models]  # unknown models, refused arguments: now
    main = os.environ.get("RANK", "0") == "0"
    log = log or ((lambda line: print(line, flush=True)) if main else (lambda line: None))
    check_settings(out, settings, overwrite)
    lock = RunLock(out).acquire() if main else None
    try:
        if main:
            from pdenets.train.checkpoint import atomic_write_text

            atomic_write_text(out / "compare.json", json.dumps(dict(settings=settings, command=command), indent=2))
        total, i, counts = len(models) * len(seeds), 0, dict(trained=0, resumed=0, reused=0)
        history = _earlier_invocations(out)
        for row in rows:
            for seed in seeds:
                i += 1
                run_dir = out / "runs" / f"{row.spec.key}-s{seed}"
                s = None if overwrite else finished_summary(run_dir)
                how = "reused"
                if s is None:
                    how = "resumed" if not overwrite and _resumable(run_dir) else "trained"
                    s = train(run_config(overrides, row.spec, seed, run_dir, model_kwargs, fresh=overwrite))
                row.runs[seed] = _run_record(s, seed, out)
                counts[how] += 1
                top = s.get("test_top1")
                log(f"[{i}/{total}] {row.spec.text} seed {seed}: {how}, {s.get('status')}, test top-1 "
                    f"{'—' if top is None else f'{top:.2f}%'} ({s.get('wall_seconds') or 0:.0f} s)")
                timing = [*history, dict(wall_seconds=time.time() - t0, cpu_seconds=time.process_time() - c0,
                                         command=command, **counts)]
                if main:
                    _write(out, _table(rows, seeds, settings, command, timing), figure=i == total)
        return _table(rows, seeds, settings, command, timing)
    finally:
        if lock is not None:
            lock.release()
