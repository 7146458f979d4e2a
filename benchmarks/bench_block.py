"""Block benchmark: the fused derivative/BN/product op against the reference module path, one block per stage.

For each stage of the ImageNet layout (224² input: 64 ch at 56², 128 at 28², 256 at 14², 512 at 7²) a
non-downsampling block of ``--eq`` is built twice with the same weights, ``fused=False`` (reference) and
``fused=True``, and measured in one process with interleaved trials (median):

* training step: forward + backward with a dense random output gradient (train-mode BatchNorm);
* inference: eval mode under ``torch.inference_mode`` (BN folded into the depthwise conv by the fused op);
* activation memory: bytes of the tensors autograd keeps for backward (``saved_tensors_hooks``; the block
  input included, parameters excluded).

Example::

    PYTHONPATH=src python benchmarks/bench_block.py --batch 8 --threads 2
    PYTHONPATH=src python benchmarks/bench_block.py --stages 1 --eq eq3 --channels-last
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SavedTensorMeter, machine_line, median, time_interleaved  # noqa: E402

STAGES = {1: (64, 56), 2: (128, 28), 3: (256, 14), 4: (512, 7)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--eq", default="eq3", help="block equation: eq3, eq3p, eq4, eq5, eq6, eq7 (default eq3)")
    p.add_argument("--stages", default="1,2,3,4", help="comma-separated stage numbers (default all)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--multiplier", type=int, default=4)
    p.add_argument("--no-ws", action="store_true", help="no weight sharing")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--trials", type=int, default=7)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from pdenets.layers.ql_blocks import create_block

    device = torch.device(args.device)
    print(f"# {machine_line(device)}")
    print(f"# {args.eq} block, batch {args.batch}, m={args.multiplier}, ws={not args.no_ws}, channels_last "
          f"{args.channels_last} (the fused op always computes in channels_last), "
          f"amp {args.amp}, warmup {args.warmup}, trials {args.trials} (median, interleaved)")
    head = (f"{'stage':<6}{'shape':<16}{'train ref ms':>13}{'fused ms':>10}{'speed-up':>9}  {'infer ref ms':>13}"
            f"{'fused ms':>10}{'speed-up':>9}  {'act ref MB':>11}{'fused MB':>9}{'ratio':>7}")
    print(head)
    print("-" * len(head))
    amp = (torch.autocast(device.type, dtype=torch.bfloat16 if args.amp == "bf16" else torch.float16)
           if args.amp != "none" else torch.autocast(device.type, enabled=False))
    for stage in (int(s) for s in args.stages.split(",")):
        n, hw = STAGES[stage]
        torch.manual_seed(0)
        ref = create_block(args.eq, n, n, 1, multiplier=args.multiplier, weight_sharing=not args.no_ws,
                           fused=False).to(device)
        fused = copy.deepcopy(ref)
        fused.fused = True
        x = torch.randn(args.batch, n, hw, hw, device=device)
        g = torch.randn(args.batch, n, hw, hw, device=device)
        if args.channels_last:
            ref, fused = (b.to(memory_format=torch.channels_last) for b in (ref, fused))
            x, g = (t.contiguous(memory_format=torch.channels_last) for t in (x, g))
        x.requires_grad_()

        def train_fn(block, x=x, g=g):
            def f():
                block.train()
                x.grad = None
                block.zero_grad(set_to_none=True)
                with amp:
                    y = block(x)
                y.backward(g.to(y.dtype))
            return f

        def infer_fn(block, x=x):
            def f():
                block.eval()
                with torch.inference_mode(), amp:
                    block(x)
            return f

        tt = time_interleaved({"ref": train_fn(ref), "fused": train_fn(fused)}, device, args.warmup, args.trials)
        ti = time_interleaved({"ref": infer_fn(ref), "fused": infer_fn(fused)}, device, args.warmup, args.trials)
        mem = {}
        for k, b in (("ref", ref), ("fused", fused)):
            b.train()
            with SavedTensorMeter(list(b.parameters())) as meter, amp:
                out = b(x)
            del out
            mem[k] = meter.bytes / 2**20
        tr, tf = median(tt["ref"]) * 1e3, median(tt["fused"]) * 1e3
        ir, if_ = median(ti["ref"]) * 1e3, median(ti["fused"]) * 1e3
        shape = f"{args.batch}x{n}x{hw}x{hw}"
        print(f"{stage:<6}{shape:<16}{tr:>13.1f}{tf:>10.1f}{tr / tf:>8.2f}×  {ir:>13.1f}{if_:>10.1f}{ir / if_:>8.2f}×  "
              f"{mem['ref']:>11.1f}{mem['fused']:>9.1f}{mem['fused'] / mem['ref']:>7.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
