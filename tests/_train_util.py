"""Shared helpers of the training tests (tiny configurations that run in about a second)."""

import os
import subprocess
import sys
from pathlib import Path

from _helpers import one_thread  # noqa: F401  (re-exported for the training tests)

ROOT = Path(__file__).resolve().parents[1]

# qlnet18_eq3_small with 8 channels per stage on 8x8 digits: ~3k parameters, a step takes milliseconds.
TINY = dict(model="qlnet18_eq3_small", dataset="digits", model_kwargs={"widths": [8, 8, 8, 8]}, img_size=8,
            batch_size=16, max_steps_per_epoch=4, progress=False, deterministic=True, report=False,
            opt="momentum", lr=0.05, weight_decay=1e-4, sched="cosine", warmup_epochs=0, workers=0)
TINY_CLI = ["--model", "qlnet18_eq3_small", "-m", "widths=[8,8,8,8]", "--img-size", "8", "--batch-size", "16",
            "--opt", "momentum", "--lr", "0.05", "--no-progress", "--deterministic"]


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + e.get("PYTHONPATH", "")
    e["OMP_NUM_THREADS"] = "1"
    return e


def run_cli(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pdenets", *args], capture_output=True, text=True, env=env(),
                          timeout=timeout, **kw)


def weights(path) -> dict:
    from safetensors.torch import load_file

    p = Path(path)
    return load_file(str(p / "model.safetensors" if p.is_dir() else p))


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)




def interrupt_once(argv: list[str], ready, timeout: float = 90) -> tuple[int, str]:
    """Run ``python -m pdenets ARGV``, send SIGINT (Ctrl-C) once ``ready()`` is true, and return (exit code,
    stderr). The process may finish first (then the exit code is 0)."""
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "pdenets", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env())
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err
