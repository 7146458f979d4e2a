import subprocess
import sys


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "pdenets", *args], capture_output=True, text=True)


def test_models_table():
    r = run_cli("models", "qlnet50_eq3*")
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("qlnet50_eq3 "))
    assert "8,608,868" in line and "1.635" in line


def test_models_no_match():
    r = run_cli("models", "nonexistent*")
    assert r.returncode == 2
    assert "no registered model" in r.stderr and "Traceback" not in r.stderr
