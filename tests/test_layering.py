"""The layering of docs/design.md §6: the import-linter contracts of pyproject.toml hold for src/pdenets."""

import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: import-linter depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
CONTRACTS = {"stack", "layers", "models", "commands", "utils", "hooks", "regularizers"}
RUN_LINT = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


def test_contracts_are_declared():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert cfg["root_package"] == "pdenets"
    assert {c["id"] for c in cfg["contracts"]} == CONTRACTS
    stack = next(c for c in cfg["contracts"] if c["id"] == "stack")
    assert stack["exhaustive"] is True  # every top-level module of pdenets must be placed on a floor


def test_import_contracts_hold():
    r = subprocess.run(
        [sys.executable, "-c", RUN_LINT, "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, f"import-linter contracts broken:\n{r.stdout}\n{r.stderr}"
    assert f"{len(CONTRACTS)} kept, 0 broken" in r.stdout, r.stdout
