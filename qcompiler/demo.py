"""`make demo`: compile EfficientNet-Lite0 (pretrained) for this machine end to end, and print
what it costs: the report (per pass and per layer), accuracy against float on the 20
bundled ImageNet images, exactness against the interpreter, and speed against PyTorch.

    python -m qcompiler.demo [--target host] [--runs 20] [--threads N]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from qcompiler import qcompile
from qcompiler.metrics import sqnr_db, top1_accuracy, top1_agreement
from qcompiler.models import efficientnet_lite0, imagenet_calibration_set, imagenet_samples


def median_ms(fn, x, runs: int) -> float:
    fn(x)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", default="host")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per engine (median)")
    parser.add_argument("--threads", type=int, help="threads for the compiled model and PyTorch (default: every CPU)")
    args = parser.parse_args()
    model = efficientnet_lite0()
    data = imagenet_samples()
    n = len(data.labels)
    calibration = imagenet_calibration_set(crops_per_image=3).split(10)
    print(f"EfficientNet-Lite0 (pretrained) -> {args.target}: W8A8, MSE calibration on {sum(len(b) for b in calibration)} "
          f"flips/crops of the {n} foolbox ImageNet images, bias correction\n")
    cm = qcompile(model, data.images[:1], target=args.target, bits=8, method="mse", calibration=calibration,
                  ptq=["bias_correction"], progress=False, threads=args.threads)
    print(cm.report())

    with torch.no_grad():
        reference = model(data.images)
    compiled = torch.cat([cm(data.images[i:i + 1]) for i in range(n)])
    exact = sum(torch.equal(compiled[i:i + 1], cm.qm.interpret(data.images[i:i + 1])) for i in range(n))
    print(f"accuracy: float top-1 vs labels {top1_accuracy(reference, data.labels) * n:.0f}/{n}; compiled int8 "
          f"{top1_accuracy(compiled, data.labels) * n:.0f}/{n}, top-1 agreement with float {top1_agreement(reference, compiled) * n:.0f}/{n}, "
          f"logits SQNR vs float {sqnr_db(reference, compiled):.2f} dB")
    print(f"exactness: the {args.target} build equals the interpreter bit for bit on {exact}/{n} images")
    threads = torch.get_num_threads()
    used = getattr(cm.runtime, "threads", 1)
    torch.set_num_threads(used)  # the same thread count for both
    x = data.images[:1]
    with torch.no_grad():
        t_torch = median_ms(model, x, args.runs)
    t_cm = median_ms(cm, x, args.runs)
    torch.set_num_threads(threads)
    print(f"speed (batch 1, {used} thread(s) each, median of {args.runs}): compiled int8 {t_cm:.2f} ms, PyTorch float "
          f"{t_torch:.2f} ms: {t_cm / t_torch:.2f}x (bench/host_speed.py adds ONNX Runtime); compile took "
          + ", ".join(f"{k} {v:.0f} s" for k, v in cm.timings.items()))


if __name__ == "__main__":
    main()
