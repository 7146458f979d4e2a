"""Statistics of a registered model by name: parameters, GMACs and output shape, built on the meta device."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from pdenets.models.registry import create_model, is_image_model
from pdenets.utils.stats import count_params

__all__ = ["ModelStats", "model_stats"]


@dataclass
class ModelStats:
    name: str
    params: int
    gmacs: float | None
    output_shape: tuple[int, ...] | None
    input_shape: tuple[int, ...] | None


def model_stats(
    name: str, input_shape: tuple[int, ...] | None = None, measure: bool = True, **kwargs
) -> ModelStats:
    """Parameters, GMACs and output shape of a registered model, built on the meta device.

    ``input_shape`` defaults to the model's ``example_input_shape`` attribute, or (1, C, 224, 224) for
    image models; ``measure=False`` counts parameters only.
    """
    with torch.device("meta"):
        model = create_model(name, **kwargs)
    params = count_params(model)
    if not measure:
        return ModelStats(name, params, None, None, None)
    if input_shape is None:
        input_shape = getattr(model, "example_input_shape", None)
        if input_shape is None and is_image_model(name):
            input_shape = (1, getattr(model, "in_chans", 3), 224, 224)
    if input_shape is None:
        return ModelStats(name, params, None, None, None)
    with torch.device("meta"):
        x = torch.zeros(input_shape)
        model.eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            y = model(x)
    return ModelStats(name, params, counter.get_total_flops() / 2e9, tuple(y.shape), tuple(input_shape))
