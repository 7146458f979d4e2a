"""The quasi-linear hyperbolic ConvNet of Liu, Shao & Bai (§5.1, Table 1) in timm's ResNet skeleton.

Layout (ResNet-50 with expansion 1): 7×7/2 stem conv + BN + ReLU + 3×3/2 max-pool, four stages of
[3, 4, 6, 3] blocks at widths 64/128/256/512 (the first block of stages 2-4 has stride 2 and a 1×1
stride-2 conv + BN skip), global average pool, linear head. The blocks are those of Eqs. (3)-(7)
(:mod:`pdenets.layers.ql_blocks`). Activations: ``act_placement='ds'`` puts the activation after the
residual addition of each downsampling block and once after the last stage (4 in all, as in the paper;
the stem's ReLU stays); ``'all'`` after every block.

Registered names (``timm.create_model(name)`` after ``import pdenets``)::

    qlnet{50,26,18}_{eq3,eq3p,eq3_nows,eq3_nows_x6,eq4,eq5,eq6,eq7_nows_x6}[_small]
    qlnet{50,26,18}_{resnet,resnet_basic}[_small]   (Table 1's ResNet baselines on this skeleton)

50/26/18 are the layouts [3,4,6,3] / [2,2,2,2] / [1,1,1,1]. ``_small`` variants use a 3×3 stride-1
stem without max-pool and half the widths (32/64/128/256), for 8-64 px images. Keyword arguments
override everything: ``act='hardball'``, ``act_placement='all'``, ``multiplier=6``,
``weight_sharing=False``, ``widths=(...)``, ``padding_mode='reflect'``, ...
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
from timm.layers import create_classifier
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs
from timm.models._features import feature_take_indices

from pdenets.layers.activations import create_act, parse_act_spec
from pdenets.layers.derivative import check_padding_mode
from pdenets.layers.fused import conv_bn
from pdenets.layers.ql_blocks import BLOCKS, QLBlock, create_block
from pdenets.layers.resnet_blocks import RESNET_BLOCKS
from pdenets.layers.stream import MONO, POS, BNFold, SegmentBound, StreamBlock, StreamSpec, Touch
from pdenets.layers.tracing import is_symbolic_tracing
from pdenets.models.common import TimmClassifierMixin
from pdenets.models.registry import register_image_model

MAX_SCRIPT_STAGES = 8  # stages a scripted QLNet can run (QLNet._forward_stages_scripted)
LAYOUTS: dict[str, tuple[int, ...]] = {"50": (3, 4, 6, 3), "26": (2, 2, 2, 2), "18": (1, 1, 1, 1)}
WIDTHS = (64, 128, 256, 512)
SMALL_WIDTHS = (32, 64, 128, 256)


def _resolve_block(block: str | type[QLBlock]) -> tuple[str, type[QLBlock] | None]:
    """(equation name, block class or None for a registered equation) of QLNet's ``block`` argument."""
    if isinstance(block, type) and issubclass(block, QLBlock):
        return block.equation or block.__name__, block
    if block in BLOCKS:
        return block, None
    if block in RESNET_BLOCKS:  # the Table 1 baselines on this skeleton (layers/resnet_blocks.py)
        return block, RESNET_BLOCKS[block]
    raise ValueError(f"unknown equation/block {block!r}; expected one of {', '.join([*BLOCKS, *RESNET_BLOCKS])}")


class QLNet(TimmClassifierMixin, nn.Module):
    """Quasi-linear hyperbolic ConvNet (Liu-Shao-Bai). One configurable class; see module docstring.

    Args:
        block: equation of the blocks: 'eq3', 'eq3p', 'eq4', 'eq5', 'eq6' or 'eq7'; 'resnet_basic' or
            'resnet_bottleneck' (Table 1's baselines, :mod:`pdenets.layers.resnet_blocks`; a block class's
            ``expansion`` multiplies the stage widths, 4 for the bottleneck, as in timm's ResNet) — or a
            :class:`~pdenets.layers.ql_blocks.QLBlock` subclass (called as ``cls(in_chs, out_chs, stride, **kw)``;
            it declares its own stream touches, so the symmetry tools apply to it unchanged).
        layers: blocks per stage.  widths: width of each stage (its stream width is ``width × expansion``).
        num_classes: classifier outputs (0 for no classifier).  in_chans: input image channels.
        multiplier: derivative channels per input channel (4, or 6 for "x6").
        weight_sharing: share the derivative kernels across channels ("ws").
        act: 'none', 'relu', 'hardtanh', 'hardball' or 'softball' (also 'softball@ds' notation).
        act_placement: 'ds' (after downsampling blocks and after the last stage) or 'all'.
        radius: radius of hardball/softball (default sqrt(width) at each placement).
        padding_mode: boundary condition of the derivative convs and of the stem conv (every conv that pads).
        stem: 'imagenet' (7×7/2 + max-pool) or 'small' (3×3/1, no max-pool).
        drop_rate: dropout before the classifier.  drop_path_rate: stochastic depth (linear in depth).
        zero_init_last: zero γ of each block's last BN.
        global_pool: timm pooling type ('avg', 'max', ...).
        channels_last: compute in the channels_last memory format whatever the input's layout (one copy of
            the input image). On CPUs the 1×1 and depthwise convs are several times faster in this layout
            (``benchmarks/README.md``); the outputs are the same.
    """

    _STEM_PATTERN = r"^conv1|bn1|maxpool"
    _BLOCK_PATTERNS = (r"^layer(\d+)", r"^layer(\d+)\.(\d+)")
    __jit_unused_properties__ = ["stages"]  # a Python list of modules; the scripted forward names the stages

    def __init__(
        self,
        block: str | type[QLBlock] = "eq3",
        layers: Sequence[int] = (3, 4, 6, 3),
        widths: Sequence[int] = WIDTHS,
        num_classes: int = 1000,
        in_chans: int = 3,
        multiplier: int = 4,
        weight_sharing: bool = True,
        act: str = "softball",
        act_placement: str | None = None,
        radius: float | None = None,
        padding_mode: str = "zeros",
        stem: str = "imagenet",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        zero_init_last: bool = True,
        global_pool: str = "avg",
        channels_last: bool = True,
        **block_kwargs: Any,
    ) -> None:
        super().__init__()
        block, block_cls = _resolve_block(block)
        act, placement = parse_act_spec(act)
        act_placement = act_placement or placement
        if act_placement not in ("ds", "all"):
            raise ValueError(f"act_placement must be 'ds' or 'all', got {act_placement!r}")
        if stem not in ("imagenet", "small"):
            raise ValueError(f"stem must be 'imagenet' or 'small', got {stem!r}")
        if len(layers) != len(widths) or not layers:
            raise ValueError(f"layers {tuple(layers)} and widths {tuple(widths)} must have the same length")
        if in_chans < 1:
            raise ValueError(f"in_chans must be positive, got {in_chans}")
        check_padding_mode(padding_mode)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.channels_last = channels_last
        self.block_name, self.act_name, self.act_placement = block, act, act_placement
        self.layers, self.widths = tuple(layers), tuple(widths)
        self.expansion = int(getattr(block_cls, "expansion", 1))  # stream width = width × expansion (bottleneck: 4)

        reduction = self._build_stem(stem, in_chans, widths[0], padding_mode)
        kw = dict(multiplier=multiplier, weight_sharing=weight_sharing, radius=radius, padding_mode=padding_mode,
                  zero_init_last=zero_init_last, **block_kwargs)
        in_chs = self._build_stages(block, block_cls, reduction, act, drop_path_rate, kw)
        self.final_act = create_act(act, in_chs, radius) if act_placement == "ds" else nn.Identity()
        self.num_features = self.head_hidden_size = in_chs
        self.global_pool, self.fc = create_classifier(in_chs, num_classes, pool_type=global_pool)
        self._init_weights()

    def _build_stem(self, stem: str, in_chans: int, w0: int, padding_mode: str) -> int:
        """conv1 + bn1 + ReLU (+ max-pool for the ImageNet stem); returns the stem's reduction.

        Registered in the order they run (timm's FeatureListNet runs the top-level modules in that order)."""
        k, stride = (7, 2) if stem == "imagenet" else (3, 1)
        self.conv1 = nn.Conv2d(in_chans, w0, k, stride=stride, padding=k // 2, bias=False, padding_mode=padding_mode)
        self.bn1 = nn.BatchNorm2d(w0)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1) if stem == "imagenet" else nn.Identity()
        return 4 if stem == "imagenet" else 1

    def _build_stages(self, block: str, block_cls: type[QLBlock] | None, reduction: int, act: str,
                      drop_path_rate: float, kw: dict[str, Any]) -> int:
        """``layer1`` ... ``layerN`` (first block of stages 2-N with stride 2; the activation after the
        downsampling blocks, or after every block with ``act_placement='all'``); returns the last width."""
        layers, widths = self.layers, self.widths
        total = sum(layers)
        dpr = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        self.feature_info: list[dict[str, Any]] = []
        in_chs, idx = widths[0], 0
        for i, (n_blocks, width) in enumerate(zip(layers, widths)):
            blocks = []
            for j in range(n_blocks):
                is_ds = i > 0 and j == 0
                bkw = dict(kw, act=act if (self.act_placement == "all" or is_ds) else "none", drop_path=dpr[idx])
                stride = 2 if is_ds else 1
                out_chs = width * self.expansion
                blocks.append(block_cls(in_chs, out_chs, stride, **bkw) if block_cls is not None
                              else create_block(block, in_chs, out_chs, stride, **bkw))
                in_chs, idx = out_chs, idx + 1
            if i > 0:
                reduction *= 2
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=in_chs, reduction=reduction, module=f"layer{i + 1}"))
        return in_chs

    @property
    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, f"layer{i + 1}") for i in range(len(self.layers))]

    def stream_spec(self) -> StreamSpec:
        """How the network touches its residual stream (docs/design.md §3): one segment per stage; the first block
        of stages 2-4 reads the previous stage's segment and writes its own (through its stride-2 skip); the stem
        conv writes segment 0, bounded by the stem's ReLU (+ max-pool) to positive monomials; the final
        activation acts on, and the classifier reads (W → W T⁻¹, after the average pool, which commutes with T),
        the last segment. The blocks declare the rest (:meth:`~pdenets.layers.ql_blocks.QLBlock.stream_spec`).
        When the first block has a skip conv (the bottleneck baselines: stem 64 → stream 256), the stem writes a
        segment of its own, ``stem``, which that block reads."""
        n = len(self.layers)
        o = int(len(self.layer1) > 0 and getattr(self.layer1[0], "downsample", None) is not None)
        blocks = tuple(StreamBlock(f"layer{i + 1}.{j}", i + o - 1 if (j == 0 and i + o > 0) else i + o, i + o)
                       for i, stage in enumerate(self.stages) for j in range(len(stage)))
        last = n - 1 + o
        touches: list[tuple[int, Touch]] = [(0, Touch("conv1", "write", bias="conv1.bias", bn="bn1"))]
        if not isinstance(self.fc, nn.Identity):
            touches.append((last, Touch("fc", "read", gauge=True)))
        pooled = not isinstance(self.maxpool, nn.Identity)
        bounds = [SegmentBound(0, frozenset({MONO, POS}), "stem ReLU + max-pool" if pooled else "stem ReLU")]
        if "max" in str(getattr(self.global_pool, "pool_type", "avg")):  # max over pixels: positive monomials only
            bounds.append(SegmentBound(last, frozenset({MONO, POS}), "global max-pool"))
        return StreamSpec(("stem",) * o + tuple(f"stage{i + 1}" for i in range(n)), blocks, tuple(touches),
                          acts=((last, "final_act", "final"),), bounds=tuple(bounds),
                          folds=(BNFold("conv1", "bn1"),), stem="imagenet" if pooled else "small")

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():
            if hasattr(m, "init_last_bn"):
                m.init_last_bn()

    # ---- timm model interface -------------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> None:
        if is_symbolic_tracing():
            return  # torch.fx: the shape is symbolic (docs/design.md §12)
        if x.dim() != 4:
            raise ValueError(f"expected a 4-D input (N, C, H, W) with C={self.in_chans}, got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ValueError(f"expected {self.in_chans} input channels, got {x.shape[1]} (shape {tuple(x.shape)})")

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            x = self.bn1(self.conv1(x))
        else:
            x = conv_bn(self.conv1, self.bn1, x)  # bn1 folded in eval mode (not while fx-traced)
        return self.maxpool(self.act1(x))

    def _forward_input(self, x: torch.Tensor) -> torch.Tensor:
        """Input check, memory format and stem: what precedes the stages."""
        if not torch.jit.is_scripting():
            self.check_input(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.forward_stem(x)

    def _forward_stage(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(stage, x)
        return stage(x)

    def _forward_stages_scripted(self, x: torch.Tensor) -> torch.Tensor:
        """``layer1`` ... ``layerN`` for TorchScript, which cannot iterate over attributes named at run time:
        each stage is called by name, ``hasattr`` being decided when the model is compiled (N ≤ 8)."""
        x = self.layer1(x)
        if hasattr(self, "layer2"):
            x = self.layer2(x)
        if hasattr(self, "layer3"):
            x = self.layer3(x)
        if hasattr(self, "layer4"):
            x = self.layer4(x)
        if hasattr(self, "layer5"):
            x = self.layer5(x)
        if hasattr(self, "layer6"):
            x = self.layer6(x)
        if hasattr(self, "layer7"):
            x = self.layer7(x)
        if hasattr(self, "layer8"):
            x = self.layer8(x)
        return x

    def __prepare_scriptable__(self) -> QLNet:
        """Called by ``torch.jit.script``: refuse a model whose stages the scripted forward would not run."""
        if len(self.layers) > MAX_SCRIPT_STAGES:
            raise ValueError(f"torch.jit.script supports QLNets of at most {MAX_SCRIPT_STAGES} stages, "
                             f"this one has {len(self.layers)}")
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._forward_input(x)
        if torch.jit.is_scripting():
            x = self._forward_stages_scripted(x)
        else:
            for stage in self.stages:
                x = self._forward_stage(stage, x)
        return self.final_act(x)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's feature API: the output of each stage (``feature_info``), and the features.

        Args:
            indices: the last n stages if an int, all if None, else the stages listed (negative from the end).
            norm: apply the final activation (``final_act``, the one "after the last stage") to the last
                stage's intermediate, as timm applies a final norm.
            stop_early: stop after the last stage needed.  output_fmt: 'NCHW' only.
            intermediates_only: return the list of intermediates only.

        Returns:
            The intermediates, or (features, intermediates); the features equal :meth:`forward_features` unless
            ``stop_early`` ended the loop before the last stage.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        stages = self.stages
        take_indices, max_index = feature_take_indices(len(stages), indices)
        last = len(stages) - 1
        x = self._forward_input(x)
        intermediates: list[torch.Tensor] = []
        for i, stage in enumerate(stages[: max_index + 1] if stop_early else stages):
            x = self._forward_stage(stage, x)
            if i in take_indices:
                intermediates.append(self.final_act(x) if norm and i == last else x)
        if intermediates_only:
            return intermediates
        if i == last:
            x = self.final_act(x)
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop what the intermediates ``indices`` do not need (timm's API): the stages after the last one
        taken (replaced by empty ``nn.Sequential``, so the other state-dict keys stay), the final activation
        with ``prune_norm`` or when stages were dropped, and the classifier with ``prune_head`` or when stages
        were dropped (``num_features`` is then the width of the last stage kept). Returns the indices kept."""
        n = len(self.layers)
        take_indices, max_index = feature_take_indices(n, indices)
        for i in range(max_index + 1, n):
            setattr(self, f"layer{i + 1}", nn.Sequential())
        prune_end = max_index < n - 1
        if prune_norm or prune_end:
            self.final_act = nn.Identity()
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take_indices


# ---- registration ---------------------------------------------------------------------------------


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.875, "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225), "first_conv": "conv1", "classifier": "fc", "license": "mit",
        "paper_ids": "arXiv:2308.01621", **kwargs,
    }


def _create_qlnet(variant: str, pretrained: bool = False, **kwargs: Any) -> QLNet:
    return build_model_with_cfg(
        QLNet, variant, pretrained, feature_cfg=dict(out_indices=(0, 1, 2, 3)), **kwargs
    )


# Table 1 rows: name suffix -> block arguments. Activation defaults to softball@ds (docs/design.md §2).
VARIANTS: dict[str, dict[str, Any]] = {
    "eq3": dict(block="eq3"),
    "eq3p": dict(block="eq3p"),
    "eq3_nows": dict(block="eq3", weight_sharing=False),
    "eq3_nows_x6": dict(block="eq3", weight_sharing=False, multiplier=6),
    "eq4": dict(block="eq4"),
    "eq5": dict(block="eq5"),
    "eq6": dict(block="eq6"),
    "eq7_nows_x6": dict(block="eq7", weight_sharing=False, multiplier=6),
    # Table 1's ResNet baselines on this skeleton (layers/resnet_blocks.py, docs/design.md §15): the bottleneck
    # (qlnet50_resnet is timm's resnet50) and the basic block (qlnet50_resnet_basic is resnet34), ReLU after each.
    "resnet": dict(block="resnet_bottleneck", act="relu", act_placement="all"),
    "resnet_basic": dict(block="resnet_basic", act="relu", act_placement="all"),
}


def _make_constructor(name: str, model_args: dict[str, Any]):
    def constructor(pretrained: bool = False, **kwargs: Any) -> QLNet:
        return _create_qlnet(name, pretrained, **dict(model_args, **kwargs))

    constructor.__name__ = constructor.__qualname__ = name
    constructor.__doc__ = f"QL-ConvNet {name}: {model_args} (Liu-Shao-Bai, Table 1 family)."
    constructor.__module__ = __name__
    return constructor


default_cfgs: dict[str, dict[str, Any]] = {}
for _depth, _layers in LAYOUTS.items():
    for _suffix, _args in VARIANTS.items():
        for _small in (False, True):
            _name = f"qlnet{_depth}_{_suffix}" + ("_small" if _small else "")
            _margs = dict(layers=_layers, **_args)
            if _small:
                _margs.update(stem="small", widths=SMALL_WIDTHS)
                default_cfgs[_name] = _cfg(input_size=(3, 32, 32), pool_size=(4, 4), crop_pct=1.0)
            else:
                default_cfgs[_name] = _cfg()
            globals()[_name] = register_image_model(_make_constructor(_name, _margs))
default_cfgs = generate_default_cfgs(default_cfgs)
