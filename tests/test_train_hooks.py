"""Training hooks in the engine (penalty in the loss, after_step with the lr, state in the checkpoint) and
vector data (circles) with a non-image model that receives only the arguments it accepts."""

import math

import torch
import torch.nn as nn

from _train_util import TINY, one_thread
from pdenets import hooks as hooks_mod
from pdenets.train.checkpoint import load_model, load_training_state
from pdenets.train.trainer import train


class CountingHook(hooks_mod.TrainHook):
    """Adds value·Σθ² to the loss and records every (step, lr) it is called with."""

    def __init__(self, value):
        self.value, self.calls, self.lrs, self.penalties = value, 0, [], 0

    def penalty(self, model):
        self.penalties += 1
        return self.value * sum((p ** 2).sum() for p in model.parameters())

    def after_step(self, model, lr):
        assert not torch.is_grad_enabled()
        self.calls += 1
        self.lrs.append(lr)

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = state["calls"]


CREATED: list = []
if "test-count" not in hooks_mod._HOOKS:
    hooks_mod.register_hook("test-count")(lambda v: CREATED.append(CountingHook(v)) or CREATED[-1])


def test_hooks_are_called_and_resumed(tmp_path):
    cfg = dict(TINY, epochs=2, hooks=["test-count:0.001"], sched="none", lr=0.05)
    with one_thread():
        train(dict(cfg, out=str(tmp_path / "r"), stop_after=1))
        h1 = CREATED[-1]
        train(dict(cfg, out=str(tmp_path / "r"), resume="auto"))
        h2 = CREATED[-1]
    assert h1.calls == 4 and h1.penalties == 4 and h1.lrs == [0.05] * 4
    assert h2.calls == 8  # continued from the saved state (4) + 4 steps
    assert load_training_state(tmp_path / "r/checkpoints/last")["hooks"] == [{"calls": 8}]


def test_circles_with_a_vector_model(tmp_path):
    from pdenets.models import registry

    if "train_test_mlp" not in registry._OTHER_MODELS:
        @registry.register_model
        def train_test_mlp(in_features: int = 2, num_classes: int = 2, hidden: int = 16):
            return nn.Sequential(nn.Linear(in_features, hidden), nn.Tanh(), nn.Linear(hidden, num_classes))

    with one_thread():
        s = train(dict(model="train_test_mlp", dataset="circles", epochs=30, batch_size=32, opt="adamw", lr=0.03,
                       weight_decay=0.0, sched="cosine", progress=False, report=False, out=str(tmp_path / "c")))
    model, meta = load_model(tmp_path / "c", prefer="last")
    assert meta["create_kwargs"] == {"in_features": 2, "num_classes": 2} and meta["kind"] == "vector"
    assert s["test_samples"] == 100
    # the network separates the circles: compare with the radius rule |x| < 1.5 (Bayes accuracy ~99.4%)
    from pdenets.datasets.circles_dataset import CirclesDataset

    test = CirclesDataset("test")
    rule = 100 * ((test.points.norm(dim=1) > 1.5).long() == test.targets).float().mean().item()
    assert s["test_top1"] >= rule - 5 and rule > 95
    assert not math.isnan(s["test_loss"])
