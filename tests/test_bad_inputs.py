"""Every bad input to every subcommand is one line on stderr (``pdenets CMD: error: ...``) and exit code 2,
with no traceback and no output written: the table below holds the bad invocations, each refused at the
boundary (argparse types of ``pdenets.commands.common``, ``TrainConfig.validate``, the trainer's preflight,
the commands' own checks) before any training or data loading. ``--help`` of every (nested) subcommand still
works."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

import pytest
import torch

from _train_util import env
from pdenets.cli import build_parser, main

CUDA = torch.cuda.is_available()
no_cuda = pytest.mark.skipif(CUDA, reason="a CUDA device is present: --device cuda is valid here")
BIG = str(2**64)  # beyond 64 bits
T = ["--model", "qlnet18_eq3_small", "-m", "widths=[8,8,8,8]", "--img-size", "8", "--batch-size", "16",
     "--epochs", "1", "--max-steps-per-epoch", "1", "--no-progress"]
TRAIN = ["train", "--out", "{out}", *T]
YAML = ["train", "--out", "{out}", "--config"]  # no other option: the file's values must not be overridden
QL = ["-c", "{ql}"]
RH = ["-c", "{rh}"]
EXPORT = ["export", "--model", "qlnet18_eq3_small", "--format", "torchscript", "--out", "{out}/m.pt"]
COMPRESS = ["symmetry", "compress", *QL, "--out", "{out}"]
TELEPORT = ["symmetry", "teleport", *QL, "--steps", "1", "--out", "{out}"]
CMP = ["compare", "--out", "{out}", "--models", "qlnet18_eq3_small", "--img-size", "8", "--epochs", "1",
       "--max-steps-per-epoch", "1", "--no-progress"]  # a later --models replaces this one

# YAML files of --config rows: name -> text
CONFIGS = {
    "lr_fast": 'lr: "fast"\n', "nan_guard_str": 'nan_guard: "false"\n', "epochs_true": "epochs: true\n",
    "seed_float": "seed: 1.5\n", "momentum_2": "momentum: 2\n", "hooks_str": "hooks: box\n",
    "kwargs_list": "model_kwargs: [1, 2]\n", "broken": "lr: [1, 2\n", "a_list": "- lr\n- 0.1\n",
    "unknown_key": "learning_rate: 0.1\n", "batch_str": 'batch_size: "16"\n', "wd_nan": "weight_decay: .nan\n",
}

# (id, argv, a substring of the one-line message)
ROWS = [
    # ---- train: -m constructor arguments, data set <-> model kind, classes ----
    ("train-m-act-bogus", [*TRAIN, "-m", "act=bogus"], "act='bogus'"),
    ("train-m-bad-yaml", [*TRAIN, "-m", "widths=[1,2"], "not valid YAML"),
    ("train-m-num-classes", [*TRAIN, "-m", "num_classes=3"], "num_classes"),
    ("train-m-unknown-kwarg", [*TRAIN, "-m", "foo=1"], "-m foo=1"),
    ("train-m-widths-str", [*TRAIN, "-m", "widths=abc"], "widths"),
    ("train-m-no-equals", [*TRAIN, "-m", "noequal"], "KEY=VALUE"),
    ("train-m-empty-key", [*TRAIN, "-m", "=3"], "KEY=VALUE"),
    ("train-circles-image-model", [*TRAIN, "--dataset", "circles"], "takes images"),
    ("train-digits-point-model", ["train", "--out", "{out}", "--model", "ruseckas_circles_r2", "--dataset",
                                  "digits"], "takes points"),
    ("train-unknown-model", [*TRAIN, "--model", "nosuch_model"], "unknown model 'nosuch_model'"),
    ("train-unknown-dataset", [*TRAIN, "--dataset", "nosuch"], "unknown dataset 'nosuch'"),
    ("train-unknown-recipe", [*TRAIN, "--recipe", "nosuch"], "unknown recipe 'nosuch'"),
    ("train-unknown-opt", [*TRAIN, "--opt", "bogus"], "--opt 'bogus'"),
    ("train-unknown-sched", [*TRAIN, "--sched", "bogus"], "--sched"),
    ("train-clip-mode", [*TRAIN, "--clip-mode", "bogus"], "--clip-mode"),
    ("train-amp", [*TRAIN, "--amp", "fp8"], "--amp"),
    ("train-remode", [*TRAIN, "--remode", "bogus"], "--remode"),
    ("train-which", [*TRAIN, "--which", "bogus"], "--which"),
    ("train-inject-module", [*TRAIN, "--inject-nan-module", "nosuch", "--inject-nan-steps", "1"], "nosuch"),
    # ---- train: hooks ----
    ("train-hook-unknown", [*TRAIN, "--hook", "nosuch-hook:1"], "unknown training hook 'nosuch-hook'"),
    ("train-hook-value-str", [*TRAIN, "--hook", "box:abc"], "box:abc"),
    ("train-hook-value-nan", [*TRAIN, "--hook", "rh-tv:nan"], "finite"),
    ("train-hook-value-neg", [*TRAIN, "--hook", "box:-1"], "box"),
    ("train-nuclear-prox-nan", [*TRAIN, "--nuclear-prox", "nan"], "--nuclear-prox"),
    # ---- train: numbers ----
    ("train-lr-inf", [*TRAIN, "--lr", "inf"], "--lr"),
    ("train-lr-nan", [*TRAIN, "--lr", "nan"], "--lr"),
    ("train-lr-negative", [*TRAIN, "--lr", "-1"], "--lr"),
    ("train-lr-zero", [*TRAIN, "--lr", "0"], "--lr"),
    ("train-wd-nan", [*TRAIN, "--weight-decay", "nan"], "--weight-decay"),
    ("train-momentum-nan", [*TRAIN, "--momentum", "nan"], "--momentum"),
    ("train-clip-grad-nan", [*TRAIN, "--clip-grad", "nan"], "--clip-grad"),
    ("train-smoothing-nan", [*TRAIN, "--smoothing", "nan"], "--smoothing"),
    ("train-smoothing-1.5", [*TRAIN, "--smoothing", "1.5"], "--smoothing"),
    ("train-seed-65-bits", [*TRAIN, "--seed", BIG], "--seed"),
    ("train-epochs-zero", [*TRAIN, "--epochs", "0"], "--epochs"),
    ("train-epochs-negative", [*TRAIN, "--epochs", "-3"], "--epochs"),
    ("train-epochs-str", [*TRAIN, "--epochs", "abc"], "--epochs"),
    ("train-batch-zero", [*TRAIN, "--batch-size", "0"], "--batch-size"),
    ("train-workers-negative", [*TRAIN, "--workers", "-1"], "--workers"),
    ("train-img-size-zero", [*TRAIN, "--img-size", "0"], "--img-size"),
    ("train-reprob-2", [*TRAIN, "--reprob", "2"], "--reprob"),
    ("train-ema-decay-1", [*TRAIN, "--ema-decay", "1"], "--ema-decay"),
    ("train-nan-lr-factor-0", [*TRAIN, "--nan-lr-factor", "0"], "--nan-lr-factor"),
    ("train-nan-window", [*TRAIN, "--nan-window", "2", "--nan-max-failures", "5"], "--nan-window"),
    ("train-max-steps-zero", [*TRAIN, "--max-steps-per-epoch", "0"], "--max-steps-per-epoch"),
    ("train-milestones-negative", [*TRAIN, "--decay-milestones", "-3"], "--decay-milestones"),
    ("train-random-shift-negative", [*TRAIN, "--random-shift", "-1"], "--random-shift"),
    ("train-threads-negative", [*TRAIN, "--threads", "-1"], "--threads"),
    # ---- train: device, paths ----
    pytest.param("train-device-cuda", [*TRAIN, "--device", "cuda"], "cuda", marks=no_cuda, id="train-device-cuda"),
    ("train-device-bogus", [*TRAIN, "--device", "bogus"], "--device"),
    ("train-out-empty", ["train", *T, "--out", ""], "--out"),
    ("train-out-file", ["train", *T, "--out", "{file}"], "existing file"),
    ("train-out-below-file", ["train", *T, "--out", "{file}/run"], "not a directory"),
    ("train-out-read-only", ["train", *T, "--out", "{ro}/run"], "permission denied"),
    ("train-init-from-missing", [*TRAIN, "--init-from", "/nonexistent/run"], "/nonexistent/run"),
    ("train-init-from-random-file", [*TRAIN, "--init-from", "{junk}"], "not a pdenets model file"),
    ("train-resume-missing", [*TRAIN, "--resume", "/nonexistent/run"], "/nonexistent/run"),
    # ---- train --config: YAML values are typed ----
    ("yaml-lr-str", [*YAML, "{cfg_lr_fast}"], "--lr"),
    ("yaml-nan-guard-str", [*YAML, "{cfg_nan_guard_str}"], "--nan-guard"),
    ("yaml-epochs-bool", [*YAML, "{cfg_epochs_true}"], "--epochs"),
    ("yaml-seed-float", [*YAML, "{cfg_seed_float}"], "--seed"),
    ("yaml-momentum-2", [*YAML, "{cfg_momentum_2}"], "--momentum"),
    ("yaml-hooks-str", [*YAML, "{cfg_hooks_str}"], "--hook"),
    ("yaml-kwargs-list", [*YAML, "{cfg_kwargs_list}"], "model-kwarg"),
    ("yaml-batch-str", [*YAML, "{cfg_batch_str}"], "--batch-size"),
    ("yaml-wd-nan", [*YAML, "{cfg_wd_nan}"], "--weight-decay"),
    ("yaml-broken", [*YAML, "{cfg_broken}"], "not valid YAML"),
    ("yaml-not-mapping", [*YAML, "{cfg_a_list}"], "mapping"),
    ("yaml-unknown-key", [*YAML, "{cfg_unknown_key}"], "learning_rate"),
    ("yaml-missing", [*YAML, "/nonexistent/c.yaml"], "does not exist"),
    # ---- demo (the train options, then its own steps) ----
    ("demo-epochs-zero", ["demo", "--out", "{out}", "--epochs", "0"], "--epochs"),
    ("demo-lr-nan", ["demo", "--out", "{out}", "--lr", "nan"], "--lr"),
    ("demo-m-act-bogus", ["demo", "--out", "{out}", "-m", "act=bogus"], "act='bogus'"),
    ("demo-out-file", ["demo", "--out", "{file}"], "existing file"),
    # ---- eval ----
    ("eval-split", ["eval", *QL, "--split", "bogus"], "--split"),
    ("eval-batch-zero", ["eval", *QL, "--batch-size", "0"], "--batch-size"),
    ("eval-workers-negative", ["eval", *QL, "--workers", "-1"], "--workers"),
    ("eval-img-size-zero", ["eval", *QL, "--img-size", "0"], "--img-size"),
    ("eval-device-bogus", ["eval", *QL, "--device", "bogus"], "--device"),
    pytest.param("eval-device-cuda", ["eval", *QL, "--device", "cuda"], "cuda", marks=no_cuda, id="eval-device-cuda"),
    ("eval-points-dataset", ["eval", *QL, "--dataset", "circles"], "circles"),
    ("eval-image-dataset-for-points", ["eval", "-c", "{pts}", "--dataset", "digits"], "digits"),
    ("eval-unknown-dataset", ["eval", *QL, "--dataset", "nosuch"], "unknown dataset"),
    ("eval-checkpoint-missing", ["eval", "-c", "/nonexistent/run"], "does not exist"),
    ("eval-checkpoint-random-file", ["eval", "-c", "{junk}"], "not a pdenets model file"),
    ("eval-which", ["eval", *QL, "--which", "bogus"], "--which"),
    ("eval-no-checkpoint", ["eval"], "--checkpoint"),
    ("eval-out-file", ["eval", *QL, "--out", "{file}"], "existing file"),
    # ---- export ----
    ("export-tol-nan", [*EXPORT, "--tol", "nan"], "--tol"),
    ("export-tol-negative", [*EXPORT, "--tol", "-1"], "--tol"),
    ("export-num-classes-zero", [*EXPORT, "--num-classes", "0"], "--num-classes"),
    ("export-img-size-zero", [*EXPORT, "--img-size", "0"], "--img-size"),
    ("export-batch-zero", [*EXPORT, "--batch", "0"], "--batch"),
    ("export-opset-zero", ["export", "--model", "qlnet18_eq3_small", "--format", "onnx", "--out", "{out}/m.onnx",
                           "--opset", "0"], "--opset"),
    ("export-format", ["export", "--model", "qlnet18_eq3_small", "--format", "bogus", "--out", "{out}/m"],
     "--format"),
    ("export-unknown-model", ["export", "--model", "nosuch", "--format", "torchscript", "--out", "{out}/m.pt"],
     "nosuch"),
    ("export-points-model", ["export", "-c", "{pts}", "--format", "torchscript", "--out", "{out}/m.pt"],
     "non-image"),
    ("export-checkpoint-missing", ["export", "-c", "/nonexistent/run", "--format", "torchscript", "--out",
                                   "{out}/m.pt"], "does not exist"),
    ("export-checkpoint-random-file", ["export", "-c", "{junk}", "--format", "torchscript", "--out", "{out}/m.pt"],
     "not a pdenets model file"),
    ("export-both-sources", ["export", *QL, "--model", "qlnet18_eq3_small", "--format", "torchscript", "--out",
                             "{out}/m.pt"], "not allowed with"),
    ("export-out-empty", ["export", "--model", "qlnet18_eq3_small", "--format", "torchscript", "--out", ""],
     "--out"),
    ("export-out-below-file", ["export", "--model", "qlnet18_eq3_small", "--format", "torchscript", "--out",
                               "{file}/m.pt"], "not a directory"),
    ("export-out-is-dir", ["export", "--model", "qlnet18_eq3_small", "--format", "torchscript", "--out", "{tmp}"],
     "is a directory"),
    # ---- symmetry ----
    ("teleport-non-ql", ["symmetry", "teleport", *RH, "--steps", "1", "--out", "{out}"], "residual stream"),
    ("compress-non-ql", ["symmetry", "compress", *RH, "--out", "{out}"], "residual stream"),
    ("compress-points-model", ["symmetry", "compress", "-c", "{pts}", "--out", "{out}"], "residual stream"),
    ("compress-out-below-file", ["symmetry", "compress", *QL, "--out", "{file}/c"], "not a directory"),
    ("compress-out-file", ["symmetry", "compress", *QL, "--out", "{file}"], "existing file"),
    ("compress-out-empty", ["symmetry", "compress", *QL, "--out", ""], "--out"),
    ("compress-out-pickle", ["symmetry", "compress", *QL, "--out", "{out}.pth"], "safetensors"),
    ("compress-out-read-only", ["symmetry", "compress", *QL, "--out", "{ro}/c"], "permission denied"),
    ("compress-rtol-nan", [*COMPRESS, "--rtol", "nan"], "--rtol"),
    ("compress-rtol-2", [*COMPRESS, "--rtol", "2"], "--rtol"),
    ("compress-rtol-0.5", [*COMPRESS, "--rtol", "0.5"], "--rtol"),
    ("compress-rtol-zero", [*COMPRESS, "--rtol", "0"], "--rtol"),
    ("compress-rtol-negative", [*COMPRESS, "--rtol", "-1"], "--rtol"),
    ("compress-n-inputs-negative", [*COMPRESS, "--n-inputs", "-1"], "--n-inputs"),
    ("compress-compare-missing", [*COMPRESS, "--compare", "/nonexistent/run"], "--compare"),
    ("compress-which", [*COMPRESS, "--which", "bogus"], "--which"),
    ("compress-no-out", ["symmetry", "compress", *QL], "--out"),
    ("teleport-steps-zero", [*TELEPORT, "--steps", "0"], "--steps"),
    ("teleport-lr-nan", [*TELEPORT, "--lr", "nan"], "--lr"),
    ("teleport-lr-negative", [*TELEPORT, "--lr", "-1"], "--lr"),
    ("teleport-calib-zero", [*TELEPORT, "--calib", "0"], "--calib"),
    ("teleport-objective", [*TELEPORT, "--objective", "bogus"], "--objective"),
    ("teleport-threads-negative", [*TELEPORT, "--threads", "-2"], "--threads"),
    ("teleport-out-empty", ["symmetry", "teleport", *QL, "--out", ""], "--out"),
    ("teleport-checkpoint-missing", ["symmetry", "teleport", "-c", "/nonexistent/run"], "does not exist"),
    ("fold-out-file", ["symmetry", "fold", *QL, "--out", "{file}"], "existing file"),
    ("fold-out-pt", ["symmetry", "fold", *QL, "--out", "{out}.pt"], "safetensors"),
    ("fold-checkpoint-random-file", ["symmetry", "fold", "-c", "{junk}", "--out", "{out}"], "not a pdenets model"),
    ("analyze-unknown-model", ["symmetry", "analyze", "--model", "nosuch"], "unknown model 'nosuch'"),
    ("analyze-m-act-bogus", ["symmetry", "analyze", "--model", "qlnet18_eq3_small", "-m", "act=bogus"],
     "act='bogus'"),
    ("analyze-m-bad-yaml", ["symmetry", "analyze", "--model", "qlnet18_eq3_small", "-m", "widths=[1,2"],
     "not valid YAML"),
    ("analyze-nothing", ["symmetry", "analyze"], "--model"),
    ("analyze-non-ql", ["symmetry", "analyze", *RH], "residual stream"),
    ("verify-non-ql", ["symmetry", "verify", "--model", "rh_parabolic_small"], "residual stream"),
    ("verify-random-file", ["symmetry", "verify", "-c", "{junk}"], "not a pdenets model file"),
    ("verify-n-inputs-negative", ["symmetry", "verify", "--model", "qlnet18_eq3_small", "--n-inputs", "-3"],
     "--n-inputs"),
    ("verify-seed-65-bits", ["symmetry", "verify", "--model", "qlnet18_eq3_small", "--seed", BIG], "--seed"),
    ("symmetry-unknown-action", ["symmetry", "bogus"], "bogus"),
    # ---- rh ----
    ("rh-stability-channels-zero", ["rh", "stability", "--channels", "0"], "--channels"),
    ("rh-stability-size-1", ["rh", "stability", "--size", "1"], "--size"),
    ("rh-stability-time-steps-zero", ["rh", "stability", "--time-steps", "0"], "--time-steps"),
    ("rh-stability-seed-65-bits", ["rh", "stability", "--seed", BIG], "--seed"),
    ("rh-fractions-zero", ["rh", "fractions", "--fractions", "0", "--out", "{out}"], "--fractions"),
    ("rh-fractions-str", ["rh", "fractions", "--fractions", "abc", "--out", "{out}"], "--fractions"),
    ("rh-networks", ["rh", "fractions", "--networks", "bogus", "--out", "{out}"], "--networks"),
    ("rh-train-steps-zero", ["rh", "fractions", "--train-steps", "0", "--out", "{out}"], "--train-steps"),
    ("rh-batch-zero", ["rh", "fractions", "--batch-size", "0", "--out", "{out}"], "--batch-size"),
    ("rh-lr-nan", ["rh", "fractions", "--lr", "nan", "--out", "{out}"], "--lr"),
    ("rh-threads-negative", ["rh", "fractions", "--threads", "-1", "--out", "{out}"], "--threads"),
    ("rh-dataset", ["rh", "fractions", "--dataset", "bogus", "--out", "{out}"], "--dataset"),
    ("rh-stl10-no-data-dir", ["rh", "fractions", "--dataset", "stl10", "--out", "{out}"], "--data-dir"),
    ("rh-out-file", ["rh", "fractions", "--out", "{file}"], "existing file"),
    ("rh-out-empty", ["rh", "fractions", "--out", ""], "--out"),
    ("rh-deepen-h-nan", ["rh", "deepen", "--h", "nan", "--out", "{out}"], "--h"),
    ("rh-deepen-h-inf", ["rh", "deepen", "--h", "inf", "--out", "{out}"], "--h"),
    ("rh-deepen-time-steps-zero", ["rh", "deepen", "--time-steps", "0", "--out", "{out}"], "--time-steps"),
    ("rh-deepen-finetune-negative", ["rh", "deepen", "--finetune-steps", "-1", "--out", "{out}"],
     "--finetune-steps"),
    ("rh-deepen-network", ["rh", "deepen", "--network", "bogus", "--out", "{out}"], "--network"),
    ("rh-multiscale-steps-1", ["rh", "multiscale", "--train-steps", "1", "--out", "{out}"], "--train-steps"),
    ("rh-plot-missing", ["rh", "plot", "/nonexistent/results.json", "--out", "{out}"], "no results file"),
    ("rh-plot-random-file", ["rh", "plot", "{junk}", "--out", "{out}"], "not a results.json"),
    # ---- ruseckas ----
    ("ruseckas-epochs-zero", ["ruseckas", "circles", "--epochs", "0", "--out", "{out}"], "--epochs"),
    ("ruseckas-lr-nan", ["ruseckas", "circles", "--lr", "nan", "--out", "{out}"], "--lr"),
    ("ruseckas-lr-inf", ["ruseckas", "circles", "--lr", "inf", "--out", "{out}"], "--lr"),
    ("ruseckas-lam-nan", ["ruseckas", "circles", "--lam", "nan", "--out", "{out}"], "--lam"),
    ("ruseckas-lam-negative", ["ruseckas", "circles", "--lam", "-1", "--out", "{out}"], "--lam"),
    ("ruseckas-momentum-nan", ["ruseckas", "circles", "--momentum", "nan", "--out", "{out}"], "--momentum"),
    ("ruseckas-clip-nan", ["ruseckas", "circles", "--clip", "nan", "--out", "{out}"], "--clip"),
    ("ruseckas-gamma-lr-scale-negative", ["ruseckas", "circles", "--gamma-lr-scale", "-1", "--out", "{out}"],
     "--gamma-lr-scale"),
    ("ruseckas-seed-65-bits", ["ruseckas", "circles", "--seed", BIG, "--out", "{out}"], "--seed"),
    ("ruseckas-threads-zero", ["ruseckas", "circles", "--threads", "0", "--out", "{out}"], "--threads"),
    ("ruseckas-model", ["ruseckas", "circles", "--model", "bogus", "--out", "{out}"], "--model"),
    ("ruseckas-out-file", ["ruseckas", "circles", "--out", "{file}"], "existing file"),
    ("ruseckas-digits-batch-zero", ["ruseckas", "digits", "--batch-size", "0", "--out", "{out}"], "--batch-size"),
    ("ruseckas-digits-padding", ["ruseckas", "digits", "--padding-mode", "bogus", "--out", "{out}"],
     "--padding-mode"),
    ("ruseckas-digits-data-dir", ["ruseckas", "digits", "--data-dir", "/nonexistent/mnist", "--out", "{out}"],
     "MNIST"),
    # ---- pde ----
    ("pde-kernels-unknown-model", ["pde", "kernels", "--model", "nosuch"], "nosuch"),
    ("pde-kernels-h-nan", ["pde", "kernels", "--model", "qlnet18_eq3_small", "--h", "nan"], "--h"),
    ("pde-kernels-h-zero", ["pde", "kernels", "--model", "qlnet18_eq3_small", "--h", "0"], "--h"),
    ("pde-kernels-h-inf", ["pde", "kernels", "--model", "qlnet18_eq3_small", "--h", "inf"], "--h"),
    ("pde-kernels-max-rows-negative", ["pde", "kernels", "--model", "qlnet18_eq3_small", "--max-rows", "-1"],
     "--max-rows"),
    ("pde-kernels-out-file", ["pde", "kernels", "--model", "qlnet18_eq3_small", "--out", "{file}"],
     "existing file"),
    # an RH checkpoint has time-stepped kernels (issue 16); the dense Ruseckas net has no 3x3 kernel at all
    ("pde-kernels-no-kernels", ["pde", "kernels", "--model", "ruseckas_circles_r2"], "no 3x3 derivative convs"),
    ("pde-kernels-checkpoint-missing", ["pde", "kernels", "-c", "/nonexistent/run"], "does not exist"),
    ("pde-kernels-basis", ["pde", "kernels", "--model", "qlnet18_eq3_small", "--basis", "bogus"], "--basis"),
    ("pde-kernels-no-source", ["pde", "kernels"], "--checkpoint"),
    ("pde-demo-frames-1", ["pde", "demo", "--frames", "1", "--out", "{out}"], "--frames"),
    ("pde-demo-size-zero", ["pde", "demo", "--size", "0", "--out", "{out}"], "--size"),
    ("pde-demo-size-huge", ["pde", "demo", "--size", "100000000", "--out", "{out}"], "--size"),
    ("pde-demo-image-missing", ["pde", "demo", "--image", "/nonexistent.png", "--out", "{out}"], "--image"),
    ("pde-demo-image-random-file", ["pde", "demo", "--image", "{junk}", "--out", "{out}"], "--image"),
    ("pde-demo-equation", ["pde", "demo", "--equation", "bogus", "--out", "{out}"], "--equation"),
    ("pde-demo-padding", ["pde", "demo", "--padding-mode", "bogus", "--out", "{out}"], "--padding-mode"),
    ("pde-demo-out-file", ["pde", "demo", "--out", "{file}"], "existing file"),
    ("pde-demo-out-empty", ["pde", "demo", "--out", ""], "--out"),
    # ---- compare (refused before any run or file) ----
    ("compare-unknown-model", [*CMP, "--models", "qlnet18_eq3_small,nosuch_model"], "unknown model 'nosuch_model'"),
    ("compare-bad-spec", [*CMP, "--models", "qlnet18_eq3_small:widths"], "KEY=VALUE"),
    ("compare-empty-models", [*CMP, "--models", ","], "--models"),
    ("compare-seeds-zero", [*CMP, "--seeds", "0"], "--seeds"),
    ("compare-first-seed-64-bits", [*CMP, "--first-seed", BIG], "--first-seed"),
    ("compare-last-seed-64-bits", [*CMP, "--first-seed", str(2**63 - 1), "--seeds", "2"], "the last seed"),
    ("compare-layout", [*CMP, "--layout", "99"], "--layout"),
    ("compare-with-model", [*CMP, "--model", "qlnet18_eq3_small"], "drop --model"),
    ("compare-with-seed", [*CMP, "--seed", "1"], "drop --seed"),
    ("compare-unknown-recipe", [*CMP, "--recipe", "nosuch"], "unknown recipe 'nosuch'"),
    ("compare-m-unknown-kwarg", [*CMP, "-m", "foo=1"], "foo"),
    ("compare-lr-negative", [*CMP, "--lr", "-1"], "--lr"),
    ("compare-out-file", ["compare", "--models", "qlnet18_eq3_small", "--out", "{file}"], "existing file"),
    # ---- models, make-imagenet100, the top level ----
    ("models-num-classes-zero", ["models", "--num-classes", "0", "--no-macs"], "--num-classes"),
    ("models-img-size-zero", ["models", "--img-size", "0"], "--img-size"),
    ("models-no-match", ["models", "nosuch_*"], "no registered model"),
    ("models-unknown-flag", ["models", "--bogus"], "--bogus"),
    ("imagenet100-src-missing", ["make-imagenet100", "--src", "/nonexistent/imagenet", "--dst", "{out}"],
     "does not exist"),
    ("imagenet100-src-empty", ["make-imagenet100", "--src", "{empty}", "--dst", "{out}"], "no train/ or val/"),
    ("imagenet100-dst-file", ["make-imagenet100", "--src", "{empty}", "--dst", "{file}"], "existing file"),
    ("imagenet100-no-src", ["make-imagenet100", "--dst", "{out}"], "--src"),
    ("unknown-command", ["bogus-command"], "bogus-command"),
    ("unknown-top-level-flag", ["--bogus"], "--bogus"),
]


def _make_artifacts(d) -> dict[str, str]:
    from pdenets.artifacts import save_artifact
    from pdenets.models import create_model

    digits = dict(dataset="digits", img_size=8, num_classes=10, in_chans=1, kind="image")
    torch.manual_seed(0)
    save_artifact(create_model("qlnet18_eq3p_small", num_classes=10, in_chans=1, widths=[8, 8, 8, 8]), d / "ql",
                  digits)
    save_artifact(create_model("rh_parabolic_small", num_classes=10, in_chans=1, width=0.25), d / "rh", digits)
    save_artifact(create_model("ruseckas_circles_r2"), d / "pts",
                  dict(dataset="circles", num_classes=2, in_features=2, kind="vector"))
    return {k: str(d / k) for k in ("ql", "rh", "pts")}


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, str]:
    """Artifacts of the three model kinds, a random file, a plain file, an empty and a read-only folder, and
    the YAML files of CONFIGS; none of them may change while the table runs."""
    d = tmp_path_factory.mktemp("bad_inputs")
    p = _make_artifacts(d)
    (d / "junk.bin").write_bytes(os.urandom(3000))
    (d / "a_file").write_text("not a directory\n")
    (d / "empty").mkdir()
    (d / "ro").mkdir()
    os.chmod(d / "ro", 0o555)
    for name, text in CONFIGS.items():
        (d / f"{name}.yaml").write_text(text)
        p[f"cfg_{name}"] = str(d / f"{name}.yaml")
    p.update(junk=str(d / "junk.bin"), file=str(d / "a_file"), empty=str(d / "empty"), ro=str(d / "ro"),
             root=str(d))
    yield p
    os.chmod(d / "ro", 0o755)


def _snapshot(root: str) -> list[tuple[str, int, int]]:
    out = []
    for dirpath, _, files in os.walk(root):
        for f in files:
            st = os.stat(os.path.join(dirpath, f))
            out.append((os.path.join(dirpath, f), st.st_size, st.st_mtime_ns))
    return sorted(out)


def _one_line_refusal(capsys, argv: list[str]) -> str:
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse exits only for --help/--version; a refusal returns 2
        rc = e.code
    captured = capsys.readouterr()
    err = captured.err
    assert rc == 2, f"exit code {rc}: {argv}\n{err[-2000:]}"
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, f"stderr is not one line: {err!r}"
    assert lines[0].startswith("pdenets") and "error:" in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("row_id, argv, needle", [r if hasattr(r, "marks") else pytest.param(*r, id=r[0])
                                                  for r in ROWS])
def test_bad_input_is_one_line_and_exit_2(row_id, argv, needle, paths, tmp_path, capsys, monkeypatch):
    if "{ro}" in " ".join(argv) and os.access(paths["ro"], os.W_OK):
        pytest.skip("running as a user who may write a read-only folder (root)")
    monkeypatch.chdir(tmp_path)  # a command that writes to a default, relative path would leave it here
    threads = torch.get_num_threads()
    before = _snapshot(paths["root"])
    out = tmp_path / "out"
    values = dict(paths, out=str(out), tmp=str(tmp_path))
    line = _one_line_refusal(capsys, [a.format(**values) for a in argv])
    assert needle in line, line
    assert list(tmp_path.iterdir()) == [], f"refused, but wrote {sorted(p.name for p in tmp_path.iterdir())}"
    assert _snapshot(paths["root"]) == before, "refused, but changed an input"
    assert torch.get_num_threads() == threads


def test_table_is_large_and_covers_every_subcommand():
    ids = [r.id if hasattr(r, "id") else r[0] for r in ROWS]
    assert len(ids) == len(set(ids)) and len(ids) >= 100
    commands = {(r.values[1] if hasattr(r, "values") else r[1])[0] for r in ROWS}
    assert commands >= {"train", "eval", "demo", "make-imagenet100", "rh", "ruseckas", "pde", "export", "symmetry",
                        "models", "compare"}


def _subcommand_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _subcommand_paths(sub, (*prefix, name))
    return found


def test_help_of_every_subcommand_still_works(capsys):
    paths = _subcommand_paths(build_parser())
    assert len(paths) > 15 and ("symmetry", "compress") in paths and ("rh", "stability") in paths
    for path in paths:
        with pytest.raises(SystemExit) as e:
            main([*path, "--help"])
        out = capsys.readouterr().out
        assert e.value.code == 0 and "usage: pdenets" in out, path


@pytest.mark.parametrize("argv, needle", [
    (["train", "--lr", "nan"], "--lr"),
    (["train", "--out", "{out}", *T, "-m", "act=bogus"], "act="),
    (["symmetry", "compress", "-c", "{rh}", "--out", "{out}"], "residual stream"),
], ids=["argparse", "model-kwargs", "non-ql-checkpoint"])
def test_real_process_prints_no_traceback(argv, needle, paths, tmp_path):
    """The same in a real process (``python -m pdenets``, or the ``pdenets`` script when installed)."""
    values = dict(paths, out=str(tmp_path / "out"))
    exe = shutil.which("pdenets")
    cmd = [exe] if exe and argv[0] == "train" else [sys.executable, "-m", "pdenets"]
    r = subprocess.run([*cmd, *(a.format(**values) for a in argv)], capture_output=True, text=True, env=env(),
                       cwd=tmp_path, timeout=300)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert lines and lines[-1].startswith("pdenets") and "error:" in lines[-1] and needle in lines[-1], r.stderr
    assert sum(ln.startswith("pdenets") for ln in lines) == 1 and not (tmp_path / "out").exists()
