"""Library code leaves process-wide state alone: no thread count, default dtype or matplotlib backend is set
outside the command line (docs/design.md §6), and the report figures need no pyplot."""

import re
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "pdenets"
GLOBAL_STATE = re.compile(
    r"torch\.set_num_threads|torch\.set_default_dtype|torch\.use_deterministic_algorithms|"
    r"torch\.set_float32_matmul_precision|matplotlib\.use\(|torch\.backends\.\w+\.\w+\s*=(?!=)"
)
CLI_ONLY = ("cli.py", "commands/")  # the command line may set threads (--threads)

PLOT_IN_SUBPROCESS = """
import sys, tempfile, torch, matplotlib
from pdenets.layers.derivative import DerivativeConv
from pdenets.pde.operators import kernel_report, plot_report
from pdenets.train.report import plot_curves
d = tempfile.mkdtemp()
row = dict(epoch=1, train_loss=1.0, val_loss=1.2, train_top1=50.0, val_top1=40.0, val_top5=90.0)
plot_curves([row, dict(row, epoch=2)], d + "/curves.png")
plot_report(kernel_report(torch.nn.Sequential(DerivativeConv(2, 2))), d + "/kernels.png")
assert "matplotlib.pyplot" not in sys.modules, "a report imported pyplot"
assert matplotlib.rcParams._get_backend_or_none() == "svg", matplotlib.rcParams._get_backend_or_none()
print("ok")
"""


def test_no_library_module_sets_process_state():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith(CLI_ONLY):
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if GLOBAL_STATE.search(line):
                offenders.append(f"{rel}:{i}: {line.strip()}")
    assert not offenders, "process-wide state set in library code:\n" + "\n".join(offenders)


def test_report_figures_keep_the_users_backend():
    env = {"MPLBACKEND": "svg", "PATH": "", "HOME": str(Path.home())}
    r = subprocess.run([sys.executable, "-c", PLOT_IN_SUBPROCESS], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout + r.stderr
