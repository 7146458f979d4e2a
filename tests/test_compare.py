"""`pdenets compare` (experiments/compare.py, docs/design.md §15): the model lists, the statistics against Python's
`statistics` module, settings that may not change under a comparison, and a comparison killed midway that
continues where it stopped and tabulates exactly the per-seed results of its runs."""

import json
import signal
import statistics
import subprocess
import sys
import time

import pytest
import timm

import pdenets  # noqa: F401  (registers the pdenets models with timm)
from _train_util import env, interrupt_once
from pdenets.errors import UsageError
from pdenets.experiments.compare import (
    ModelSpec,
    check_settings,
    mean_std,
    parse_models,
    preset_models,
    table_markdown,
)

# Table 1's rows (the paper's labels; its ResNet50 is the bottleneck ResNet on the layout's skeleton).
LABELS = ["ResNet (bottleneck)", "MobileNet_v3_large"] + ["Eq. (3)"] * 4 + [
    "Eq. (3) (no ws)", "Eq. (3) (no ws, x6)", "Eq. (4)", "Eq. (5)", "Eq. (6)", "Eq. (7) (no ws, x6)"]


@pytest.mark.parametrize("layout", ["50", "18_small"])
def test_table1_preset(layout):
    """Twelve rows, as in Table 1 (two baselines, ten QL rows), every one a registered timm model name."""
    specs = preset_models("table1", layout)
    assert [s.label for s in specs] == LABELS
    assert all(timm.is_model(s.name) for s in specs)
    suffix = "_small" if layout.endswith("small") else ""
    depth = layout.split("_")[0]
    assert specs[0].name == f"qlnet{depth}_resnet{suffix}" and specs[1].name == "mobilenetv3_large_100"
    assert [s.kwargs.get("act", "softball@ds") for s in specs[2:6]] == ["relu@all", "hardtanh@ds", "hardball@ds",
                                                                        "softball@ds"]
    assert specs[-1].name == f"qlnet{depth}_eq7_nows_x6{suffix}"
    assert len({s.key for s in specs}) == 12  # one run directory per row


def test_activations_preset_and_parsing():
    acts = preset_models("activations", "18_small")
    assert [s.text for s in acts] == ["qlnet18_eq3_small:act=relu@all", "qlnet18_eq3_small:act=hardtanh@ds",
                                      "qlnet18_eq3_small:act=hardball@ds", "qlnet18_eq3_small"]
    specs = parse_models("qlnet18_eq3_small:widths=[8,8,8,8]:act=hardball,resnet18,activations,resnet18", "18_small")
    assert specs[0] == ModelSpec("qlnet18_eq3_small", {"widths": [8, 8, 8, 8], "act": "hardball"})
    assert specs[0].text == "qlnet18_eq3_small:widths=[8, 8, 8, 8]:act=hardball"
    assert [s.name for s in specs[1:]] == ["resnet18"] + ["qlnet18_eq3_small"] * 4  # the repeat dropped
    for bad in ("qlnet18_eq3_small:act", ":act=relu", "nosuchpreset_or_model:x=[1,"):
        with pytest.raises(UsageError):
            parse_models(bad, "18_small")


def test_mean_std_is_the_sample_std():
    for values in ([98.0, 99.5, 97.25], [1.0, 2.0], [5.5]):
        m, s = mean_std(values)
        assert m == pytest.approx(statistics.mean(values))
        assert s == (pytest.approx(statistics.stdev(values)) if len(values) > 1 else None)


def test_changed_settings_are_refused(tmp_path):
    (tmp_path / "compare.json").write_text(json.dumps(dict(settings=dict(epochs=12, lr=0.002))))
    check_settings(tmp_path, dict(epochs=12, lr=0.002), overwrite=False)
    with pytest.raises(UsageError, match=r"other settings \(epochs: 12 -> 3\)"):
        check_settings(tmp_path, dict(epochs=3, lr=0.002), overwrite=False)
    check_settings(tmp_path, dict(epochs=3, lr=0.002), overwrite=True)
    check_settings(tmp_path, dict(epochs=12, lr=0.002, ema=False), overwrite=False)  # a new field at its default
    with pytest.raises(UsageError, match="ema"):
        check_settings(tmp_path, dict(epochs=12, lr=0.002, ema=True), overwrite=False)


TINY = ["--img-size", "8", "--batch-size", "16", "--max-steps-per-epoch", "2", "--epochs", "4", "-m",
        "widths=[8,8,8,8]", "--opt", "momentum", "--lr", "0.05", "--no-progress", "--deterministic"]
MODELS = "qlnet18_eq3_small,qlnet18_resnet_basic_small"


def _compare(out, **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pdenets", "compare", "--models", MODELS, "--seeds", "2", "--out", str(out), *TINY]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env(), **kw)


def _kill_midway(out) -> None:
    """Start the comparison and kill it (SIGKILL) once its first run has finished and the second has written a
    checkpoint."""
    first, second = out / "runs" / "qlnet18_eq3_small-s0", out / "runs" / "qlnet18_eq3_small-s1"
    proc = _compare(out)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if (first / "summary.json").is_file() and (second / "checkpoints" / "last" / "state.pt").is_file():
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert (first / "summary.json").is_file()


def test_compare_killed_midway_resumes(tmp_path):
    out = tmp_path / "cmp"
    _kill_midway(out)
    runs = out / "runs"
    before = (runs / "qlnet18_eq3_small-s0" / "summary.json").read_text()
    assert not (runs / "qlnet18_eq3_small-s1" / "summary.json").is_file()  # killed inside the second run
    proc = _compare(out)
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, log
    assert "[1/4] qlnet18_eq3_small seed 0: reused" in log
    assert "[2/4] qlnet18_eq3_small seed 1: resumed" in log  # continued from its checkpoint, not started over
    events = [json.loads(line) for line in (runs / "qlnet18_eq3_small-s1" / "metrics.jsonl").read_text().splitlines()]
    resumes = [e for e in events if e.get("event") == "resume"]
    assert len(resumes) == 1 and 1 <= resumes[0]["epoch"] < 4  # resumed after 1-3 of its 4 epochs
    assert (runs / "qlnet18_eq3_small-s0" / "summary.json").read_text() == before  # the finished run untouched
    table = json.loads((out / "table.json").read_text())
    md = (out / "table.md").read_text()
    assert [r["spec"] for r in table["rows"]] == ["qlnet18_eq3_small", "qlnet18_resnet_basic_small"]
    assert table["seeds"] == [0, 1] and "ddof = 1" in table["statistic"] and "ddof = 1" in md
    for row in table["rows"]:
        assert [x["seed"] for x in row["runs"]] == [0, 1]
        per_seed = []
        for x in row["runs"]:
            s = json.loads((out / x["run_dir"] / "summary.json").read_text())
            assert s["status"] == "completed" and s["epochs"] == 4 and s["model"] == row["model"]
            assert x["test_top1"] == s["test_top1"] and x["params"] == s["params"] == row["params"]
            per_seed.append(s["test_top1"])
        assert row["test_top1_mean"] == pytest.approx(statistics.mean(per_seed))
        assert row["test_top1_std"] == pytest.approx(statistics.stdev(per_seed))
        assert f"{statistics.mean(per_seed):.2f} ± {statistics.stdev(per_seed):.2f}" in md
        assert ", ".join(f"s{i}: {v:.2f}" for i, v in enumerate(per_seed)) in md
    assert md == table_markdown(table) and (out / "top1_vs_params.png").stat().st_size > 0
    assert [r["activation"] for r in table["rows"]] == ["softball@ds", "relu@all"]


def test_row_labels_follow_the_paper():
    """Labels and activations derived from the built model for rows given by name (not from a preset)."""
    from pdenets.experiments.compare import describe

    cases = {"qlnet18_eq3_nows_x6_small": ("Eq. (3) (no ws, x6)", "softball@ds"),
             "qlnet18_eq3p_small:act=hardball@all": ("Eq. (3) + P", "hardball@all"),
             "qlnet50_eq7_nows_x6": ("Eq. (7) (no ws, x6)", "softball@ds"),
             "qlnet18_resnet_basic_small": ("ResNet (basic)", "relu@all"),
             "qlnet50_resnet": ("ResNet (bottleneck)", "relu@all"),
             "resnet18": ("resnet18", "(its own)")}
    for text, want in cases.items():
        assert describe(parse_models(text, "50")[0], dict(num_classes=10, in_chans=1)) == want, text


def test_ctrl_c_prints_the_command_that_continues(tmp_path):
    """Ctrl-C (SIGINT) during a comparison: exit 130 and one line naming the command that continues it; running
    that command finishes the comparison, reusing the finished run."""
    import shlex

    out = tmp_path / "cmp"
    first = out / "runs" / "qlnet18_eq3_small-s0" / "summary.json"
    rc, err = interrupt_once(["compare", "--models", MODELS, "--seeds", "2", "--out", str(out), *TINY], first.is_file)
    if rc == 0:
        pytest.skip("the comparison finished before the interrupt arrived")
    assert rc == 130, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("pdenets compare: interrupted; continue with the same command"), line
    argv = shlex.split(line.partition("last checkpoint): ")[2])
    assert argv[:2] == ["pdenets", "compare"] and str(out) in argv, argv
    again = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, env=env(), timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "[1/4] qlnet18_eq3_small seed 0: reused" in again.stdout
    assert json.loads((out / "table.json").read_text())["rows"][1]["n"] == 2
