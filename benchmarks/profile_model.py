"""Where the time of one training step (or inference) goes: torch.profiler, grouped into op categories.

Categories: depthwise conv (groups > 1; forward and backward), dense conv (1×1 / k×k, forward and
backward), BatchNorm (forward and backward), elementwise (mul/add/fill/copy/activations...), other.
Self CPU time of each aten op is attributed by its name and the shapes of its inputs.

Example::

    PYTHONPATH=src python benchmarks/profile_model.py --model qlnet50_eq3 --batch 8 --threads 2
    PYTHONPATH=src python benchmarks/profile_model.py --model qlnet50_eq3:fused=1 --inference
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, parse_model_spec  # noqa: E402


def category(name: str, shapes: list) -> str:
    if "convolution" in name or "conv2d" in name or "conv_depthwise" in name:
        # a depthwise weight among the inputs: (C, 1, k, k) with k > 1
        if any(len(w) == 4 and w[1] == 1 and w[2] == w[3] > 1 and w[2] <= 7 for w in shapes):
            return "depthwise conv"
        return "dense conv"
    if "batch_norm" in name:
        return "batchnorm"
    if name in ("aten::addmm", "aten::mm", "aten::linear"):
        return "dense conv"
    if any(k in name for k in ("mul", "add", "fill", "zero", "copy", "relu", "hardtanh", "clamp", "div", "sqrt",
                               "sum", "mean", "norm", "max_pool", "where", "threshold", "hardswish", "sigmoid",
                               "lerp", "addcmul", "cat", "pow")):
        return "elementwise/reduction"
    return "other"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qlnet50_eq3", help="model spec, e.g. qlnet50_eq3:fused=1")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--inference", action="store_true", help="profile an inference pass instead")
    p.add_argument("--top", type=int, default=15, help="rows of the per-op table")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import pdenets  # noqa: F401
    from pdenets.models import create_model

    name, kwargs = parse_model_spec(args.model)
    model = create_model(name, num_classes=1000, **kwargs)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size)
    y = torch.randint(0, 1000, (args.batch,))
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def step() -> None:
        if args.inference:
            model.eval()
            with torch.inference_mode():
                model(x)
            return
        model.train()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    events = prof.key_averages(group_by_input_shape=True)
    total = sum(e.self_cpu_time_total for e in events)
    cats: dict[str, float] = defaultdict(float)
    for e in events:
        cats[category(e.key, e.input_shapes)] += e.self_cpu_time_total
    what = "inference" if args.inference else "training step"
    print(f"# {machine_line(torch.device('cpu'))}")
    print(f"# {args.model} {what}, batch {args.batch}, {args.img_size}², channels_last {args.channels_last}: "
          f"self CPU time {total / 1e6:.2f} s")
    for k, v in sorted(cats.items(), key=lambda kv: -kv[1]):
        print(f"  {k:<24}{v / 1e6:8.2f} s {100 * v / total:6.1f}%")
    print(f"\ntop {args.top} ops (name, input shapes):")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.top]:
        shapes = ", ".join("x".join(map(str, s)) for s in e.input_shapes if s)[:70]
        print(f"  {e.self_cpu_time_total / 1e3:9.1f} ms {100 * e.self_cpu_time_total / total:5.1f}%  "
              f"{e.count:4d}×  {e.key:<34} {shapes}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
