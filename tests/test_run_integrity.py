"""Nothing lost, nothing silent (issue 13, items 1-7): each test first reproduces a failure of the old
trainer (named in its docstring) and checks the new behaviour."""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from _train_util import TINY, TINY_CLI, env, one_thread, run_cli, weights
from pdenets.cli import main
from pdenets.train.metrics import read_events
from pdenets.train.nan_guard import first_nonfinite_state
from pdenets.train.trainer import train

RUN_CLI = [*TINY_CLI, "--max-steps-per-epoch", "4"]


def _csv_epochs(run) -> list[int]:
    lines = (run / "metrics.csv").read_text().splitlines()
    return [int(line.split(",")[0]) for line in lines[1:]]


def _all_finite(path) -> bool:
    return all(torch.isfinite(v).all() for v in weights(path).values() if v.is_floating_point())


def _err_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    lines = [e for e in err if not e.startswith(("NaN guard:", "epoch ", "resume at"))]
    assert len(lines) == 1 and "Traceback" not in "\n".join(err), err
    return lines[0]


# ---- 1. a run never reports success with a broken model -------------------------------------------------
def test_first_nonfinite_state_matches_a_plain_loop():
    """The fused check against an independent per-tensor torch.isfinite loop, on every position."""
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2)).double()
    assert first_nonfinite_state(net) is None
    names = [n for n, _ in (*net.named_parameters(), *net.named_buffers()) if _.is_floating_point()]
    for bad in (float("nan"), float("inf"), -float("inf")):
        for name in names:
            t = net.get_parameter(name) if name in dict(net.named_parameters()) else net.get_buffer(name)
            keep = t.detach().clone()
            with torch.no_grad():
                t.view(-1)[-1] = bad
            ref = next(n for n in names if not torch.isfinite(
                dict((*net.named_parameters(), *net.named_buffers()))[n]).all())
            assert first_nonfinite_state(net) == ref == name
            with torch.no_grad():
                t.copy_(keep)


def test_nonfinite_weights_after_a_step_never_reach_a_checkpoint(tmp_path):
    """Old: loss and gradients were checked before the step, never the state after it. Here the step's
    constraint makes a BatchNorm running variance infinite at step 3: training-mode forwards stay finite
    (they use batch statistics), so the old guard saw nothing and wrote the inf buffer to last/ and best/
    (validation loss nan). Now the check after the step catches it, rolls back and the run completes finite."""
    from pdenets.models import create_model

    torch.manual_seed(0)
    model = create_model("qlnet18_eq3_small", num_classes=10, in_chans=1, widths=[8, 8, 8, 8])
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    calls = []

    def constrain_():
        calls.append(1)
        if len(calls) == 4:  # once before training, then after steps 1, 2, 3
            bn.running_var[0] = float("inf")

    model.constrain_ = constrain_
    with one_thread():
        s = train(dict(TINY, epochs=2, out=str(tmp_path / "r")), model=model)
    assert s["status"] == "completed" and s["nan_failures"] == 1
    (ev,) = read_events(tmp_path / "r", "nan")
    assert ev["reason"] == "non-finite weights after the step" and ev["param"].endswith("running_var")
    assert _all_finite(tmp_path / "r/checkpoints/last") and _all_finite(tmp_path / "r/checkpoints/best")
    assert all(torch.isfinite(torch.tensor(r)) for r in [s["test_loss"], s["val_top1"]])


def test_alternating_failures_are_counted_over_a_window(tmp_path):
    """Old: only failures in a row counted, so NaN at every other step drove the lr towards 0 and the run
    ended 'completed'. Now 5 failures within 100 attempts stop it."""
    steps = list(range(0, 40, 2))
    with one_thread():
        s = train(dict(TINY, epochs=5, inject_nan_steps=steps, out=str(tmp_path / "r")))
    assert s["status"] == "diverged" and "5 non-finite steps within 100 step attempts" in s["message"]
    ev = read_events(tmp_path / "r", "nan")
    assert len(ev) == 5 and max(e["consecutive"] for e in ev) == 1  # never two in a row


class _NanInEval:
    """Forward hook: the model's output is NaN in eval mode for the first ``n`` validations."""

    def __init__(self, n):
        self.n, self.seen = n, 0

    def __call__(self, module, inp, out):
        if module.training:
            return out
        if inp[0].shape[0] and self.seen < self.n:
            self.seen += 1
            return out * float("nan")
        return out


def test_nonfinite_validation_is_a_failure(tmp_path):
    """Old: a NaN validation loss was logged and the epoch kept (the run 'completed' with val loss nan). Now
    the epoch is trained again from its start at half the lr."""
    from pdenets.models import create_model

    with one_thread():
        torch.manual_seed(0)
        model = create_model("qlnet18_eq3_small", num_classes=10, in_chans=1, widths=[8, 8, 8, 8])
        model.register_forward_hook(_NanInEval(1))
        s = train(dict(TINY, epochs=2, out=str(tmp_path / "r")), model=model)
    assert s["status"] == "completed" and s["nan_failures"] == 1
    (ev,) = read_events(tmp_path / "r", "nan")
    assert ev["reason"].startswith("non-finite validation loss") and ev["lr_scale"] == 0.5
    assert _csv_epochs(tmp_path / "r") == [1, 2] and s["steps"] == 8


def test_a_diverging_run_exits_1_and_its_command_continues_it(tmp_path, capsys):
    """Old: `--lr 1e3 -m act=none` ended 'completed', exit 0; the stop message pointed to a last/ that did not
    exist when the stop came in epoch 1. Now exit 1, one line, a finite last/, and the printed command works."""
    run = tmp_path / "r"
    with one_thread():
        rc = main(["train", *RUN_CLI, "-m", "act=none", "--lr", "1e3", "--epochs", "2", "--out", str(run)])
        line = _err_line(capsys)
        assert rc == 1 and "training diverged" in line and "continue with: pdenets train --resume" in line
        assert _all_finite(run / "checkpoints/last")
        cmd = shlex.split(line.split("continue with: ")[1])
        assert cmd[:2] == ["pdenets", "train"]
        assert main(cmd[1:]) == 0, capsys.readouterr().err
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "completed" and s["epochs"] == 2 and _csv_epochs(run) == [1, 2]


def test_divergence_without_the_guard_is_one_line(tmp_path, capsys):
    """Old: `--nan-guard off` and a diverging run ended in a traceback."""
    with one_thread():
        rc = main(["train", *RUN_CLI, "-m", "act=none", "--lr", "1e3", "--nan-guard", "off", "--out",
                   str(tmp_path / "r")])
    line = _err_line(capsys)
    assert rc == 1 and "non-finite" in line and "--nan-guard on" in line


# ---- 2. --resume auto never destroys history; nothing deleted without --overwrite ---------------------
@pytest.fixture()
def finished(tmp_path):
    run = tmp_path / "run"
    with one_thread():
        assert main(["train", *RUN_CLI, "--epochs", "2", "--out", str(run)]) == 0
    return run


def _snapshot(run) -> dict:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()
            and p.name != ".lock"}


def test_resume_auto_with_a_damaged_last_keeps_the_run(finished, capsys):
    """Old: with last/state.pt missing, --resume auto started over (exit 0, metrics deleted, best/ and last/
    overwritten). Now exit 2 and every file stays as it was."""
    (finished / "checkpoints/last/state.pt").unlink()
    before = _snapshot(finished)
    rc = main(["train", *RUN_CLI, "--epochs", "3", "--out", str(finished), "--resume", "auto"])
    line = _err_line(capsys)
    assert rc == 2 and "no complete checkpoint" in line and "state.pt is missing" in line
    assert _snapshot(finished) == before


def test_a_fresh_run_refuses_to_replace_a_run(finished, capsys):
    before = _snapshot(finished)
    assert main(["train", *RUN_CLI, "--epochs", "1", "--out", str(finished)]) == 2
    assert "already holds a run" in _err_line(capsys) and _snapshot(finished) == before
    with one_thread():
        assert main(["train", *RUN_CLI, "--epochs", "1", "--out", str(finished), "--overwrite"]) == 0
    assert _csv_epochs(finished) == [1]


def test_resume_auto_falls_back_to_the_previous_checkpoint(finished, capsys):
    """A kill between the two renames of a swap leaves last.old complete and no last/: resume uses it."""
    ck = finished / "checkpoints"
    os.replace(ck / "last", ck / "last.old")
    with one_thread():
        assert main(["train", *RUN_CLI, "--epochs", "3", "--out", str(finished), "--resume", "auto"]) == 0
    assert json.loads((finished / "summary.json").read_text())["epochs"] == 3 and _csv_epochs(finished) == [1, 2, 3]


# ---- 3. one run per output directory ----------------------------------------------------------------
def test_a_second_run_on_the_same_out_is_refused(tmp_path):
    """Old: two runs on one --out both exited 0 (config of one, weights of the other, interleaved metrics)."""
    run = tmp_path / "r"
    first = subprocess.Popen([sys.executable, "-m", "pdenets", "train", *RUN_CLI, "--epochs", "200", "--out",
                              str(run)], env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.time()
        while not ((run / ".lock").is_file() and (run / ".lock").read_text()):
            assert first.poll() is None and time.time() - t0 < 90, first.communicate()
            time.sleep(0.05)
        second = run_cli("train", *RUN_CLI, "--epochs", "1", "--out", str(run), "--overwrite")
        assert second.returncode == 2, second.stderr
        assert "in use by another run" in second.stderr and f"pid {first.pid}" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
    finally:
        first.kill()
        first.wait()
    # the killed run's lock is gone with its process: the run can be continued at once
    r = run_cli("train", *RUN_CLI, "--epochs", "200", "--stop-after", "1", "--out", str(run), "--resume", "auto")
    assert r.returncode == 0, r.stderr
    assert read_events(run, "resume")


def test_lock_without_flock_uses_the_holders_pid(tmp_path, monkeypatch):
    """Where flock is unavailable the lock file's pid decides: a live holder refuses, a dead one is stale."""
    from pdenets.errors import UsageError
    from pdenets.train import rundir

    monkeypatch.setattr(rundir, "_flock", lambda fd: None)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ".lock").write_text(json.dumps(dict(pid=sleeper.pid, host=__import__("socket").gethostname(),
                                                        started=time.time())))
        with pytest.raises(UsageError, match=f"pid {sleeper.pid}"):
            rundir.RunLock(tmp_path).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    with rundir.RunLock(tmp_path):  # the holder is dead: stale, taken over
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()


# ---- 4. resume is honest ---------------------------------------------------------------------------------
def _cosine(t, total, lr):
    import math

    return 0.5 * lr * (1 + math.cos(math.pi * t / total))


def test_resume_applies_a_new_lr_and_more_epochs(finished, capsys):
    """Old: --resume ... --lr X trained with the old lr while config.yaml said X; --epochs 5 on a finished run
    trained at min lr without a word. Now the schedule is rebuilt for the new values and the change said."""
    with one_thread():
        assert main(["train", "--resume", str(finished), "--lr", "0.02", "--epochs", "4", "--no-progress"]) == 0
    err = capsys.readouterr().err
    line = next(e for e in err.splitlines() if e.startswith("resume at epoch 2: "))
    assert "lr 0.05 -> 0.02" in line and "epochs 2 -> 4" in line and "the lr schedule is rebuilt" in line
    rows = [json.loads(line) for line in (finished / "metrics.jsonl").read_text().splitlines()]
    lrs = {r["epoch"]: r["lr"] for r in rows if r["event"] == "epoch"}
    # cosine over 4 epochs of 4 steps from lr 0.02, sampled after epochs 3 and 4 (independent formula)
    assert lrs[3] == pytest.approx(_cosine(12, 16, 0.02), rel=1e-9)
    assert lrs[4] == pytest.approx(_cosine(16, 16, 0.02), abs=1e-12)
    import yaml

    saved = yaml.safe_load((finished / "config.yaml").read_text())
    assert saved["lr"] == 0.02 and saved["epochs"] == 4 and _csv_epochs(finished) == [1, 2, 3, 4]


@pytest.mark.parametrize("change, key", [
    (["--model", "qlnet18_eq4_small"], "model"), (["--opt", "adamw"], "opt"), (["--batch-size", "8"], "batch_size"),
    (["-m", "widths=[8,8,8,16]"], "model_kwargs"), (["--seed", "3"], "seed"), (["--epochs", "1"], "fewer"),
])
def test_resume_refuses_what_it_cannot_apply(finished, capsys, change, key):
    before = _snapshot(finished)
    assert main(["train", "--resume", str(finished), *change]) == 2
    assert key in _err_line(capsys) and _snapshot(finished) == before


# ---- 5. integrity ---------------------------------------------------------------------------------------
def test_flipped_bytes_in_weights_are_detected(finished, capsys):
    """Old: 64 flipped bytes in model.safetensors changed the accuracy and nothing complained."""
    f = finished / "checkpoints/best/model.safetensors"
    data = bytearray(f.read_bytes())
    for i in range(64):
        data[-1 - 7 * i] ^= 0xFF
    f.write_bytes(bytes(data))
    assert main(["eval", "--checkpoint", str(f)]) == 2
    line = _err_line(capsys)
    assert str(f) in line and "fail their checksum" in line


def test_flipped_training_state_is_detected(finished, capsys):
    """Old: a flipped state.pt trained on (at lr 4.8e-12), 'completed'."""
    f = finished / "checkpoints/last/state.pt"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    assert main(["train", "--resume", str(finished / "checkpoints/last"), "--epochs", "3"]) == 2
    line = _err_line(capsys)
    assert "state.pt" in line and "checksum" in line


def test_best_is_repaired_after_a_kill_between_the_writes(tmp_path, monkeypatch):
    """Old: a kill between the last/ and best/ writes left best/ an epoch behind what summary.json claimed."""
    from pdenets.train.trainer import Trainer

    run = tmp_path / "r"
    real = Trainer.save_best

    def killed_at_epoch_2(self, top1):
        if self.epoch == 2:
            raise KeyboardInterrupt  # the process dies right after writing last/ of epoch 2
        real(self, top1)

    cfg = dict(TINY, epochs=3, lr=0.2, out=str(run))
    with one_thread():
        monkeypatch.setattr(Trainer, "save_best", killed_at_epoch_2)
        with pytest.raises(KeyboardInterrupt):
            train(cfg)
        monkeypatch.setattr(Trainer, "save_best", real)
        state = torch.load(run / "checkpoints/last/state.pt", weights_only=True)
        assert state["progress"]["best_epoch"] == 2  # the test needs epoch 2 to be the best so far
        s = train(dict(cfg, resume="auto"))
    best_meta = json.loads((run / "checkpoints/best/meta.json").read_text())
    assert best_meta["epoch"] == s["best_epoch"]
    assert best_meta["val_top1"] == pytest.approx(s["val_top1"])


# ---- 6. data sets checked before training ----------------------------------------------------------------
def _tree(root, splits: dict[str, list[str]]):
    from PIL import Image

    for split, classes in splits.items():
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (8, 8), (40 * i, 80, 120)).save(root / split / c / f"{i}.png")


def test_imagefolder_class_lists_must_match(tmp_path, capsys):
    """Old: train {a,b} with val {a,c} silently scored c as b."""
    _tree(tmp_path / "t", {"train": ["a", "b"], "val": ["a", "c"]})
    rc = main(["train", *RUN_CLI, "--dataset", f"imagefolder:{tmp_path / 't'}", "--out", str(tmp_path / "r")])
    line = _err_line(capsys)
    assert rc == 2 and "missing ['b']" in line and "extra ['c']" in line
    assert not (tmp_path / "r/checkpoints").exists()


def test_unreadable_images_are_reported_before_the_first_step(tmp_path, capsys):
    """Old: a corrupt image crashed mid-epoch with a traceback."""
    _tree(tmp_path / "t", {"train": ["a", "b"], "val": ["a", "b"]})
    bad = tmp_path / "t/train/b/2.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    rc = main(["train", *RUN_CLI, "--dataset", f"imagefolder:{tmp_path / 't'}", "--out", str(tmp_path / "r")])
    line = _err_line(capsys)
    assert rc == 2 and "1 unreadable image(s)" in line and str(bad) in line
    assert not (tmp_path / "r/checkpoints").exists()


# ---- 7. a full disk --------------------------------------------------------------------------------------
def test_full_disk_is_one_line_and_keeps_the_previous_checkpoint(finished):
    """Old: a C++ iostream traceback and a partial temporary checkpoint on the full disk. The disk is made
    'full' for the child process with RLIMIT_FSIZE (writes past the limit fail with EFBIG)."""
    import resource

    before = (finished / "checkpoints/last/model.safetensors").read_bytes()
    limit = len(before) // 2

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    r = subprocess.run([sys.executable, "-m", "pdenets", "train", "--resume", "auto", "--out", str(finished),
                        "--epochs", "3"], env=env(), capture_output=True, text=True, timeout=120,
                       preexec_fn=small_files)
    lines = [x for x in r.stderr.strip().splitlines() if not x.startswith(("epoch ", "resume at"))]
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "cannot write" in lines[0] and str(finished / "checkpoints") in lines[0]
    assert not list((finished / "checkpoints").glob("*.tmp-*"))
    assert (finished / "checkpoints/last/model.safetensors").read_bytes() == before
    from pdenets.train.checkpoint import checkpoint_problem

    assert checkpoint_problem(finished / "checkpoints/last") is None


# ---- the kill loop ---------------------------------------------------------------------------------------
KILL_ARGS = [*TINY_CLI, "--max-steps-per-epoch", "3", "--epochs", "26", "--weight-decay", "1e-4"]
KILLS = 20


def _start(run, *extra):
    return subprocess.Popen([sys.executable, "-m", "pdenets", "train", *KILL_ARGS, "--out", str(run), *extra],
                            env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _epoch_done(run) -> int:
    try:
        return int(json.loads((run / "checkpoints/last/meta.json").read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return -1


def _kill_at_random(proc, run, rng, target: int, during_write: bool) -> None:
    """SIGKILL ``proc`` once its checkpoint has reached epoch ``target`` (so that the loop makes progress):
    while the next checkpoint is being written (a ``*.tmp-*`` directory exists) or after a random delay."""
    t0 = time.time()
    while proc.poll() is None and _epoch_done(run) < target and time.time() - t0 < 90:
        time.sleep(0.002)
    deadline = time.time() + (10 if during_write else rng.uniform(0.0, 0.3))
    while proc.poll() is None and time.time() < deadline:
        if during_write and list((run / "checkpoints").glob("*.tmp-*")):
            break
        time.sleep(0.001)
    proc.kill()
    proc.wait()


def test_twenty_kills_resume_to_bit_identical_weights(tmp_path):
    """At least 20 SIGKILLs at random moments (every third while a checkpoint is being written), each followed
    by --resume auto: the final weights are bit-identical to an uninterrupted run, metrics.csv has one row
    per epoch, and the test score and best epoch agree."""
    import random

    ref = subprocess.run([sys.executable, "-m", "pdenets", "train", *KILL_ARGS, "--out", str(tmp_path / "ref")],
                         env=env(), capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr
    run, rng, kills = tmp_path / "run", random.Random(13), 0
    for i in range(KILLS):
        proc = _start(run, "--resume", "auto")
        _kill_at_random(proc, run, rng, target=i, during_write=i % 3 == 0)
        assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr.read())
        kills += 1
    final = run_cli("train", *KILL_ARGS, "--out", str(run), "--resume", "auto", timeout=300)
    assert final.returncode == 0, final.stderr
    assert kills == KILLS
    a, b = weights(tmp_path / "ref/checkpoints/last"), weights(run / "checkpoints/last")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _csv_epochs(run) == list(range(1, 27))
    sa = json.loads((tmp_path / "ref/summary.json").read_text())
    sb = json.loads((run / "summary.json").read_text())
    assert sb["test_top1"] == sa["test_top1"] and sb["best_epoch"] == sa["best_epoch"]
    assert len(read_events(run, "resume")) >= 1 and not list((run / "checkpoints").glob("*.tmp-*"))
    shutil.rmtree(tmp_path / "ref")
