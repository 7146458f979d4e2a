"""The PDE-motivated CNNs of Ruthotto & Haber (parabolic, Hamiltonian, second-order), STL-10 layout.

Layout (the paper's supplement): an opening 3×3 conv ``in_chans → 16`` with BatchNorm and ReLU; then four
units, each integrating its dynamic over 3 time steps of size h = 1 with per-step weights θ_j, at widths
16, 64, 128, 256; every unit but the last is followed by a connective 1×1 conv to the next width with
BatchNorm and ReLU and a 2×2 average pooling; global average; one linear classifier. Inside the units
F_sym (Eq. 6) uses instance normalisation and ReLU, as in the supplement.

Registered names (``timm.create_model(name)`` after ``import pdenets``)::

    rh_parabolic_stl10   rh_hamiltonian_stl10   rh_second_order_stl10     (96 px, widths 16/64/128/256)
    rh_parabolic_small   rh_hamiltonian_small   rh_second_order_small     (8-16 px digits, widths 16/32/64)

Keyword arguments: ``steps`` (time steps per unit, int or one per stage), ``h`` (time step), ``depth``
(units per stage, default 1), ``width`` (multiplier on every width), ``widths`` (explicit tuple),
``reversible=True`` (memory-flat training of the hyperbolic units), ``norm`` ('instance' | 'batch' |
'none'), ``act`` (monotone σ), ``padding_mode`` (the boundary condition of every conv that pads: the stem and
the units' K, Kᵀ; the connectors are 1×1), ``scheme`` (the time stepping, default the paper's; see
:mod:`pdenets.dynamics.schemes`). :meth:`RHNet.rediscretized` evaluates a trained network with other step
counts, step sizes or schemes (docs/design.md §14). The Hamiltonian units split each stage's channels in
halves (Y = first half, Z = second half; see :mod:`pdenets.dynamics.integrators`), so a Hamiltonian
network has half the conv weights of the parabolic one in its units.

Parameter counts (10 classes, ``pdenets models 'rh_*' --num-classes 10``): rh_parabolic_stl10 and
rh_second_order_stl10 2,378,042; rh_hamiltonian_stl10 1,213,370. By hand: stem 3·16·9 + 2·16 = 464;
a parabolic / second-order unit of width w has 3·(9w² + 2w) (K and the instance norm's γ, β per step),
a Hamiltonian one 3·2·(9(w/2)² + 2(w/2)); connectors w·w' + 2w'; classifier 256·10 + 10.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
from timm.layers import create_classifier
from timm.models import build_model_with_cfg, generate_default_cfgs
from timm.models._features import feature_take_indices

from pdenets.dynamics.integrators import UNITS, PDEUnit, create_unit, transfer_in_time
from pdenets.dynamics.schemes import ALIASES, SCHEMES, new_time_grid
from pdenets.layers.derivative import check_padding_mode
from pdenets.layers.symmetric import SymmetricLayer
from pdenets.layers.tracing import is_symbolic_tracing
from pdenets.models.common import TimmClassifierMixin
from pdenets.models.registry import build_record, create_model, register_image_model

STL10_WIDTHS = (16, 64, 128, 256)
SMALL_WIDTHS = (16, 32, 64)


def init_rh_weights(model: nn.Module) -> None:
    """The supplement's initialisation: convolution weights Glorot-normal ([14]); every other weight
    (classifier weights, biases, the normalisations' shifts) from N(0, 0.1²) truncated at ±0.2;
    normalisation scales 1."""
    for m in model.modules():
        if isinstance(m, SymmetricLayer):
            m.reset_parameters()
        elif isinstance(m, nn.Conv2d):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.trunc_normal_(m.bias, 0.0, 0.1, -0.2, 0.2)
        elif isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, 0.0, 0.1, -0.2, 0.2)
            if m.bias is not None:
                nn.init.trunc_normal_(m.bias, 0.0, 0.1, -0.2, 0.2)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.trunc_normal_(m.bias, 0.0, 0.1, -0.2, 0.2)


class Connector(nn.Sequential):
    """1×1 conv to the next width + BatchNorm + ReLU + 2×2 average pooling (the supplement's single layer)."""

    def __init__(self, in_chs: int, out_chs: int, pool: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.AvgPool2d(2) if pool else nn.Identity()


class RHNet(TimmClassifierMixin, nn.Module):
    """Ruthotto-Haber PDE-CNN. One configurable class; see the module docstring.

    Args:
        dynamics: 'parabolic', 'hamiltonian' or 'second_order'.
        widths: channels of each stage (default 16, 64, 128, 256).
        steps: time steps per unit (int, or one per stage).   h: time step size.
        depth: units per stage (default 1, as the paper).   width: multiplier applied to ``widths``.
        num_classes: classifier outputs (0: no classifier).   in_chans: input image channels.
        reversible: memory-flat backprop through the hyperbolic units.
        norm / act / padding_mode / bias: options of :class:`~pdenets.layers.symmetric.SymmetricLayer`;
            ``padding_mode`` is also the stem conv's.
        scheme: time-stepping scheme of the units (None: the paper's for the dynamics; see
            :mod:`pdenets.dynamics.schemes`).
        drop_rate: dropout before the classifier.   global_pool: timm pooling type.
    """

    _STEM_PATTERN = r"^stem"
    _BLOCK_PATTERNS = (r"^stages\.(\d+)", r"^stages\.(\d+)\.(\w+)")

    def __init__(
        self,
        dynamics: str = "parabolic",
        widths: Sequence[int] = STL10_WIDTHS,
        steps: int | Sequence[int] = 3,
        h: float = 1.0,
        depth: int = 1,
        width: float = 1.0,
        num_classes: int = 10,
        in_chans: int = 3,
        reversible: bool = False,
        norm: str = "instance",
        act: str = "relu",
        padding_mode: str = "zeros",
        bias: bool = True,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
        scheme: str | None = None,
    ) -> None:
        super().__init__()
        if dynamics not in UNITS:
            raise ValueError(f"unknown dynamics {dynamics!r}; expected one of {', '.join(UNITS)}")
        if depth < 1:
            raise ValueError(f"depth (units per stage) must be positive, got {depth}")
        if not width > 0:
            raise ValueError(f"width multiplier must be positive, got {width}")
        check_padding_mode(padding_mode)
        widths = tuple(max(2, int(round(w * width))) for w in widths)
        if dynamics == "hamiltonian":
            widths = tuple(w + (w % 2) for w in widths)  # the (Y, Z) split needs even widths
        steps_t = (steps,) * len(widths) if isinstance(steps, int) else tuple(steps)
        if len(steps_t) != len(widths) or not widths:
            raise ValueError(f"steps {steps} must be an int or one per stage ({len(widths)} stages)")
        self.dynamics, self.widths, self.steps, self.h, self.depth = dynamics, widths, steps_t, float(h), depth
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        self.grad_checkpointing = False

        self.stem = nn.Sequential()
        self.stem.add_module("conv", nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False,
                                               padding_mode=padding_mode))
        self.stem.add_module("bn", nn.BatchNorm2d(widths[0]))
        self.stem.add_module("act", nn.ReLU(inplace=True))

        self.feature_info = []  # dict(num_chs, reduction, module) per stage (unannotated: TorchScript warns)
        stages, reduction = [], 1
        for i, (w, n) in enumerate(zip(widths, steps_t)):
            stage = nn.Sequential()
            for d in range(depth):
                stage.add_module(f"unit{d}", create_unit(
                    dynamics, w, steps=n, h=h, reversible=reversible, scheme=scheme, norm=norm, act=act,
                    padding_mode=padding_mode, bias=bias))
            # the feature of stage i is its last unit's output, before the connector to the next width
            self.feature_info.append(dict(num_chs=w, reduction=reduction, module=f"stages.{i}.unit{depth - 1}"))
            if i + 1 < len(widths):
                stage.add_module("connect", Connector(w, widths[i + 1]))
                reduction *= 2
            stages.append(stage)
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = widths[-1]
        self.global_pool, self.fc = create_classifier(widths[-1], num_classes, pool_type=global_pool)
        init_rh_weights(self)

    # ---- structure -------------------------------------------------------------------------------
    def units(self) -> list[PDEUnit]:
        return [m for m in self.modules() if isinstance(m, PDEUnit)]

    @torch.no_grad()
    def rediscretized(self, steps: int | Sequence[int] | None = None, h: float | None = None,
                      factor: float | None = None, scheme: str | None = None,
                      interpolation: str = "constant") -> RHNet:
        """The same network on another time grid (docs/design.md §14): a new RHNet, built by
        :func:`pdenets.create_model` from this one's build record with the new ``steps`` (int, or one per stage)
        and ``h`` (:func:`~pdenets.dynamics.schemes.new_time_grid`: ``factor`` f gives f× the steps and h/f,
        ``steps`` alone keeps every unit's T = N h) and ``scheme`` (default: this one's), whose θ(t) is this
        one's resampled in time (:func:`~pdenets.dynamics.integrators.transfer_in_time`, any factor):
        ``interpolation='constant'`` (default) keeps θ(t) piecewise constant on the trained steps — the same ODE —,
        ``'linear'`` interpolates between them (shallow-to-deep). Everything outside the units is copied. A
        reversible network keeps ``reversible`` only if the new scheme is reversible (memory, not function)."""
        rec = build_record(self)
        if rec is None:
            raise ValueError("RHNet.rediscretized needs a model built by pdenets.create_model (a build record)")
        new_steps, new_h = new_time_grid(list(self.steps), self.h, steps, h, factor)
        kwargs = dict(rec["create_kwargs"], steps=new_steps[0] if len(set(new_steps)) == 1 else new_steps, h=new_h)
        if scheme is not None:
            kwargs["scheme"] = scheme
            cls = SCHEMES.get(ALIASES.get(scheme, scheme))
            if kwargs.get("reversible") and cls is not None and not cls.reversible:
                kwargs["reversible"] = False
        new = create_model(rec["model"], **kwargs)
        p = next(self.parameters())
        new = new.to(p.device, p.dtype)
        units = {n: m for n, m in self.named_modules() if isinstance(m, PDEUnit)}
        new_units = dict(new.named_modules())
        rest = {k: v for k, v in self.state_dict().items() if not any(k.startswith(n + ".") for n in units)}
        missing, unexpected = new.load_state_dict(rest, strict=False)
        if unexpected or any(not any(k.startswith(n + ".") for n in units) for k in missing):
            raise ValueError(f"cannot re-discretise: the rebuilt network differs outside its units ({missing[:3]}, "
                             f"{unexpected[:3]})")
        for name, unit in units.items():
            transfer_in_time(unit, new_units[name], interpolation)
        return new.train(self.training)

    def set_reversible(self, enable: bool = True) -> None:
        for u in self.units():
            if enable and not u.is_reversible_scheme:
                raise ValueError(f"{type(u).__name__} is not reversible")
            u.reversible = enable

    # ---- timm model interface --------------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> None:
        if is_symbolic_tracing():
            return  # torch.fx: the shape is symbolic (docs/design.md §12)
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected input (N, {self.in_chans}, H, W), got shape {tuple(x.shape)}")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            self.check_input(x)
        return self.stages(self.stem(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's feature API: each stage's last unit output (``feature_info``, before the connector), and the
        features.

        Args:
            indices: the last n stages if an int, all if None, else the stages listed (negative from the end).
            norm: no effect (there is no final norm).  stop_early: stop after the last stage needed.
            output_fmt: 'NCHW' only.  intermediates_only: return the list of intermediates only.

        Returns:
            The intermediates, or (features, intermediates); the features equal :meth:`forward_features` unless
            ``stop_early`` ended the loop before the last stage.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.check_input(x)
        x = self.stem(x)
        intermediates: list[torch.Tensor] = []
        for i, stage in enumerate(self.stages):
            for name, module in stage.named_children():
                if name != "connect":
                    x = module(x)
            if i in take_indices:
                intermediates.append(x)
            if stop_early and i >= max_index:
                break
            if hasattr(stage, "connect"):
                x = stage.connect(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop what the intermediates ``indices`` do not need (timm's API): the stages after the last one taken
        and that stage's connector (``num_features`` is then its width), and the classifier with ``prune_head``
        or when stages were dropped. The kept modules keep their state-dict keys. Returns the indices kept."""
        n = len(self.stages)
        take_indices, max_index = feature_take_indices(n, indices)
        if max_index < n - 1:
            self.stages = self.stages[: max_index + 1]
            del self.stages[max_index].connect
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or max_index < n - 1:
            self.reset_classifier(0, "")
        return take_indices


# ---- registration ---------------------------------------------------------------------------------


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "", "num_classes": 10, "input_size": (3, 96, 96), "pool_size": (12, 12), "crop_pct": 1.0,
        "interpolation": "bilinear", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
        "first_conv": "stem.conv", "classifier": "fc", "license": "mit", "paper_ids": "arXiv:1804.04272",
        **kwargs,
    }


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> RHNet:
    n = len(kwargs.get("widths", STL10_WIDTHS))
    # features_only: timm's FeatureGetterNet (forward_intermediates), as the features sit inside the stages
    feature_cfg = dict(out_indices=tuple(range(n)), feature_cls="getter")
    return build_model_with_cfg(RHNet, variant, pretrained, feature_cfg=feature_cfg, **kwargs)


def _make_constructor(name: str, model_args: dict[str, Any], example_shape: tuple[int, ...]):
    def constructor(pretrained: bool = False, **kwargs: Any) -> RHNet:
        model = _create(name, pretrained, **dict(model_args, **kwargs))
        model.example_input_shape = (1, model.in_chans, *example_shape[2:])
        return model

    constructor.__name__ = constructor.__qualname__ = name
    constructor.__doc__ = f"Ruthotto-Haber {model_args['dynamics']} CNN {name}: {model_args}."
    constructor.__module__ = __name__
    return constructor


default_cfgs: dict[str, dict[str, Any]] = {}
for _dyn in UNITS:
    _n = f"rh_{_dyn}_stl10"
    default_cfgs[_n] = _cfg()
    globals()[_n] = register_image_model(
        _make_constructor(_n, dict(dynamics=_dyn, widths=STL10_WIDTHS), (1, 3, 96, 96)))
    _n = f"rh_{_dyn}_small"
    default_cfgs[_n] = _cfg(input_size=(3, 16, 16), pool_size=(4, 4))
    globals()[_n] = register_image_model(
        _make_constructor(_n, dict(dynamics=_dyn, widths=SMALL_WIDTHS), (1, 3, 16, 16)))
default_cfgs = generate_default_cfgs(default_cfgs)
