"""Model statistics: parameter counts and multiply-accumulates (MACs) via ``torch.utils.flop_counter``.

MACs are counted on the meta device, so even ResNet-50-sized models cost no memory or compute.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass on a tensor of ``input_shape`` (batch included).

    FlopCounterMode counts 2 FLOPs per MAC of convolutions and matmuls; elementwise work is not counted.
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros(input_shape, device=device)
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() // 2


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
    from pdenets.models import create_model, is_image_model

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
