"""Shared helpers of the benchmark scripts: timing with warm-up and medians, memory probes, machine line."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    fns: dict[str, Callable[[], object]], device: torch.device, warmup: int = 2, trials: int = 5
) -> dict[str, list[float]]:
    """Seconds per call of each function, trials interleaved (a, b, c, a, b, c, ...) so that a change of
    machine load hits all candidates alike; ``warmup`` untimed calls of each first."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
        sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(trials):
        for k, fn in fns.items():
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            times[k].append(time.perf_counter() - t)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def peak_rss_bytes() -> int:
    """High-water mark of the resident set size (VmHWM; since the last :func:`reset_peak_rss`)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> bool:
    """Return freed heap to the OS (glibc ``malloc_trim``) and reset VmHWM to the current RSS (Linux
    ``/proc/self/clear_refs``). Returns False where that is not possible (then the peak is lifelong)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class SavedTensorMeter:
    """Bytes of the distinct tensor storages autograd keeps for the backward pass (activation memory).

    Use as a context manager around a forward pass; storages are counted once even when saved by several
    ops (e.g. a block input read by two convolutions). Parameters are excluded.
    """

    def __init__(self, exclude: list[torch.Tensor] | None = None) -> None:
        self.exclude = {p.untyped_storage().data_ptr() for p in (exclude or [])}
        self.storages: dict[int, int] = {}

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in self.exclude:
            self.storages[s.data_ptr()] = s.nbytes()
        return t

    def __enter__(self) -> SavedTensorMeter:
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._ctx.__exit__(*exc)

    @property
    def bytes(self) -> int:
        return sum(self.storages.values())


def machine_line(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = ""
    if hasattr(os, "getloadavg"):
        load = " load avg {:.2f}/{:.2f}/{:.2f}".format(*os.getloadavg())
    gpu = f", GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} with {torch.get_num_threads()} "
        f"threads{gpu};{load}"
    )


def parse_model_spec(spec: str) -> tuple[str, dict[str, object]]:
    """``'qlnet50_eq3:fused=1+multiplier=6'`` → ('qlnet50_eq3', {'fused': True, 'multiplier': 6})."""
    name, _, rest = spec.partition(":")
    kwargs: dict[str, object] = {}
    for item in filter(None, rest.split("+")):
        k, _, v = item.partition("=")
        kwargs[k] = _literal(v)
    return name, kwargs


def _literal(v: str) -> object:
    low = v.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


# ---- roofline probes (timed interleaved with the models, so the same machine load hits them) -------------


def gemm_probe(
    device: torch.device, dtype: torch.dtype, size: tuple[int, int, int]
) -> tuple[Callable[[], object], float]:
    """A ``torch.mm`` of (M, K) @ (K, N) in ``dtype``; returns the function and its GMACs (M·K·N / 1e9)."""
    m, k, n = size
    g = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=g).to(device, dtype)
    b = torch.randn(k, n, generator=g).to(device, dtype)
    out = torch.empty(m, n, device=device, dtype=dtype)
    return (lambda: torch.mm(a, b, out=out)), m * k * n / 1e9


def copy_probe(device: torch.device, mib: int) -> tuple[Callable[[], object], float]:
    """A ``copy_`` of ``mib`` MiB of float32; returns the function and the GB it moves (read + write)."""
    src = torch.randn(mib * 2**18).to(device)
    dst = torch.empty_like(src)
    return (lambda: dst.copy_(src)), 2 * src.numel() * 4 / 1e9
