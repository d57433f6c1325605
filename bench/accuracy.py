"""Accuracy of quantized models, simulation and integer program, against float.

    .venv/bin/python bench/accuracy.py              # EfficientNet-Lite0 and Fashion-MNIST
    .venv/bin/python bench/accuracy.py --only lite0 --adaround-iterations 500
    .venv/bin/python bench/accuracy.py --only lite0 --configs W4A8 "mse + AdaRound"

EfficientNet-Lite0: calibrated on flips and crops of the 20 foolbox ImageNet images,
evaluated on the 20 originals. Fashion-MNIST: the bundled FashionMobileNet, calibrated on
512 training images, evaluated on all 10,000 test images. Prints markdown tables.
"""
from __future__ import annotations

import argparse
import time

import torch

import qcompiler
from qcompiler.agreement import compare_ops
from qcompiler.metrics import sqnr_db, top1_accuracy, top1_agreement
from qcompiler.passes import Adaround, BiasCorrection


def batches(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [x[i:i + size] for i in range(0, len(x), size)]


def skipped(args, name: str, config: dict) -> bool:
    """Whether --skip-adaround or --configs leave this configuration out."""
    if args.skip_adaround and any(isinstance(p, Adaround) for p in config.get("ptq", [])):
        return True
    return args.configs is not None and not any(text in name for text in args.configs)


def run_config(model, example, calibration, config: dict):
    start = time.perf_counter()
    qm = qcompiler.quantize(model, example, progress=False, **config)
    return qm, time.perf_counter() - start


def lite0(args) -> None:
    from qcompiler.models import efficientnet_lite0, imagenet_calibration_set, imagenet_samples

    model = efficientnet_lite0()
    data = imagenet_samples()
    calibration = batches(imagenet_calibration_set(crops_per_image=3), 10)
    with torch.no_grad():
        ref = model(data.images)
    n = len(data.labels)
    print(f"\n## EfficientNet-Lite0, {n} ImageNet images (calibration: {sum(len(b) for b in calibration)} flips/crops)\n")
    print(f"float: top-1 vs labels {top1_accuracy(ref, data.labels) * n:.0f}/{n}\n")
    ada = lambda: Adaround(iterations=args.adaround_iterations, max_batches=4, progress=False)
    configs = [  # ptq=[]: no PTQ pass (the default recipe would add bias correction)
        ("W8A8 default call (standard recipe)", dict(bits=8)),
        ("W8A8 minmax", dict(bits=8, method="minmax", ptq=[])),
        ("W8A8 mse", dict(bits=8, method="mse", ptq=[])),
        ("W8A8 minmax + CLE", dict(bits=8, method="minmax", passes=["fold_bn", "equalize"], ptq=[])),
        ("W8A8 mse + bias corr.", dict(bits=8, method="mse", ptq=[BiasCorrection()])),
        ("W8A8 mse + CLE + bias corr.", dict(bits=8, method="mse", passes=["fold_bn", "equalize"], ptq=[BiasCorrection()])),
        ("W8A8 mse + AdaRound", dict(bits=8, method="mse", ptq=[ada()])),
        ("W4A8 mse", dict(bits=4, method="mse", ptq=[])),
        ("W4A8 mse + bias corr.", dict(bits=4, method="mse", ptq=[BiasCorrection()])),
        ("W4A8 mse + AdaRound", dict(bits=4, method="mse", ptq=[ada()])),
    ]
    print("| configuration | sim: top-1 vs labels | sim: agree w/ float | sim: SQNR (dB) | int: top-1 vs labels | int: agree w/ float "
          "| int: SQNR (dB) | per-op off by one | quantize (s) | interpret 20 (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, config in configs:
        if skipped(args, name, config):
            continue
        qm, seconds = run_config(model, data.images[:1], calibration, dict(config, calibration=calibration))
        sim = qm.simulate(data.images)
        start = time.perf_counter()
        integer = qm.interpret(data.images)
        t_int = time.perf_counter() - start
        rows = compare_ops(qm.graph, qm.program, (data.images[:2],))
        off = sum(r.off_by_one for r in rows) / sum(r.elements for r in rows)
        worst = max(r.max_diff for r in rows)
        print(f"| {name} | {top1_accuracy(sim, data.labels) * n:.0f}/{n} | {top1_agreement(ref, sim) * n:.0f}/{n} | {sqnr_db(ref, sim):.2f} "
              f"| {top1_accuracy(integer, data.labels) * n:.0f}/{n} | {top1_agreement(ref, integer) * n:.0f}/{n} | {sqnr_db(ref, integer):.2f} "
              f"| {off:.3%} (max {worst}) | {seconds:.0f} | {t_int:.1f} |", flush=True)


def fashion(args) -> None:
    from qcompiler.models import fashion_mnist, fashion_mobilenet

    model = fashion_mobilenet()
    x_train, _ = fashion_mnist("train")
    x_test, y_test = fashion_mnist("test")
    calibration = batches(x_train[torch.randperm(len(x_train), generator=torch.Generator().manual_seed(0))[:512]], 64)
    with torch.no_grad():
        ref = torch.cat([model(b) for b in batches(x_test, 1000)])
    print(f"\n## Fashion-MNIST FashionMobileNet, all {len(y_test)} test images (calibration: 512 training images)\n")
    print("| configuration | sim: test accuracy | int: test accuracy | int: agree w/ float | int: logits SQNR (dB) | quantize (s) |")
    print("|---|---|---|---|---|---|")
    print(f"| float | {top1_accuracy(ref, y_test):.2%} | | | | |")
    configs = [("W8A8 default call", dict(bits=8)), ("W8A8 minmax", dict(bits=8, method="minmax", ptq=[])),
               ("W8A8 mse", dict(bits=8, method="mse", ptq=[])), ("W4A8 mse", dict(bits=4, method="mse", ptq=[])),
               ("W4A8 mse + AdaRound", dict(bits=4, method="mse", ptq=[Adaround(iterations=args.adaround_iterations, progress=False)]))]
    for name, config in configs:
        if skipped(args, name, config):
            continue
        qm, seconds = run_config(model, x_test[:1], calibration, dict(config, calibration=calibration))
        sim = torch.cat([qm.simulate(b) for b in batches(x_test, 1000)])
        integer = torch.cat([qm.interpret(b) for b in batches(x_test, 1000)])
        print(f"| {name} | {top1_accuracy(sim, y_test):.2%} | {top1_accuracy(integer, y_test):.2%} | {top1_agreement(ref, integer):.2%} "
              f"| {sqnr_db(ref, integer):.2f} | {seconds:.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=["lite0", "fashion"])
    parser.add_argument("--adaround-iterations", type=int, default=300)
    parser.add_argument("--skip-adaround", action="store_true")
    parser.add_argument("--configs", nargs="*", default=None, metavar="TEXT",
                        help="run only the configurations whose name contains one of these texts, e.g. --configs W4A8 AdaRound")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.only in (None, "lite0"):
        lite0(args)
    if args.only in (None, "fashion"):
        fashion(args)


if __name__ == "__main__":
    main()
