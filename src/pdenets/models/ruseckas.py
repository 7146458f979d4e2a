"""Ruseckas' ODE networks: dx/dt = w x + b − γ x³, discretised into L layers (arXiv:1909.03767).

One layer of the forward Euler scheme, Eq. (109) (= Eq. (54) with the scaled parameters of Eq. (110)):

    x⁽ˡ⁺¹⁾ = x⁽ˡ⁾ + W̃⁽ˡ⁾ x⁽ˡ⁾ + b̃⁽ˡ⁾ − γ̃ φ(x⁽ˡ⁾),    φ(x) = sign(x) |x|^μ   (μ = 3: φ(x) = x³, Eq. 57)

and of the explicit two-step linear multistep scheme, Eq. (111), with one trainable k_l per layer:

    x⁽ˡ⁺¹⁾ = (1 − k_l) x⁽ˡ⁾ + k_l x⁽ˡ⁻¹⁾ + W̃⁽ˡ⁾ x⁽ˡ⁾ + b̃⁽ˡ⁾ − γ̃ φ(x⁽ˡ⁾).

The first step of the two-step scheme has no x⁽⁻¹⁾; we start it with x⁽⁻¹⁾ = x⁽⁰⁾ (zero initial
"velocity", as the leapfrog start in docs/design.md §5), where the k term cancels, so only k_1 … k_{L−1} exist
(L − 1 parameters, initialised to 0, which is Euler). ``scheme='rk4'`` integrates the same vector field
F_l(x) = (W̃⁽ˡ⁾x + b̃⁽ˡ⁾ − γ̃ φ(x)) / Δt with the classical Runge–Kutta step (the schemes are the shared ones of
:mod:`pdenets.dynamics.schemes`).

**Time step and final time** (docs/design.md §14). The stored parameters are the scaled ones of Eq. (110),
W̃ = Δt w, b̃ = Δt b, γ̃ = Δt γ, for the step ``h`` = Δt (default 1, so t = l and T = L, Eq. 3);
:meth:`~_OdeStack.rediscretized` evaluates the same ODE with another number of layers or step by
resampling w(t), b(t) in time and rescaling (W̃' = (Δt'/Δt) W̃(t), …). ``learn_time=True`` makes the final
time T (initially L·h) a parameter ``final_time``: every step is then T/L and the increments are scaled by
T/(L h) — Ruseckas Eq. (16), dℒ/dT = a(T)·F(x(T)), is what autograd computes for it.

* :class:`OdeNet` — the dense network of §5.1 on points of R^N. Inputs with fewer features than the
  width N are augmented with zero coordinates (§3.2, Eq. 59: x_i(0) = 0 for i > N_in).
  Heads: ``'softmax'`` — the logits are the first ``num_classes`` coordinates of x⁽ᴸ⁾ (model 1);
  ``'sigmoid'`` — one coordinate z = x_k⁽ᴸ⁾ gives P(class 0) = σ(z) (model 2: "the predicted probability
  of the first class is calculated as sigmoid of x₃"); for a cross-entropy trainer the head returns the
  two logits [z, 0], whose softmax is (σ(z), 1 − σ(z)).
* :class:`OdeConvNet` — the convolutional network of §3.4/§5.2, Eq. (75): per layer a k×k convolution
  over C channels with bias (W̃ = the scaled kernel κ̃, Eq. 73/74) and the cubic term; the input channels
  are augmented with zero channels up to C; global max pooling; softmax over the first ``num_classes``
  pooled channels.

All W̃, b̃ are initialised to zero (§4.4): the network starts as x ↦ x − γ̃ x³ per layer, whose signals
and gradients decay only as a power law (Eqs. 87, 90). γ̃ is one scalar, fixed (a buffer) or learnable.

Training needs, as model-side options that every trainer applies (:class:`pdenets.train.trainer.Trainer`):

* :meth:`~_OdeStack.param_lr_scales` — ``{'gamma': gamma_lr_scale}`` for a learnable γ̃: ∂𝓛/∂γ̃ sums over
  all L layers (Eq. 71), so with a shared learning rate γ̃ would move L times faster than any one layer's
  parameters (constructor option ``gamma_lr_scale``; the registered models' defaults are those of the
  README's runs: 1 for model 1 — at 0.001 γ̃ stays ≈ 0 —, 0.1 for the conv net);
* :meth:`~_OdeStack.constrain_` — clamps γ̃ ≥ 0 (a friction, Eq. 52: γ > 0) after every optimizer step.

Registered models (``pdenets.create_model``):

==========================  ======================================================  ==========
name                        configuration                                            parameters
==========================  ======================================================  ==========
``ruseckas_circles_r2``     model 1 of §5.1: R², L = 100, learnable γ̃, softmax      601
``ruseckas_circles_r3``     model 2 of §5.1: R³ (one zero dim), L = 20, γ̃ = 0.1      240
                            fixed, sigmoid of x₃
``ruseckas_conv_mnist``     §5.2: C = 10, L = 20, 3×3, learnable γ̃, max pool         18201
==========================  ======================================================  ==========
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs

from pdenets.dynamics.schemes import create_scheme, new_time_grid, resample_sequence
from pdenets.layers.derivative import check_padding_mode, pad_conv2d
from pdenets.models.registry import build_record, create_model, register_image_model, register_model

SCHEMES = ("euler", "lm2", "rk4")


def odd_power(x: torch.Tensor, mu: float) -> torch.Tensor:
    """φ(x) = sign(x) |x|^μ of Eq. (57); exactly x³ for μ = 3 (so float64 checks are exact)."""
    if mu == 3:
        return x * x * x
    if mu == 1:
        return x
    return torch.sign(x) * x.abs().pow(mu)


def odd_power_derivative(x: torch.Tensor, mu: float) -> torch.Tensor:
    """φ'(x) = μ |x|^(μ−1) (3x² for μ = 3), the decay rate of the adjoint in Eqs. (62)/(63)."""
    if mu == 3:
        return 3 * x * x
    if mu == 1:
        return torch.ones_like(x)
    return mu * x.abs().pow(mu - 1)


class _OdeStack(nn.Module):
    """Shared machinery: γ̃, μ, the time-stepping scheme and the smoothness-regularised parameters.

    Subclasses hold ``weight`` (L, ...) and ``bias`` (L, ...) and define :meth:`affine` (W̃⁽ˡ⁾x + b̃⁽ˡ⁾).
    """

    weight: nn.Parameter
    bias: nn.Parameter

    def _init_common(self, depth: int, gamma: float, learn_gamma: bool, mu: float, scheme: str,
                     gamma_lr_scale: float = 1.0, h: float = 1.0, learn_time: bool = False,
                     time_lr_scale: float = 1.0) -> None:
        if depth < 1:
            raise ValueError(f"depth (number of layers L) must be positive, got {depth}")
        if mu < 1:
            raise ValueError(f"nonlinearity exponent mu must be >= 1 (Eq. 57 uses mu > 1), got {mu}")
        scheme = "euler" if scheme == "forward_euler" else scheme
        if scheme not in SCHEMES:
            raise ValueError(f"unknown scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")
        if not gamma_lr_scale > 0:
            raise ValueError(f"gamma_lr_scale must be positive, got {gamma_lr_scale}")
        if not (h > 0 and time_lr_scale > 0):
            raise ValueError(f"h and time_lr_scale must be positive, got {h} and {time_lr_scale}")
        self.depth = depth
        self.gamma_lr_scale = float(gamma_lr_scale)
        self.mu = float(mu)
        self.scheme = scheme
        self.integrator = create_scheme(scheme, "first_order")
        self.h, self.learn_time, self.time_lr_scale = float(h), learn_time, float(time_lr_scale)
        self.final_time = nn.Parameter(torch.tensor(depth * float(h))) if learn_time else None
        self.learn_gamma = learn_gamma
        g = torch.tensor(float(gamma))
        if learn_gamma:
            self.gamma = nn.Parameter(g)
        else:
            self.register_buffer("gamma", g)
        if scheme == "lm2":
            self.k = nn.Parameter(torch.zeros(max(depth - 1, 0)))
        else:
            self.k = None

    # -- training options (read by the trainer) ----------------------------------------------------
    def param_lr_scales(self) -> dict[str, float]:
        """Learning-rate factors by parameter name: γ̃'s ``gamma_lr_scale`` when γ̃ is learnable, the final
        time's ``time_lr_scale`` when T is."""
        scales = {"gamma": self.gamma_lr_scale} if self.learn_gamma else {}
        if self.learn_time:
            scales["final_time"] = self.time_lr_scale
        return scales

    @torch.no_grad()
    def constrain_(self) -> None:
        """Keep γ̃ ≥ 0 and a learnable T ≥ 10⁻³·L·h (called after every optimizer step)."""
        if self.learn_gamma:
            self.gamma.clamp_(min=0)
        if self.final_time is not None:
            self.final_time.clamp_(min=1e-3 * self.depth * self.h)

    # -- one layer --------------------------------------------------------------------------------
    def affine(self, layer: int, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def velocity(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """Δt·F(x⁽ˡ⁾) = W̃⁽ˡ⁾x⁽ˡ⁾ + b̃⁽ˡ⁾ − γ̃ φ(x⁽ˡ⁾), the increment of Eq. (109)."""
        return self.affine(layer, x) - self.gamma * odd_power(x, self.mu)

    def layer_k(self, layer: int) -> torch.Tensor | float:
        """k_l of Eq. (111) (0 for the first layer and for the Euler scheme)."""
        if self.k is None or layer == 0:
            return 0.0
        return self.k[layer - 1]

    # -- the problem the scheme integrates (pdenets.dynamics.schemes) ---------------------------------------
    kind = "first_order"

    def time_step(self) -> torch.Tensor | float:
        """The step Δt: ``h``, or T/L with a learnable final time T."""
        return self.final_time / self.depth if self.final_time is not None else self.h

    def rate(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """F_l(x) = w⁽ˡ⁾x + b⁽ˡ⁾ − γ φ(x) = (W̃⁽ˡ⁾x + b̃⁽ˡ⁾ − γ̃ φ(x)) / h (Eq. 110)."""
        v = self.velocity(layer, x)
        return v if self.h == 1.0 else v / self.h

    def multistep_k(self, layer: int) -> torch.Tensor | float:
        return self.layer_k(layer)

    def augment(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_states(self, x: torch.Tensor) -> list[torch.Tensor]:
        """All hidden states [x⁽⁰⁾ (augmented input), x⁽¹⁾, …, x⁽ᴸ⁾] (L + 1 tensors): Eq. (109) for 'euler'
        (x⁽ˡ⁺¹⁾ = x⁽ˡ⁾ + W̃⁽ˡ⁾x⁽ˡ⁾ + b̃⁽ˡ⁾ − γ̃ φ(x⁽ˡ⁾) when h = 1), Eq. (111) for 'lm2', RK4 for 'rk4'."""
        x = self.augment(x)
        states = [x]
        state = self.integrator.start(self, (x,))
        for layer in range(self.depth):
            state = self.integrator.step(self, layer, state)
            states.append(self.integrator.finish(state)[0])
        return states

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The final state x⁽ᴸ⁾."""
        return self.forward_states(x)[-1]

    def layer_parameters(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W̃, b̃) stacked over layers, first dimension L: what the smoothness penalty (Eq. 113) sees."""
        return self.weight, self.bias

    def extra_repr(self) -> str:
        g = "learnable" if self.learn_gamma else "fixed"
        t = ", T learnable" if self.learn_time else ""
        return f"depth={self.depth}, h={self.h:g}{t}, mu={self.mu:g}, gamma={g}, scheme={self.scheme}"

    # -- re-discretisation (docs/design.md §14) ------------------------------------------------------------
    @torch.no_grad()
    def rediscretized(self, steps: int | None = None, h: float | None = None, factor: float | None = None,
                      scheme: str | None = None, interpolation: str = "constant") -> _OdeStack:
        """The same ODE on another time grid: a new network (built by :func:`pdenets.create_model` from this
        one's build record) with ``steps`` layers of step ``h`` (see :func:`~pdenets.dynamics.schemes.new_time_grid`;
        ``steps`` alone keeps T) and ``scheme`` (default: this one's).

        w(t), b(t) are resampled in time (``interpolation`` 'constant', the default: held on the trained layers,
        the same ODE; 'linear': piecewise linear in t/T; :func:`~pdenets.dynamics.schemes.interpolation_weights`)
        and the scaled parameters of Eq. (110)
        rescaled to the new step: W̃' = (h'/h) W̃(t), b̃' = (h'/h) b̃(t), γ̃' = (h'/h) γ̃; the k_l of Eq. (111) are
        resampled unscaled (k_0 taken as k_1). A learnable T is kept at its value (or N'·h' if h is given)."""
        rec = build_record(self)
        if rec is None:
            raise ValueError(f"{type(self).__name__}.rediscretized needs a model built by pdenets.create_model")
        (n_new,), h_new = new_time_grid([self.depth], float(self.time_step()), steps, h, factor)
        kwargs = dict(rec["create_kwargs"], depth=n_new, h=h_new)
        if scheme is not None:
            kwargs["scheme"] = scheme
        new = create_model(rec["model"], **kwargs)
        p = self.weight
        new = new.to(p.device, p.dtype)
        r = h_new / self.h
        new.weight.copy_(r * torch.stack(resample_sequence(self.weight, n_new, interpolation)))
        new.bias.copy_(r * torch.stack(resample_sequence(self.bias, n_new, interpolation)))
        new.gamma.copy_(r * self.gamma)
        if new.k is not None and self.k is not None and self.k.numel() and new.k.numel():
            full = torch.cat([self.k[:1], self.k])  # k_0 := k_1 (k_0 itself is not a parameter)
            new.k.copy_(torch.stack(resample_sequence(full, n_new, interpolation))[1:])
        return new.train(self.training)


class OdeNet(_OdeStack):
    """Dense ODE network of Eqs. (54)/(109)/(111) on R^N with zero-initialised W̃, b̃ (§4.4).

    Args:
        in_features: dimension of the input points (2 for the circles).
        width: N, the state dimension; ``width - in_features`` zero coordinates are appended (§3.2).
        depth: L, the number of layers (Euler steps).
        num_classes: outputs. ``'softmax'`` head: the first ``num_classes`` ≤ N coordinates of x⁽ᴸ⁾
            (default N). ``'sigmoid'`` head: must be 2 (the logits [z, 0]).
        gamma: γ̃ = Δt γ (Eq. 110), the initial value when learnable.
        learn_gamma: train γ̃ (one extra parameter, like a PReLU slope) or keep it fixed (a buffer).
        mu: exponent of the nonlinearity sign(x)|x|^μ (Eq. 57); 3 is the cubic of Eq. (56).
        scheme: ``'euler'`` (Eq. 109), ``'lm2'`` (Eq. 111, trainable k_l) or ``'rk4'``.
        head: ``'softmax'`` over the final state or ``'sigmoid'`` of one coordinate.
        head_index: the coordinate k of the sigmoid head (default: the last, x₃ in R³).
        gamma_lr_scale: learning-rate factor of a learnable γ̃ (see :meth:`param_lr_scales`).
        h: the step Δt that the scaled parameters W̃ = Δt w, b̃, γ̃ refer to (Eq. 110; default 1, T = L).
        learn_time: make the final time T (initially L·h) a parameter (Ruseckas Eq. 16).
        time_lr_scale: learning-rate factor of a learnable T.
    """

    def __init__(
        self,
        in_features: int = 2,
        width: int | None = None,
        depth: int = 100,
        num_classes: int | None = None,
        gamma: float = 0.0,
        learn_gamma: bool = True,
        mu: float = 3.0,
        scheme: str = "euler",
        head: str = "softmax",
        head_index: int = -1,
        gamma_lr_scale: float = 1.0,
        h: float = 1.0,
        learn_time: bool = False,
        time_lr_scale: float = 1.0,
    ) -> None:
        super().__init__()
        width = in_features if width is None else width
        if in_features < 1:
            raise ValueError(f"in_features must be positive, got {in_features}")
        if width < in_features:
            raise ValueError(f"width N={width} must be >= in_features={in_features} (augmentation adds zeros)")
        if head not in ("softmax", "sigmoid"):
            raise ValueError(f"head must be 'softmax' or 'sigmoid', got {head!r}")
        if head == "softmax":
            num_classes = width if num_classes is None else num_classes
            if not 1 <= num_classes <= width:
                raise ValueError(
                    f"num_classes={num_classes} is incompatible with the softmax head over a state of width "
                    f"{width}: need 1 <= num_classes <= width"
                )
        else:
            num_classes = 2 if num_classes is None else num_classes
            if num_classes != 2:
                raise ValueError(f"num_classes={num_classes} is incompatible with the two-class sigmoid head: need 2")
            if not -width <= head_index < width:
                raise ValueError(f"head_index={head_index} is out of range for width {width}")
        self._init_common(depth, gamma, learn_gamma, mu, scheme, gamma_lr_scale, h, learn_time, time_lr_scale)
        self.in_features = in_features
        self.width = width
        self.num_classes = num_classes
        self.head = head
        self.head_index = head_index % width
        self.weight = nn.Parameter(torch.zeros(depth, width, width))
        self.bias = nn.Parameter(torch.zeros(depth, width))
        self.example_input_shape = (1, in_features)

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"expected input of shape (batch, {self.in_features}), got {tuple(x.shape)}")
        if self.width > self.in_features:
            x = F.pad(x, (0, self.width - self.in_features))
        return x

    def affine(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight[layer].T + self.bias[layer]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        if self.head == "softmax":
            return x[:, : self.num_classes]
        z = x[:, self.head_index]
        return torch.stack([z, torch.zeros_like(z)], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class OdeConvNet(_OdeStack):
    """Convolutional ODE network of Eq. (75), §5.2: zero-channel augmentation, L conv layers, max pool.

    Args:
        in_chans: input image channels (augmented with zero channels up to ``channels``).
        channels: C, the constant number of channels of the state.
        depth: L, the number of layers.
        num_classes: the first ``num_classes`` ≤ C pooled channels are the logits (0: return all C).
        gamma, learn_gamma, mu, scheme: as :class:`OdeNet`.
        kernel_size: odd kernel size of κ̃ (3 in the paper).
        padding_mode: boundary condition, one of ``pdenets.layers.derivative.PADDING_MODES`` (the paper
            zero-pads).
        global_pool: ``'max'`` (the paper) or ``'avg'``.
        pretrained: accepted for timm compatibility; there are no pretrained weights.
        gamma_lr_scale: learning-rate factor of a learnable γ̃ (see :meth:`param_lr_scales`).
        h, learn_time, time_lr_scale: the time step and the learnable final time, as :class:`OdeNet`.
    """

    def __init__(
        self,
        in_chans: int = 1,
        channels: int = 10,
        depth: int = 20,
        num_classes: int = 10,
        gamma: float = 0.0,
        learn_gamma: bool = True,
        mu: float = 3.0,
        scheme: str = "euler",
        kernel_size: int = 3,
        padding_mode: str = "zeros",
        global_pool: str = "max",
        img_size: int = 28,
        gamma_lr_scale: float = 1.0,
        h: float = 1.0,
        learn_time: bool = False,
        time_lr_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels C must be positive, got {channels}")
        if not 1 <= in_chans <= channels:
            raise ValueError(
                f"in_chans={in_chans} is incompatible with C={channels} channels: the input is augmented with "
                f"zero channels up to C, so need 1 <= in_chans <= C"
            )
        if not 0 <= num_classes <= channels:
            raise ValueError(
                f"num_classes={num_classes} is incompatible with C={channels} channels: the logits are pooled "
                f"channels, so need num_classes <= C (or raise channels=...)"
            )
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
        if global_pool not in ("max", "avg"):
            raise ValueError(f"global_pool must be 'max' or 'avg', got {global_pool!r}")
        self._init_common(depth, gamma, learn_gamma, mu, scheme, gamma_lr_scale, h, learn_time, time_lr_scale)
        self.padding_mode = check_padding_mode(padding_mode)
        self.in_chans = in_chans
        self.channels = channels
        self.num_classes = num_classes
        self.num_features = channels
        self.global_pool = global_pool
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.zeros(depth, channels, channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(depth, channels))
        self.example_input_shape = (1, in_chans, img_size, img_size)

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected input of shape (batch, {self.in_chans}, H, W), got {tuple(x.shape)}")
        if self.channels > self.in_chans:
            x = F.pad(x, (0, 0, 0, 0, 0, self.channels - self.in_chans))
        return x

    def affine(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        return pad_conv2d(x, self.weight[layer], padding_mode=self.padding_mode, bias=self.bias[layer])

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=(2, 3)) if self.global_pool == "max" else x.mean(dim=(2, 3))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pool(x)
        if pre_logits or self.num_classes == 0:
            return x
        return x[:, : self.num_classes]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return nn.Identity()

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if not 0 <= num_classes <= self.channels:
            raise ValueError(f"num_classes={num_classes} must be <= C={self.channels}")
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool


# ---- registration ---------------------------------------------------------------------------------


@register_model
def ruseckas_circles_r2(num_classes: int = 2, in_features: int = 2, **kwargs: Any) -> OdeNet:
    """Model 1 of §5.1: R², L = 100, learnable γ̃ (init 0, lr factor 1), softmax of x⁽ᴸ⁾ — 601 parameters."""
    args: dict[str, Any] = dict(width=2, depth=100, gamma=0.0, learn_gamma=True, head="softmax", gamma_lr_scale=1.0)
    args.update(kwargs)
    return OdeNet(in_features=in_features, num_classes=num_classes, **args)


@register_model
def ruseckas_circles_r3(num_classes: int = 2, in_features: int = 2, **kwargs: Any) -> OdeNet:
    """Model 2 of §5.1: R³ with x₃(0) = 0, L = 20, fixed γ̃ = 0.1, P(class 0) = σ(x₃⁽ᴸ⁾) — 240 parameters."""
    args: dict[str, Any] = dict(width=3, depth=20, gamma=0.1, learn_gamma=False, head="sigmoid", head_index=2)
    args.update(kwargs)
    return OdeNet(in_features=in_features, num_classes=num_classes, **args)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "", "num_classes": 10, "input_size": (1, 28, 28), "pool_size": None, "crop_pct": 1.0,
        "interpolation": "bilinear", "mean": (0.0,), "std": (1.0,), "first_conv": "", "classifier": "",
        "paper_ids": "arXiv:1909.03767", **kwargs,
    }


default_cfgs = generate_default_cfgs({"ruseckas_conv_mnist": _cfg()})


@register_image_model
def ruseckas_conv_mnist(pretrained: bool = False, **kwargs: Any) -> OdeConvNet:
    """§5.2: C = 10, L = 20, 3×3 convs, learnable γ̃ (lr factor 0.1), global max pool — (3·3·10·10 + 10)·20 + 1 = 18201
    parameters. ``in_chans``, ``num_classes`` (≤ C), ``channels``, ``depth``, ``padding_mode`` … adjustable."""
    args: dict[str, Any] = dict(channels=10, depth=20, gamma=0.0, learn_gamma=True, gamma_lr_scale=0.1)
    args.update(kwargs)
    return build_model_with_cfg(OdeConvNet, "ruseckas_conv_mnist", pretrained=False, **args)
