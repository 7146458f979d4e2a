"""DistributedDataParallel with torchrun on CPU (gloo) against a single process with the same global batch.

Why the comparison is exact mathematics: with ``--freeze-bn`` the BatchNorm layers use their (fixed)
running statistics, so the network is a per-sample function and the loss of a batch is the mean of
per-sample losses. DistributedSampler gives rank r the samples perm[r::2] of the epoch permutation, so
the two ranks' batches of 8 together are exactly the single process's batch of 16 (perm[16b:16b+16]).
DDP averages the two ranks' gradients of their batch means, which is the gradient of the mean over the
16 samples; SGD then makes the same update. Hence the weights and the epoch's mean training loss agree
up to float rounding (bound 1e-5), and both ranks hold identical weights (DDP broadcasts rank 0's
initial weights and every rank applies the same averaged gradient).
"""

import json
import sys

from _train_util import TINY_CLI, env, max_abs_diff, run_cli, weights


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["event"] == "epoch"]


def test_torchrun_two_ranks_matches_single_process(tmp_path):
    import subprocess

    common = [*TINY_CLI, "--freeze-bn", "--epochs", "1", "--max-steps-per-epoch", "3", "--wd", "1e-3",
              "--sched", "none"]
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "pdenets",
            "train", *common, "--batch-size", "8", "--out", str(tmp_path / "ddp")]
    ddp = subprocess.run(argv, capture_output=True, text=True, env=env(), timeout=300)
    if ddp.returncode != 0 and "terminate called without an active exception" in ddp.stderr:
        # gloo's teardown can abort a rank on a heavily loaded machine after the run has finished; the run is
        # repeated once from scratch (a real failure fails twice; the comparison below is unchanged)
        import shutil

        shutil.rmtree(tmp_path / "ddp")
        ddp = subprocess.run(argv, capture_output=True, text=True, env=env(), timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = run_cli("train", *common, "--batch-size", "16", "--out", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr[-3000:]
    s_ddp = json.loads((tmp_path / "ddp/summary.json").read_text())
    assert s_ddp["world_size"] == 2 and s_ddp["steps"] == 3
    assert s_ddp["ddp_max_rank_weight_diff"] <= 1e-7  # both ranks end with the same weights
    assert max_abs_diff(weights(tmp_path / "ddp/checkpoints/last"), weights(tmp_path / "one/checkpoints/last")) <= 1e-5
    (m_ddp,), (m_one,) = _metrics(tmp_path / "ddp"), _metrics(tmp_path / "one")
    assert abs(m_ddp["train_loss"] - m_one["train_loss"]) <= 1e-5
    # the evaluation is sharded across ranks and all-reduced: same test metrics as one process
    assert abs(m_ddp["val_loss"] - m_one["val_loss"]) <= 1e-5 and m_ddp["val_top1"] == m_one["val_top1"]
