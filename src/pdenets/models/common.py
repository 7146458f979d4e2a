"""Pieces shared by the image-model families: timm's classifier interface.

No ``from __future__ import annotations`` here: torch.fx copies the annotations of the traced ``forward`` into
the code it generates, and TorchScript (scripting a traced model) can read real types but not those strings.
"""

from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
from timm.layers import create_classifier


class TimmClassifierMixin:
    """timm's model interface for a network with ``forward_features``, ``num_features``, ``global_pool``,
    ``fc`` and ``drop_rate`` (dropout before the classifier).

    The class sets ``_STEM_PATTERN`` / ``_BLOCK_PATTERNS`` (coarse, fine) for :meth:`group_matcher`.
    """

    _STEM_PATTERN: str = r"^stem"
    _BLOCK_PATTERNS: tuple[str, str] = (r"^stages\.(\d+)", r"^stages\.(\d+)\.(\w+)")
    if TYPE_CHECKING:  # for type checkers only: TorchScript types attributes from the class annotations and has
        num_features: int  # no type for nn.Module; without them it infers each attribute's type from its value
        num_classes: int
        grad_checkpointing: bool
        global_pool: nn.Module
        fc: nn.Module
        drop_rate: float
        training: bool

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=self._STEM_PATTERN, blocks=self._BLOCK_PATTERNS[0 if coarse else 1])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str = "avg") -> None:
        self.num_classes = num_classes
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
