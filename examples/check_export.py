"""Compare exported models with the PyTorch model on the digits test split (README "Export").

    python examples/check_export.py RUN m.onnx mc.onnx hub/qlnet-digits

``RUN`` is a ``pdenets demo`` run directory; ``m.onnx`` / ``mc.onnx`` are ``pdenets export --format onnx`` of
``RUN`` and ``RUN/compressed``, ``hub/qlnet-digits`` is ``pdenets export --format timm`` of ``RUN``. Prints the
largest difference of the logits over the 450 test images and each model's top-1.
"""

from __future__ import annotations

import argparse

import numpy as np
import onnxruntime as ort
import timm
import torch

import pdenets
from pdenets.datasets.digits import DigitsDataset


def top1(logits: np.ndarray, y: np.ndarray) -> float:
    return float(100 * (logits.argmax(1) == y).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("onnx")
    p.add_argument("onnx_compressed")
    p.add_argument("timm_dir")
    a = p.parse_args()
    test = DigitsDataset("test", img_size=16)
    x, y = test.images, test.targets.numpy()
    with torch.no_grad():
        for model_dir, f in [(a.run, a.onnx), (f"{a.run}/compressed", a.onnx_compressed)]:
            ref = pdenets.load(model_dir).eval()(x).numpy()
            sess = ort.InferenceSession(f)
            out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
            print(f"{f}: max |onnxruntime - pytorch| = {np.abs(out - ref).max():.2e}, top-1 {top1(out, y):.2f}%")
        ref = pdenets.load(a.run).eval()(x).numpy()
        hub = timm.create_model(f"local-dir:{a.timm_dir}", pretrained=True).eval()(x).numpy()
        print(f"{a.timm_dir}: max |timm - pdenets.load| = {np.abs(hub - ref).max():.2e}, top-1 {top1(hub, y):.2f}%")


if __name__ == "__main__":
    main()
