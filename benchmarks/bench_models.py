"""Model benchmark: training-step and inference throughput, peak memory and GMACs, as ratios to resnet50.

All throughput figures are measured in ONE process with the models' trials interleaved (model a, b, c,
a, b, c, ...), so a change of machine load affects every model alike and the ratios stay meaningful on a
shared machine. Each figure is the median of ``--trials`` timed calls after ``--warmup`` untimed ones.

* training step: forward, cross-entropy on random labels, backward, SGD(momentum) step, in train mode;
* inference: eval mode under ``torch.inference_mode``;
* peak training memory: the memory one steady-state training step adds on top of the model, its
  optimizer state and the batch (all resident before it, gradients freed): on CUDA
  ``torch.cuda.max_memory_allocated``; on the CPU the peak resident set size (VmHWM, reset through
  ``/proc/self/clear_refs`` after a warm-up step and ``malloc_trim``) minus the RSS before the step, in a
  FRESH subprocess per model. It counts activations, gradients and workspace;
* saved activations: bytes of the tensors autograd keeps for the backward pass of one forward
  (``torch.autograd.graph.saved_tensors_hooks``; exact and noise-free);
* GMACs: :func:`pdenets.utils.stats.count_macs` (torch.utils.flop_counter) of one image, on the meta device;
* roofline: in the same run, trials interleaved with the models', this machine's GEMM throughput (GMAC/s of
  one large ``torch.mm`` in the compute dtype) and memory bandwidth (GB/s of a large ``copy_``, bytes read +
  written); each model's achieved GMAC/s (inference: batch × GMACs / time; training step: 3 × that, forward
  + the two backward GEMMs of every layer) is reported as a fraction of the GEMM peak.

Modes (``--modes``, default both): ``eager`` and ``compile`` (``torch.compile`` of every model with inductor;
inference graphs frozen, ``torch._inductor.config.freezing``, as a deployment would). Each mode is one
table; compile time is excluded from the timings (the warm-up calls compile) and printed.

Model specs may carry keyword arguments: ``qlnet50_eq3:fused=1`` (several joined with ``+``).

Examples::

    PYTHONPATH=src python benchmarks/bench_models.py                       # defaults: batch 8, 224 px, CPU
    PYTHONPATH=src python benchmarks/bench_models.py --models qlnet50_eq3,qlnet50_eq3:fused=1,resnet50
    PYTHONPATH=src python benchmarks/bench_models.py --modes eager --models qlnet50_eq3,resnet50 --no-memory
    PYTHONPATH=src python benchmarks/bench_models.py --device cuda --amp bf16 --channels-last --batch 64
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    SavedTensorMeter,
    copy_probe,
    gemm_probe,
    machine_line,
    median,
    parse_model_spec,
    peak_rss_bytes,
    reset_peak_rss,
    rss_bytes,
    time_interleaved,
)

DEFAULT_MODELS = "qlnet50_eq3,qlnet50_eq7_nows_x6,resnet50,mobilenetv3_large_100"


def build(spec: str, args: argparse.Namespace, device: torch.device) -> nn.Module:
    import pdenets  # noqa: F401  (registers the QL-ConvNets with timm)
    from pdenets.models import create_model

    name, kwargs = parse_model_spec(spec)
    model = create_model(name, num_classes=args.num_classes, **kwargs).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def make_batch(args: argparse.Namespace, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, generator=g).to(device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, args.num_classes, (args.batch,), generator=g).to(device)
    return x, y


def autocast(args: argparse.Namespace, device: torch.device):
    if args.amp == "none":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16 if args.amp == "bf16" else torch.float16)


def train_step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, args, device, compiled: bool = False):
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    fwd = torch.compile(model) if compiled else model

    def step() -> None:
        model.train()
        opt.zero_grad(set_to_none=True)
        with autocast(args, device):
            loss = F.cross_entropy(fwd(x), y)
        loss.backward()
        opt.step()

    return step


def infer_fn(model: nn.Module, x: torch.Tensor, args, device, compiled: bool = False):
    fwd = torch.compile(model) if compiled else model

    def run() -> None:
        model.eval()
        with torch.inference_mode(), autocast(args, device):
            fwd(x)

    return run


def gmacs(spec: str, args: argparse.Namespace) -> float:
    from pdenets.utils.stats import count_macs

    with torch.device("meta"):
        model = build(spec, args, torch.device("meta"))
    return count_macs(model, (1, 3, args.img_size, args.img_size)) / 1e9


def saved_activation_bytes(model: nn.Module, x: torch.Tensor, args, device) -> int:
    model.train()
    with SavedTensorMeter(list(model.parameters())) as meter, autocast(args, device):
        out = model(x)
    del out
    return meter.bytes


def memory_probe(spec: str, args: argparse.Namespace) -> int:
    """Peak memory of two training steps (see module docstring); run in a fresh process on the CPU."""
    device = torch.device(args.device)
    model = build(spec, args, device)
    x, y = make_batch(args, device)
    step = train_step_fn(model, x, y, args, device)
    if device.type == "cuda":
        step()
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    step()  # warm-up: libraries, kernels, optimizer state (momentum buffers stay: not counted below)
    model.zero_grad(set_to_none=True)
    import gc

    gc.collect()
    reset_peak_rss()
    base = rss_bytes()
    step()
    return peak_rss_bytes() - base


def probe_in_subprocess(spec: str, args: argparse.Namespace) -> int:
    cmd = [sys.executable, __file__, "--_probe", spec, "--batch", str(args.batch), "--img-size",
           str(args.img_size), "--num-classes", str(args.num_classes), "--device", args.device, "--amp", args.amp,
           "--threads", str(torch.get_num_threads())]
    if args.channels_last:
        cmd.append("--channels-last")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1] / "src"),
                                                      env.get("PYTHONPATH", "")]))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return int(out.strip().splitlines()[-1])


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated model specs (default {DEFAULT_MODELS})")
    p.add_argument("--baseline", default="resnet50", help="spec all ratios refer to (added if missing)")
    p.add_argument("--modes", default="eager,compile", help="comma-separated: eager, compile (default both)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per model before timing (compile: >= 2)")
    p.add_argument("--trials", type=int, default=5, help="timed calls per model (median reported)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"), help="autocast dtype")
    p.add_argument("--channels-last", action="store_true", help="models and inputs in channels_last")
    p.add_argument("--gemm", default=None, help="roofline GEMM M,K,N (default 4096,1024,1024; cuda 8192,8192,8192)")
    p.add_argument("--copy-mib", type=int, default=None, help="roofline copy size in MiB (default 256; cuda 2048)")
    p.add_argument("--no-roofline", action="store_true", help="skip the GEMM / bandwidth probes")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses (eager only)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--_probe", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def roofline_probes(args: argparse.Namespace, device: torch.device) -> dict[str, tuple]:
    """{'gemm': (fn, GMACs), 'copy': (fn, GB)}: the probes timed among the models (empty with --no-roofline)."""
    if args.no_roofline:
        return {}
    cuda = device.type == "cuda"
    size = tuple(int(v) for v in (args.gemm or ("8192,8192,8192" if cuda else "4096,1024,1024")).split(","))
    dtype = {"none": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    mib = args.copy_mib or (2048 if cuda else 256)
    return {"gemm": gemm_probe(device, dtype, size), "copy": copy_probe(device, mib)}


def measure_mode(mode: str, models: dict[str, nn.Module], x, y, args, device) -> dict[str, dict[str, float]]:
    """Training-step and inference times of every model (and the roofline probes) in one mode."""
    compiled = mode == "compile"
    probes = roofline_probes(args, device)
    res: dict[str, dict[str, float]] = {s: {} for s in [*models, *probes]}
    for kind, make in (("train", lambda m: train_step_fn(m, x, y, args, device, compiled)),
                       ("infer", lambda m: infer_fn(m, x, args, device, compiled))):
        fns = {s: make(m) for s, m in models.items()}
        fns.update({k: fn for k, (fn, _) in probes.items()})
        t0 = time.perf_counter()
        times = time_interleaved(fns, device, max(args.warmup, 2 if compiled else 0), args.trials)
        print(f"# {mode} {kind}: warm-up (compilation) and trials took {time.perf_counter() - t0:.0f} s", flush=True)
        for s, ts in times.items():
            res[s][f"{kind}_times_s"] = ts
    for s in models:
        res[s]["train_img_s"] = args.batch / median(res[s]["train_times_s"])
        res[s]["infer_img_s"] = args.batch / median(res[s]["infer_times_s"])
    for k, (_, work) in probes.items():  # the probes ran twice as often: pool their trials
        ts = res[k]["train_times_s"] + res[k]["infer_times_s"]
        res[k]["rate"] = work / median(ts)
    return res


def print_table(mode: str, res: dict, specs: list[str], args) -> None:
    base = res[args.baseline]
    gemm = res.get("gemm", {}).get("rate")
    for s in specs:
        r = res[s]
        r["train_gmac_s"] = 3 * args.batch * r["gmacs"] / median(r["train_times_s"])
        r["infer_gmac_s"] = args.batch * r["gmacs"] / median(r["infer_times_s"])
    cols = [("params_M", "params(M)", "{:.2f}", None), ("gmacs", "GMACs", "{:.3f}", "x"),
            ("train_img_s", "train img/s", "{:.2f}", "x"), ("infer_img_s", "infer img/s", "{:.2f}", "x"),
            ("train_gmac_s", "train GMAC/s", "{:.1f}", "peak" if gemm else None),
            ("infer_gmac_s", "infer GMAC/s", "{:.1f}", "peak" if gemm else None),
            ("peak_train_MB", "peak train MB", "{:.0f}", "x"), ("saved_act_MB", "saved act MB", "{:.0f}", "x")]
    cols = [c for c in cols if c[0] in base]
    head = f"{'model':<28}" + "".join(f"{c[1]:>15}" + (f"{'(x' + args.baseline[:6] + ')':>11}" if c[3] == "x" else
                                                       f"{'(of peak)':>11}" if c[3] else "") for c in cols)
    print(f"## mode: {mode}")
    print(head)
    print("-" * len(head))
    for s in specs:
        line = f"{s:<28}"
        for key, _, fmt, ratio in cols:
            v = res[s][key]
            line += f"{fmt.format(v):>15}"
            line += f"{v / base[key]:>10.2f}x" if ratio == "x" else f"{100 * v / gemm:>10.0f}%" if ratio else ""
        print(line)
    fast = {s: (min(base["train_times_s"]) / min(res[s]["train_times_s"]),
                min(base["infer_times_s"]) / min(res[s]["infer_times_s"])) for s in specs}
    print("# speed-up over " + args.baseline + " from the fastest trial (train / infer): "
          + ", ".join(f"{s} {a:.2f}x / {b:.2f}x" for s, (a, b) in fast.items() if s != args.baseline))
    if gemm:
        print(f"# roofline: GEMM {gemm:.1f} GMAC/s (torch.mm {args.gemm or 'default size'}), copy bandwidth "
              f"{res['copy']['rate']:.1f} GB/s (read + write), both timed interleaved with the models")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._probe:
        print(memory_probe(args._probe, args))
        return 0
    device = torch.device(args.device)
    specs = [s for s in args.models.split(",") if s]
    if args.baseline not in specs:
        specs.append(args.baseline)
    modes = [m for m in args.modes.split(",") if m]
    if "compile" in modes:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # inference graphs: weights as constants (BN folding, prepacking)
    print(f"# {machine_line(device)}")
    print(f"# batch {args.batch}, {args.img_size}x{args.img_size}, device {device}, amp {args.amp}, "
          f"channels_last {args.channels_last}, modes {modes}, warmup {args.warmup}, "
          f"trials {args.trials} (median), trials interleaved across models", flush=True)
    models = {s: build(s, args, device) for s in specs}
    x, y = make_batch(args, device)
    static: dict[str, dict[str, float]] = {s: {} for s in specs}
    for s, m in models.items():
        static[s]["params_M"] = sum(p.numel() for p in m.parameters()) / 1e6
        static[s]["gmacs"] = gmacs(s, args)
        static[s]["saved_act_MB"] = saved_activation_bytes(m, x, args, device) / 2**20
    results = {}
    for mode in modes:
        res = measure_mode(mode, models, x, y, args, device)
        for s in specs:
            res[s].update(static[s])
        results[mode] = res
    del models
    if not args.no_memory and "eager" in results:
        for s in specs:
            results["eager"][s]["peak_train_MB"] = probe_in_subprocess(s, args) / 2**20
    for mode, res in results.items():
        print_table(mode, res, specs, args)
    mem_note = "cuda max_memory_allocated" if device.type == "cuda" else "peak RSS growth in a step, fresh process"
    print(f"# peak train MB (eager): {mem_note}; saved act MB: tensors kept for backward (saved_tensors_hooks)")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(machine=machine_line(device), args=vars(args), results=results),
                                              indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
