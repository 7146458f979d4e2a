"""onnxruntime latency of the integer (QDQ, int8) model against the float model (docs/design.md §16).

The integer model is the one ``pdenets symmetry quantize`` writes: BN folded, (optionally) the O(n) segments
rotated, weights int8 per output channel, activations uint8 per tensor, calibrated on random images (latency does
not depend on the values; an untrained model with random BatchNorm statistics is used). Both files run on the CPU
execution provider with ``SessionOptions.intra_op_num_threads`` threads, timings interleaved (float, int, float,
...) so that a change of machine load hits both. Two float files: as ``pdenets export`` writes it (the derivative
conv D one n → 4n conv with groups n) and in the integer model's layout (D as four multiplier-1 depthwise convs,
which onnxruntime has fast kernels for); the speed-up is against the faster of the two. ``--ort-static`` adds
onnxruntime's own ``quantize_static`` (QDQ, per-channel int8 weights, uint8 activations, MinMax) of the split float
file as a yardstick.

    PYTHONPATH=src python benchmarks/bench_quant.py --model qlnet50_eq3p --batch 8 --img 224 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path

import torch

from common import median, time_interleaved
from pdenets import create_model
from pdenets.export.files import export_onnx
from pdenets.quant.fakequant import instrument
from pdenets.quant.onnx_qdq import export_qdq, integer_ops, ort_run, ort_session
from pdenets.quant.pipeline import QuantConfig, prepare, quantize_model, rotate
from pdenets.symmetry.rotations import rotation_element
from pdenets.utils.stats import randomize_bn_statistics


class _Reader:
    """onnxruntime CalibrationDataReader over a list of batches."""

    def __init__(self, name: str, batches: list[torch.Tensor]) -> None:
        self.it = iter([{name: b.numpy()} for b in batches])

    def get_next(self):
        return next(self.it, None)


def ort_static(float_path: Path, out: Path, batches: list[torch.Tensor]) -> Path:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out / "float_pre.onnx"
    quant_pre_process(str(float_path), str(pre))
    name = ort_session(pre, 1).get_inputs()[0].name
    path = out / "ort_static.int.onnx"
    quantize_static(str(pre), str(path), _Reader(name, batches), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qlnet50_eq3p")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--img", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    ap.add_argument("--rotation", default="hadamard", choices=("none", "random", "hadamard"))
    ap.add_argument("--calib-batches", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--ort-static", action="store_true", help="also time onnxruntime's quantize_static model")
    ap.add_argument("--out", help="keep the ONNX files here (default: a temporary directory)")
    args = ap.parse_args()

    model = randomize_bn_statistics(create_model(args.model))
    shape = (args.batch, model.in_chans, args.img, args.img)
    g = torch.Generator().manual_seed(0)
    calib = [torch.randn(*shape, generator=g) for _ in range(args.calib_batches)]
    x = torch.randn(*shape, generator=g)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        out.mkdir(parents=True, exist_ok=True)
        folded, a = prepare(model)
        rotated = rotate(folded, a, rotation_element(a, args.rotation, torch.Generator().manual_seed(0)))
        sim = quantize_model(rotated, torch.cat(calib), QuantConfig(calib_batch=args.batch))
        f32 = copy.deepcopy(folded).float()
        split = instrument(f32, 8, None).set_mode("float").module  # D as multiplier-1 depthwise convs, float
        paths = {"float (pdenets export)": export_onnx(f32, out / "float.onnx", shape, fold=False).path,
                 "float (split D)": export_onnx(split, out / "float_split.onnx", shape, exporter="dynamo",
                                                fold=False).path,
                 "int8": export_qdq(sim, out / "int8.onnx", shape).path}
        if args.ort_static:
            paths["ort quantize_static"] = ort_static(paths["float (split D)"], out, calib)
        sess = {k: ort_session(p, args.threads) for k, p in paths.items()}
        feed = {k: {s.get_inputs()[0].name: x.numpy()} for k, s in sess.items()}
        times = time_interleaved({k: (lambda k=k: sess[k].run(None, feed[k])) for k in sess},
                                 torch.device("cpu"), args.warmup, args.trials)
        with torch.no_grad():
            y = f32(x)
        best = min(median(times["float (pdenets export)"]), median(times["float (split D)"]))
        res = {k: dict(ms=1e3 * median(t), speedup=best / median(t),
                       rel_err=float((ort_run(sess[k], x) - y).norm() / y.norm()),
                       integer_kernels=sum(v for op, v in integer_ops(paths[k]).items() if op.startswith("QLinear")
                                           or op == "QGemm"))
               for k, t in times.items()}
    print(f"{args.model}, batch {args.batch}, {args.img}², onnxruntime CPU, {args.threads} threads, rotation "
          f"{args.rotation}, median of {args.trials} interleaved runs")
    print(f"{'model':<24}{'ms/batch':>10}{'speed-up vs faster float':>26}{'rel. err vs float':>19}{'QLinear ops':>13}")
    for k, r in res.items():
        print(f"{k:<24}{r['ms']:>10.1f}{r['speedup']:>25.2f}×{r['rel_err']:>19.4f}{r['integer_kernels']:>13}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
