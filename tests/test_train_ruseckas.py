"""The Ruseckas nets' training needs as model-side options, applied by whichever command trains them:
γ̃ ≥ 0 throughout (``constrain_``) and γ̃'s learning-rate factor (``param_lr_scales`` → timm's lr_scale)."""

import pytest
import torch

from _train_util import one_thread
from pdenets import hooks as hooks_mod
from pdenets.cli import main
from pdenets.models import create_model
from pdenets.train.checkpoint import load_model
from pdenets.train.config import TrainConfig
from pdenets.train.optim import LrControl, build_optimizer, build_scheduler
from pdenets.train.recipes import get_recipe


class PushGamma(hooks_mod.TrainHook):
    """Adds 1000·γ̃ to the loss (a large gradient driving γ̃ negative) and records γ̃ at every step."""

    def __init__(self):
        self.seen: list[float] = []

    def penalty(self, model):
        self.seen.append(float(model.gamma.detach()))
        return 1000.0 * model.gamma


PUSHERS: list = []
if "test-push-gamma" not in hooks_mod._HOOKS:
    hooks_mod.register_hook("test-push-gamma")(lambda v: PUSHERS.append(PushGamma()) or PUSHERS[-1])


def test_gamma_stays_nonnegative_through_pdenets_train(tmp_path, capsys):
    out = tmp_path / "r"
    with one_thread():
        rc = main(["train", "--model", "ruseckas_circles_r2", "-m", "depth=4", "-m", "gamma=0.05",
                   "--dataset", "circles", "--opt", "momentum", "--lr", "0.1", "--sched", "none", "--wd", "0",
                   "--epochs", "2", "--batch-size", "64", "--hook", "test-push-gamma", "--no-progress",
                   "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    seen = PUSHERS[-1].seen
    assert len(seen) == 6 and seen[0] == pytest.approx(0.05)
    # 255 training points, batch 64: 3 steps per epoch. One step of the push alone would take γ̃ to
    # 0.05 - 0.1·0.001·1000 < 0: the constraint held it at 0
    assert min(seen) >= 0 and seen[-1] == 0.0
    for which in ("best", "last"):
        model, _ = load_model(out, prefer=which)
        assert float(model.gamma.detach()) >= 0


def test_gamma_lr_scale_is_a_timm_lr_scale_group():
    model = create_model("ruseckas_conv_mnist")
    assert model.param_lr_scales() == {"gamma": 0.1}
    assert create_model("ruseckas_circles_r3").param_lr_scales() == {}  # fixed γ̃ (a buffer)
    assert create_model("ruseckas_conv_mnist", gamma_lr_scale=0.5).param_lr_scales() == {"gamma": 0.5}
    for sched in ("cosine", "none"):
        cfg = TrainConfig(opt="adam", lr=1e-3, weight_decay=0.0, sched=sched, epochs=3, warmup_epochs=1)
        opt = build_optimizer(model, cfg)
        lrc = LrControl(opt, build_scheduler(opt, cfg, steps_per_epoch=5))
        (g_gamma,) = [g for g in opt.param_groups if any(p is model.gamma for p in g["params"])]
        others = [g for g in opt.param_groups if g is not g_gamma]
        assert g_gamma["lr_scale"] == 0.1 and len(g_gamma["params"]) == 1 and "lr_scale" not in others[0]
        assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
        for step in range(1, 12):
            lrc.schedule(num_updates=step)
            assert g_gamma["lr"] == pytest.approx(0.1 * others[0]["lr"], rel=1e-12) and others[0]["lr"] > 0


def test_ruseckas_recipe_per_dataset():
    circles, digits = get_recipe("ruseckas2019", "circles"), get_recipe("ruseckas2019", "digits")
    assert circles["hooks"] == ["layer-smooth:1.0"] and circles["batch_size"] >= 400 and circles["clip_grad"] == 1.0
    assert digits["hooks"] == ["layer-smooth:0.1"] and digits["model"] == "ruseckas_conv_mnist"
    assert get_recipe("ruseckas2019") == circles  # the recipe's own data set
    assert torch.equal(create_model("ruseckas_conv_mnist").weight, torch.zeros(20, 10, 10, 3, 3))  # §5: zero init
