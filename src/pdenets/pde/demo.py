"""``pdenets pde demo``: run a classical PDE as a ResNet on an image and write an animated GIF and a PNG strip.

The image is the initial condition (Table 2: "input = initial condition"); each frame is the feature map
after some number of residual blocks ("hidden layers = solution at intermediate times"), like the time
lapse of Liu-Shao-Bai's Fig. 2. Equations: ``heat`` (Eq. (8) kernel, forward Euler), ``wave`` (two-skip
scheme), ``rotation`` and ``dilation`` (variable-coefficient transport, RK4). Everything runs in float32
on one CPU thread in a few seconds at the default 128 px.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pdenets.pde.classic import (
    HEAT_CFL,
    HeatResNet,
    WaveResNet,
    dilation_resnet,
    grid_coordinates,
    rotation_resnet,
)
from pdenets.utils.plotting import save_figure, subplots

EQUATIONS = ("heat", "wave", "rotation", "dilation")


@dataclass
class DemoResult:
    gif: Path
    png: Path
    times: list[float]
    blocks: list[int]  # residual blocks (time steps) applied before each frame


def load_image(image: str | None, size: int) -> np.ndarray:
    """Grey image in [0, 1], resized so its longer side is ``size``. ``'sample'``/None: skimage's camera."""
    from skimage.transform import resize

    if image in (None, "sample"):
        from skimage import data

        arr = data.camera().astype(np.float64) / 255.0
    else:
        from PIL import Image, UnidentifiedImageError

        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"--image {image!r} is not a file (give an image path or 'sample')")
        try:
            arr = np.asarray(Image.open(path).convert("L"), dtype=np.float64) / 255.0
        except UnidentifiedImageError:
            raise ValueError(f"--image {image!r} is not an image PIL can read") from None
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    scale = size / max(arr.shape)
    shape = (max(8, round(arr.shape[0] * scale)), max(8, round(arr.shape[1] * scale)))
    return resize(arr, shape, anti_aliasing=True)


def _smooth(u: torch.Tensor, sigma: float) -> torch.Tensor:
    """A light Gaussian blur (central-difference transport of sharp edges would ring)."""
    if sigma <= 0:
        return u
    r = max(1, int(3 * sigma))
    g = torch.exp(-torch.arange(-r, r + 1, dtype=u.dtype) ** 2 / (2 * sigma**2))
    g = g / g.sum()
    u = torch.nn.functional.pad(u, (r, r, r, r), mode="replicate")
    u = torch.nn.functional.conv2d(u, g.view(1, 1, 1, -1))
    return torch.nn.functional.conv2d(u, g.view(1, 1, -1, 1))


def simulate(
    equation: str, img: np.ndarray, frames: int = 8, padding_mode: str | None = None
) -> tuple[list[np.ndarray], list[float], list[int]]:
    """Frames of the solution with the image as initial condition, their times and block counts."""
    if equation not in EQUATIONS:
        raise ValueError(f"unknown equation {equation!r}; expected one of {', '.join(EQUATIONS)}")
    if frames < 2:
        raise ValueError(f"frames must be at least 2, got {frames}")
    u0 = torch.as_tensor(img, dtype=torch.float32)[None, None]
    hh, ww = img.shape
    side = max(hh, ww)
    if equation == "heat":
        # pixel units, h = 1; final blur radius sqrt(2T) = side/10; frames quadratic in time
        h, tau = 1.0, 0.8 * HEAT_CFL
        t_end = (side / 10) ** 2 / 2
        blocks = [round((k / (frames - 1)) ** 2 * t_end / tau) for k in range(frames)]
        net = HeatResNet(tau, h, padding_mode=padding_mode or "replicate")

        def advance(state, n):
            return net(state, n)

        state, show = u0, (lambda s: s)
    elif equation == "wave":
        h, tau = 1.0, 0.5
        u0 = _smooth(u0, 1.0)
        u0 = u0 - u0.mean()
        t_end = side / 2
        blocks = [round(k / (frames - 1) * t_end / tau) for k in range(frames)]
        net = WaveResNet(tau, h, padding_mode=padding_mode or "zeros")
        first = net(u0, None, 1)  # [u0, u1]

        def advance(state, n):
            return tuple(net.run(state[0], state[1], n)[-2:]) if n else state

        state, show = (first[0], first[1]), (lambda s: s[0])
        blocks = [max(0, b) for b in blocks]
    else:
        h = 2.0 / (side - 1)
        u0 = _smooth(u0, 1.0)
        nu = 0.02  # hyperviscosity: damps the odd-even mode of central differences (see TransportResNet)
        if equation == "rotation":
            # a smooth disc window: the rotating content never meets the boundary, inflow is 0 = zero padding
            x, y = grid_coordinates(hh, ww, h, dtype=torch.float32)
            r = torch.sqrt(x**2 + y**2) / min(x.abs().max(), y.abs().max())
            u0 = u0 * torch.clamp((1.0 - r) / 0.08, 0, 1)
            net = rotation_resnet(hh, ww, h, cfl=1.0, padding_mode=padding_mode or "zeros", dtype=torch.float32,
                                  hyperviscosity=nu)
            t_end = math.pi / 2
        else:
            # zoom in: content leaves through the boundary; replicate padding is the usual outflow condition
            net = dilation_resnet(hh, ww, h, rate=1.0, cfl=1.0, padding_mode=padding_mode or "replicate",
                                  dtype=torch.float32, hyperviscosity=nu)
            t_end = math.log(2.0)  # zoom by 2
        n_total = math.ceil(t_end / net.tau)
        net.tau = t_end / n_total
        tau = net.tau
        blocks = [round(k / (frames - 1) * n_total) for k in range(frames)]

        def advance(state, n):
            return net(state, n)[-1]

        state, show = u0, (lambda s: s)
    out, done = [], 0
    with torch.no_grad():
        for b in blocks:
            state = advance(state, b - done)
            done = b
            out.append(show(state)[0, 0].numpy().astype(np.float64))
    return out, [b * tau for b in blocks], blocks


def _colorize(frames: list[np.ndarray], equation: str) -> list[np.ndarray]:
    import matplotlib

    if equation == "wave":
        vmax = float(np.abs(frames[0]).max()) or 1.0
        vmin, cmap = -vmax, matplotlib.colormaps["RdBu_r"]
    else:
        vmin, vmax = float(frames[0].min()), float(frames[0].max())
        cmap = matplotlib.colormaps["inferno" if equation == "heat" else "gray"]
    span = (vmax - vmin) or 1.0
    return [(cmap(np.clip((f - vmin) / span, 0, 1))[..., :3] * 255).astype(np.uint8) for f in frames]


def run_demo(
    equation: str, image: str | None, out_dir: str | Path, frames: int = 8, size: int = 128,
    padding_mode: str | None = None,
) -> DemoResult:
    """Simulate, then write ``OUT/<equation>.gif`` (animated) and ``OUT/<equation>_strip.png`` (the frames)."""
    from PIL import Image

    img = load_image(image, size)
    raw, times, blocks = simulate(equation, img, frames, padding_mode)
    rgb = _colorize(raw, equation)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gif = out / f"{equation}.gif"
    pil = [Image.fromarray(f) for f in rgb]
    scale = max(1, 256 // max(rgb[0].shape[:2]))
    if scale > 1:
        pil = [p.resize((p.width * scale, p.height * scale), Image.NEAREST) for p in pil]
    pil[0].save(gif, save_all=True, append_images=pil[1:], duration=400, loop=0)
    png = out / f"{equation}_strip.png"
    fig, axes = subplots(1, len(rgb), figsize=(1.9 * len(rgb), 2.2))
    for ax, f, t, b in zip(np.atleast_1d(axes), rgb, times, blocks):
        ax.imshow(f, interpolation="nearest")
        ax.set_title(f"t = {t:.3g}\n{b} blocks", fontsize=8)
        ax.axis("off")
    fig.suptitle(f"{equation} equation as a ResNet (initial condition = the image)", fontsize=9)
    png = save_figure(fig, png, dpi=100)
    return DemoResult(gif, png, times, blocks)
