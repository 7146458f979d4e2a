import pytest
import torch

from pdenets.datasets.circles import make_circles
from pdenets.hooks import TrainHook, create_hook, register_hook


def test_register_and_create_hook():
    @register_hook("test-scale")
    def _factory(value):
        class H(TrainHook):
            def penalty(self, model):
                return torch.tensor(value)

        return H()

    h = create_hook("test-scale:2.5")
    assert h.name == "test-scale" and h.penalty(None).item() == 2.5
    with pytest.raises(ValueError, match="unknown training hook"):
        create_hook("nope")
    with pytest.raises(ValueError, match="must be a number"):
        create_hook("test-scale:abc")


def test_circles():
    x, y = make_circles(200, seed=1)
    assert x.shape == (400, 2) and y.bincount().tolist() == [200, 200]
    r = x.norm(dim=1)
    # radii concentrate near 1 and 2 (noise 0.2)
    assert abs(r[y == 0].mean().item() - 1.0) < 0.1 and abs(r[y == 1].mean().item() - 2.0) < 0.1
    with pytest.raises(ValueError):
        make_circles(10, r_inner=2, r_outer=1)
