"""Convergence figures of the classical PDE ResNets (pdenets.pde.classic), float64, one thread.

    PYTHONPATH=src python benchmarks/pde_convergence.py

Prints: heat ResNet time order (vs the semi-discrete FFT reference) and spatial order (vs the analytic
Gaussian); rotation and dilation errors under grid refinement; wave-scheme energy drift over 100 steps;
system (9) plane-wave errors. The tests in tests/test_pde_classic.py assert the same quantities.
"""

import math
import time

import torch

from pdenets.pde.classic import (
    HeatResNet,
    HyperbolicSystemResNet,
    WaveResNet,
    dilation_resnet,
    grid_coordinates,
    rotation_resnet,
    wave_energy,
    wave_system_matrices,
)

torch.set_num_threads(1)
torch.set_default_dtype(torch.float64)


def semi_discrete_heat(u0, h, t):
    n = u0.shape[-1]
    k = 2 * math.pi * torch.fft.fftfreq(n, d=h)
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    lam = (2 * torch.cos(kx * h) + 2 * torch.cos(ky * h) - 4) / h**2
    return torch.fft.ifft2(torch.fft.fft2(u0) * torch.exp(t * lam)).real


def gaussian(x, y, s2):
    return torch.exp(-(x**2 + y**2) / (2 * s2))


def main() -> None:
    t0 = time.perf_counter()
    s0, T, L = 1.0, 0.5, 10.0
    print("heat: periodic [-10,10)^2, u0 = exp(-r^2/2), T = 0.5; exact: (1/(1+2T)) exp(-r^2/(2(1+2T)))")
    for n in (80, 160):
        h = 2 * L / n
        x, y = grid_coordinates(n, n, h, origin=(-L, -L))
        u0 = gaussian(x, y, s0**2)
        ref = semi_discrete_heat(u0, h, T)
        exact = s0**2 / (s0**2 + 2 * T) * gaussian(x, y, s0**2 + 2 * T)
        print(f"  h = {h:.4f}: |exp(T Δ_h)u0 - exact|_max = {(ref - exact).abs().max():.3e}  (spatial error)")
        if n == 80:
            prev = None
            for steps in (32, 64, 128, 256):
                u = HeatResNet(T / steps, h, steps, padding_mode="circular")(u0[None, None])[0, 0]
                e = (u - ref).abs().max().item()
                order = f"  order {math.log2(prev / e):.3f}" if prev else ""
                print(f"    tau = {T / steps:.5f} (tau/h^2 = {T / steps / h**2:.4f}): time error {e:.3e}{order}")
                prev = e

    print("rotation du/dt = -y u_x + x u_y, blob at (0.4, 0), sigma 0.1, t = pi/2, RK4 at Courant number 1")
    for n in (33, 65, 129):
        h = 2 / (n - 1)
        m = rotation_resnet(n, n, h, cfl=1.0)
        steps = math.ceil(math.pi / 2 / m.tau)
        m.tau = math.pi / 2 / steps
        x, y = grid_coordinates(n, n, h)
        blob = torch.exp(-((x - 0.4) ** 2 + y**2) / 0.02)
        u = m(blob[None, None], steps)[-1][0, 0]
        exact = torch.exp(-((-y - 0.4) ** 2 + x**2) / 0.02)  # f(x cos t - y sin t, x sin t + y cos t), t = pi/2
        print(f"  {n}x{n}: {steps} blocks, max error {(u - exact).abs().max():.3e}")

    print("dilation du/dt = x u_x + y u_y (rate -1: shrink), t = 0.5")
    for n in (33, 65, 129):
        h = 2 / (n - 1)
        m = dilation_resnet(n, n, h, rate=-1.0, cfl=1.0)
        steps = math.ceil(0.5 / m.tau)
        m.tau = 0.5 / steps
        x, y = grid_coordinates(n, n, h)

        def f(x, y):
            return torch.exp(-((x - 0.1) ** 2 + y**2) / (2 * 0.15**2))

        u = m(f(x, y)[None, None], steps)[-1][0, 0]
        print(f"  {n}x{n}: max error {(u - f(math.exp(0.5) * x, math.exp(0.5) * y)).abs().max():.3e}")

    print("wave two-skip scheme, 48x48, tau/h = 0.5, 100 steps: relative drift of the discrete energy")
    x, y = grid_coordinates(48, 48, 1.0)
    u0 = gaussian(x - 4, y, 9.0)[None, None]
    for mode in ("zeros", "replicate", "circular"):
        us = WaveResNet(0.5, 1.0, mode)(u0, None, 100)
        e = torch.cat([wave_energy(us[k], us[k + 1], 0.5, 1.0, mode) for k in range(100)])
        print(f"  {mode:<9}: {((e - e[0]).abs().max() / e[0]).item():.2e}")

    print("system (9) with A, B of the wave equation, plane wave k = (1, 2), T = 1, tau = h")
    a, b = wave_system_matrices()
    for n in (32, 64, 128):
        h = 2 * math.pi / n
        x, y = grid_coordinates(n, n, h, origin=(0.0, 0.0))
        om = math.sqrt(5)

        def w(t, x=x, y=y, om=om):
            c = torch.cos(x + 2 * y - om * t)
            return torch.stack([c, 2 * c, -om * c])[None]

        out = HyperbolicSystemResNet(a, b, 1.0 / n, h, "circular")(w(0.0), n)[-1]
        print(f"  {n}x{n}: max error {(out - w(1.0)).abs().max():.3e}")
    print(f"done in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
