import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed (pip install -e '.[test]')")
def test_ruff_clean():
    r = subprocess.run(["ruff", "check", str(ROOT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_no_function_longer_than_100_lines():
    """One spine: small functions (the training loop is a class of methods, not one long closure)."""
    import ast

    src = Path(__file__).resolve().parents[1] / "src" / "pdenets"
    long = []
    for f in sorted(src.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 100:
                    long.append(f"{f.relative_to(src)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "functions over 100 lines: " + ", ".join(long)
