"""Rotation-aided integer quantisation of the QL-ConvNets: rotate the O(n) segments
(:mod:`pdenets.symmetry.rotations`), quantise (:mod:`pdenets.quant`), write the integer ONNX model, run it in
onnxruntime and report (docs/design.md §16).

The rotation is an exact symmetry (Liu-Shao-Bai §4, exact for ``eq3p``: docs/design.md §3), so the float model
is the same function for every choice; only the quantised model differs. Calibration images come from the
training split, the figures from the test split, which chooses nothing (the learned rotation is selected on the
calibration images, the random seeds are all reported).
"""

from __future__ import annotations

import copy
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from pdenets.quant.fakequant import QuantSim, instrument
from pdenets.quant.gptq import gptq_weights
from pdenets.quant.onnx_qdq import INTEGER_OPS, export_qdq, integer_ops, ort_latency, ort_run, ort_session
from pdenets.symmetry.analyze import Analysis, analyze
from pdenets.symmetry.fold import fold_bn, is_folded
from pdenets.symmetry.rotations import ROTATIONS, learn_rotation, rotatable, rotation_element
from pdenets.symmetry.transform import GroupElement, load_params, transformed_params

__all__ = ["FLOAT_CHECK_RTOL", "QuantConfig", "layer_table", "quantize_model", "quantize_report", "report_table",
           "rotate"]

FLOAT_CHECK_RTOL = 1e-5  # the rotated float32 model must agree with the original to this (max |Δ| / max |y|)
SPREAD_KEYS = ("top1_quant", "agreement", "output_rel_err")


@dataclass
class QuantConfig:
    """Settings of :func:`quantize_report`: bit widths (weights 8 or 4, activations 8 or None), GPTQ, the random
    seeds (``seeds`` of them from ``seed``), the learned rotation's optimiser, onnxruntime threads and the
    latency batch."""

    weight_bits: int = 8
    act_bits: int | None = 8
    first_last_bits: int | None = None
    gptq: bool = False
    seeds: int = 5
    seed: int = 0
    learn_steps: int = 100
    learn_lr: float = 0.005
    learn_batch: int = 64
    learn_score_every: int = 10
    calib_batch: int = 128
    ort_threads: int = 2
    latency_batch: int = 8
    latency_repeats: int = 20
    per_layer: bool = False


def prepare(model: nn.Module) -> tuple[nn.Module, Analysis]:
    """The BN-folded float64 copy of ``model`` (eval mode) and its group analysis."""
    folded = copy.deepcopy(model).double().eval()
    folded = folded if is_folded(folded) else fold_bn(folded)
    return folded, analyze(folded)


def rotate(folded: nn.Module, analysis: Analysis, element: GroupElement) -> nn.Module:
    """The folded model with its weights in the rotated basis (float64; the same function)."""
    if all(m is None for m in element.mats):
        return copy.deepcopy(folded)
    with torch.no_grad():
        return load_params(folded, transformed_params(folded, analysis, element)).eval()


def quantize_model(model: nn.Module, calib: torch.Tensor, cfg: QuantConfig) -> QuantSim:
    """The frozen integer simulation of a folded model: activation ranges and (optionally) GPTQ on ``calib``."""
    sim = instrument(model, cfg.weight_bits, cfg.act_bits, cfg.first_last_bits)
    sim.module.float()
    batches = list(calib.float().split(cfg.calib_batch))
    weights = gptq_weights(sim, batches) if cfg.gptq else None
    return sim.calibrate(batches).freeze(weights)


@torch.no_grad()
def _sim_error(sim: QuantSim, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((sim.module(x.float()) - y).norm() / y.norm())


def _metrics(y: torch.Tensor, yq: torch.Tensor, labels: torch.Tensor | None) -> dict[str, Any]:
    out = dict(agreement=100 * float((yq.argmax(1) == y.argmax(1)).double().mean()),
               output_rel_err=float((yq - y).norm() / y.norm()))
    if labels is not None:
        out["top1_float"] = 100 * float((y.argmax(1) == labels).double().mean())
        out["top1_quant"] = 100 * float((yq.argmax(1) == labels).double().mean())
    return out


class _Run:
    """What every rotation choice shares: the folded model, the data, the float references, the output folder."""

    def __init__(self, model: nn.Module, calib: torch.Tensor, x: torch.Tensor, y: torch.Tensor | None,
                 cfg: QuantConfig, out: Path, rotations: list[str]) -> None:
        self.folded, self.analysis = prepare(model)
        for r in rotations:
            if r not in ROTATIONS:
                raise ValueError(f"unknown rotation {r!r}; expected one of {', '.join(ROTATIONS)}")
        if any(r != "none" for r in rotations):
            rotation_element(self.analysis, "hadamard", torch.Generator())  # raises if nothing can rotate
        self.calib, self.x, self.labels, self.cfg, self.out = calib, x, y, cfg, out
        out.mkdir(parents=True, exist_ok=True)
        f32 = copy.deepcopy(self.folded).float()
        with torch.no_grad():
            self.y32 = f32(x.float())
            self.y_calib = f32(calib.float())
        self.shape = (cfg.latency_batch, *x.shape[1:])
        self.float_latency = self._float_onnx(f32)

    def _float_onnx(self, f32: nn.Module) -> dict[str, float]:
        """onnxruntime latency of the float model as ``pdenets export`` writes it (``float.onnx``) and in the integer
        model's layout (``float_split.onnx``: the simulation in float mode, derivative convs as multiplier-1
        depthwise convs), in ms."""
        from pdenets.export.files import export_onnx

        split = instrument(f32, self.cfg.weight_bits, None).set_mode("float").module
        paths = dict(grouped=export_onnx(f32, self.out / "float.onnx", self.shape, fold=False).path,
                     split=export_onnx(split, self.out / "float_split.onnx", self.shape, exporter="dynamo",
                                       fold=False).path)
        xb = self.x[: self.cfg.latency_batch].float()
        return {k: ort_latency(ort_session(p, self.cfg.ort_threads), xb, self.cfg.latency_repeats)
                for k, p in paths.items()}

    def score(self, element: GroupElement) -> float:
        """The measured output error of the static integer model on the calibration images."""
        sim = quantize_model(rotate(self.folded, self.analysis, element), self.calib, self.cfg)
        return _sim_error(sim, self.calib, self.y_calib)

    def evaluate(self, name: str, element: GroupElement) -> dict[str, Any]:
        """Rotate, check the float function, quantise, export, run in onnxruntime; the report entry."""
        rotated = rotate(self.folded, self.analysis, element)
        with torch.no_grad():
            y_rot = copy.deepcopy(rotated).float()(self.x.float())
        float_diff = float((y_rot - self.y32).abs().max() / self.y32.abs().max())
        layers = self.layer_errors(rotated) if self.cfg.per_layer else None
        sim = quantize_model(rotated, self.calib, self.cfg)
        with torch.no_grad():
            y_ref = sim.module(self.x.float())
        exp = export_qdq(sim, self.out / f"{name}.int.onnx", self.shape)
        sess = ort_session(exp.path, self.cfg.ort_threads)
        y_int = ort_run(sess, self.x)
        step = sim.output_scale()
        ops = integer_ops(exp.path)
        return dict(**_metrics(self.y32, y_int, self.labels), float_rel_diff_after_rotation=float_diff,
                    float_check_passed=float_diff <= FLOAT_CHECK_RTOL,
                    reference_max_abs_diff=float((y_int - y_ref).abs().max()), output_step=step,
                    reference_max_steps=float((y_int - y_ref).abs().max() / step) if step else None,
                    latency_ms_float=self.float_latency["split"], latency_ms_float_export=self.float_latency["grouped"],
                    latency_ms_int=ort_latency(sess, self.x[: self.cfg.latency_batch], self.cfg.latency_repeats),
                    onnx=exp.path.name, exporter=exp.exporter, int8_weights=exp.int_weights,
                    int32_biases=exp.int_biases, integer_kernels={k: v for k, v in ops.items() if k in INTEGER_OPS},
                    calib_output_rel_err=_sim_error(sim, self.calib, self.y_calib),
                    **({} if layers is None else dict(layer_errors=layers)))

    def layer_errors(self, rotated: nn.Module) -> dict[str, float]:
        """Per layer, the relative output error on the calibration images with only that layer's weights rounded
        (round-to-nearest at its bits; :meth:`~pdenets.quant.fakequant.QuantSim.layer_errors`)."""
        cfg = self.cfg
        sim = instrument(copy.deepcopy(rotated).float(), cfg.weight_bits, None, cfg.first_last_bits)
        return sim.layer_errors(self.calib.float(), cfg.calib_batch)


def _spread(rows: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Mean of every number over the seeds, and the spread (std, min, max) of the accuracy figures."""
    out: dict[str, Any] = {k: statistics.fmean(r[k] for r in rows) for k, v in rows[0].items()
                           if isinstance(v, (int, float)) and not isinstance(v, bool) and all(r[k] is not None
                                                                                              for r in rows)}
    out["float_check_passed"] = all(r["float_check_passed"] for r in rows)
    for k in SPREAD_KEYS:
        if k in out:
            vals = [r[k] for r in rows]
            out[f"{k}_std"] = statistics.pstdev(vals)
            out[f"{k}_min"], out[f"{k}_max"] = min(vals), max(vals)
    if "layer_errors" in rows[0]:  # mean over the seeds, layer by layer
        out["layer_errors"] = {k: statistics.fmean(r["layer_errors"][k] for r in rows) for k in rows[0]["layer_errors"]}
    out["seeds"] = seeds
    out["per_seed"] = rows
    return out


def _learned(run: _Run) -> dict[str, Any]:
    cfg = run.cfg
    init = rotation_element(run.analysis, "hadamard", torch.Generator().manual_seed(cfg.seed))
    dyn = instrument(run.folded, cfg.weight_bits, cfg.act_bits, cfg.first_last_bits).set_mode("dynamic")
    dyn.module.float()
    res = learn_rotation(run.folded, run.analysis, dyn.module, run.calib, init, run.score, cfg.learn_steps,
                         cfg.learn_lr, cfg.learn_score_every, cfg.learn_batch, torch.Generator().manual_seed(cfg.seed))
    entry = run.evaluate("learned", res.element)
    entry["learn"] = dict(init="hadamard", steps=cfg.learn_steps, lr=cfg.learn_lr, batch=cfg.learn_batch,
                          score_every=cfg.learn_score_every, best_step=res.best_step,
                          calib_scores=res.scores, loss_first=res.losses[0] if res.losses else None,
                          loss_last=res.losses[-1] if res.losses else None)
    return entry


def quantize_report(model: nn.Module, calib: torch.Tensor, x: torch.Tensor, y: torch.Tensor | None,
                    rotations: list[str], cfg: QuantConfig, out: str | Path, progress=print) -> dict[str, Any]:
    """Quantise ``model`` under each rotation choice and write ``out``/``quant_report.json`` plus the ONNX files
    (``float.onnx``, ``float_split.onnx``, ``NAME.int.onnx``); returns the report. ``random`` and ``hadamard``
    are drawn ``cfg.seeds`` times (seeds ``cfg.seed`` …) and reported with their spread; ``learned`` starts from
    the Hadamard draw of ``cfg.seed``. ``calib``: calibration images (training split),
    ``x``/``y``: test images and labels. Raises ``ValueError`` for an unknown rotation or one the model does not
    admit (no O or GL segment)."""
    import json

    out = Path(out)
    run = _Run(model, calib, x, y, cfg, out, rotations)
    report: dict[str, Any] = dict(
        config=asdict(cfg), calibration_images=len(calib), test_images=len(x), input_shape=list(x.shape[1:]),
        rotated_segments=[dict(index=s.index, name=s.name, width=s.width, group=s.group)
                          for s in run.analysis.segments if s.index in rotatable(run.analysis)],
        segments=[dict(index=s.index, name=s.name, width=s.width, group=s.group) for s in run.analysis.segments],
        float_onnx="float.onnx", float_onnx_split="float_split.onnx", rotations={})
    for r in rotations:
        progress(f"rotation {r} ...")
        if r in ("random", "hadamard"):  # both are random draws (a randomised Hadamard: its signs)
            seeds = [cfg.seed + i for i in range(cfg.seeds)]
            rows = [run.evaluate(f"{r}_s{s}", rotation_element(run.analysis, r, torch.Generator().manual_seed(s)))
                    for s in seeds]
            report["rotations"][r] = _spread(rows, seeds)
        elif r == "learned":
            report["rotations"][r] = _learned(run)
        else:
            report["rotations"][r] = run.evaluate(r, rotation_element(run.analysis, r, torch.Generator()))
    (out / "quant_report.json").write_text(json.dumps(report, indent=1))
    return report


def report_table(report: dict[str, Any]) -> str:
    """Markdown table of a :func:`quantize_report` (random: mean ± std over the seeds, [min, max])."""
    c = report["config"]
    bits = (f"W{c['weight_bits']}A{c['act_bits'] or 'f'}" + (" GPTQ" if c.get("gptq") else "")
            + (f" (first/last W{c['first_last_bits']})" if c.get("first_last_bits") else ""))
    rows = [f"| {bits} rotation | top-1 float | top-1 int | agreement | output rel. err | float Δ after rotation "
            "| ORT ms float / int |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in report["rotations"].items():
        def fmt(k: str, f: str = ".2f", r=r) -> str:
            if r.get(k) is None:
                return "-"
            if f"{k}_std" not in r:
                return format(r[k], f)
            return f"{r[k]:{f}} ± {r[k + '_std']:{f}} [{r[k + '_min']:{f}}, {r[k + '_max']:{f}}]"

        label = name + (f" ({len(r['seeds'])} seeds)" if "seeds" in r else "")
        rows.append(f"| {label} | {fmt('top1_float')} | {fmt('top1_quant')} | {fmt('agreement')} | "
                    f"{fmt('output_rel_err', '.4f')} | {r['float_rel_diff_after_rotation']:.1e} | "
                    f"{r['latency_ms_float']:.2f} / {r['latency_ms_int']:.2f} |")
    return "\n".join(rows)


def layer_table(report: dict[str, Any], top: int = 8) -> str:
    """Markdown table of the ``top`` most sensitive layers (``--per-layer``): per rotation choice the relative output
    error with only that layer's weights rounded (random, hadamard: mean over the seeds); sorted by the first
    choice's error. Empty if the report has no per-layer errors."""
    rots = {k: r["layer_errors"] for k, r in report["rotations"].items() if "layer_errors" in r}
    if not rots:
        return ""
    first = next(iter(rots.values()))
    names = sorted(first, key=first.get, reverse=True)[:top]
    head = f"| layer (W{report['config']['weight_bits']} alone, of {len(first)}) | " + " | ".join(rots) + " |"
    rows = [head, "|---|" + "---:|" * len(rots)]
    rows += [f"| {n} | " + " | ".join(f"{e[n]:.4f}" for e in rots.values()) + " |" for n in names]
    return "\n".join(rows)
