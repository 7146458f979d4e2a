"""Peak training memory of a Hamiltonian Ruthotto-Haber network: 8 vs 64 time steps, reversible vs not.

Each configuration runs in a fresh subprocess (so allocator caches of one run cannot hide another's
peak) and reports two figures for one forward + backward pass:

* **peak RSS delta** — ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` after the step minus before it
  (the CPU allocator's real peak; tracemalloc would not see torch's allocator). The subprocesses run
  with ``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc serves every tensor above 64 KiB by mmap and
  returns it on free: with glibc's default dynamic threshold, freed 1 MiB tensors stay in the brk heap
  and fragmentation inflates the peak RSS of the reversible run (1.62× instead of 1.17× here);
* **saved-for-backward bytes** — the bytes autograd keeps between forward and backward, counted
  with ``torch.autograd.graph.saved_tensors_hooks`` (parameters excluded; a tensor saved by two
  operations, or two views of one storage, count twice, so this is an upper bound on the live bytes).

On a CUDA device (``--device cuda``) the first figure is ``torch.cuda.max_memory_allocated`` instead.

    PYTHONPATH=src python benchmarks/bench_reversible_memory.py            # table, ~1 min on 2 cores
    PYTHONPATH=src python benchmarks/bench_reversible_memory.py --steps 8 16 32 64 --batch 16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys


def measure(steps: int, reversible: bool, batch: int, size: int, widths: tuple[int, ...], device: str) -> dict:
    import torch

    import pdenets  # noqa: F401
    from pdenets.models.ruthotto import RHNet

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = RHNet("hamiltonian", widths=widths, steps=steps, reversible=reversible, num_classes=10).to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    params = {p.data_ptr() for p in model.parameters()}
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        if t.data_ptr() not in params:
            saved += t.numel() * t.element_size()
        return t

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = (torch.cuda.max_memory_allocated() - base) if device == "cuda" else (rss1 - rss0) * 1024
    return dict(steps=steps, reversible=reversible, peak_bytes=peak, saved_bytes=saved,
                params=sum(p.numel() for p in model.parameters()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, nargs="+", default=[8, 64], help="time steps per unit (default 8 64)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=32, help="image side (default 32)")
    p.add_argument("--widths", type=int, nargs="+", default=[32, 64], help="stage widths (default 32 64)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--one", nargs=2, metavar=("STEPS", "REVERSIBLE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        r = measure(int(args.one[0]), args.one[1] == "1", args.batch, args.size, tuple(args.widths), args.device)
        print(json.dumps(r))
        return 0
    rows = []
    for rev in (False, True):
        for steps in args.steps:
            cmd = [sys.executable, __file__, "--one", str(steps), str(int(rev)), "--batch", str(args.batch),
                   "--size", str(args.size), "--device", args.device, "--widths", *map(str, args.widths)]
            env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    mib = 2.0**20
    print(f"Hamiltonian RHNet widths={tuple(args.widths)} batch={args.batch} {args.size}x{args.size} "
          f"device={args.device}, one forward+backward")
    print(f"{'reversible':>10} {'steps':>6} {'params':>9} {'peak (MiB)':>11} {'saved (MiB)':>12}")
    for r in rows:
        print(f"{str(r['reversible']):>10} {r['steps']:>6} {r['params']:>9,} {r['peak_bytes'] / mib:>11.1f} "
              f"{r['saved_bytes'] / mib:>12.2f}")
    lo, hi = min(args.steps), max(args.steps)
    for rev in (False, True):
        a = next(r for r in rows if r["reversible"] == rev and r["steps"] == lo)
        b = next(r for r in rows if r["reversible"] == rev and r["steps"] == hi)
        print(f"reversible={rev}: {hi}-step / {lo}-step peak ratio {b['peak_bytes'] / a['peak_bytes']:.2f}, "
              f"saved ratio {b['saved_bytes'] / a['saved_bytes']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
