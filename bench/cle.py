"""What cross-layer equalization buys on EfficientNet-Lite0: per-tensor symmetric 8-bit
weight-only fake quantization, before and after fold_bn + equalize, on the 20 ImageNet
images of the foolbox wheel. Prints markdown tables (the ones in docs/results.md).

    .venv/bin/python bench/cle.py
"""
from __future__ import annotations

import time

import torch

from qcompiler.graph import clone_graph

import qcompiler
from qcompiler.graph import layer_view, tensor_arg
from qcompiler.metrics import sqnr_db, top1_accuracy, top1_agreement
from qcompiler.models import efficientnet_lite0, imagenet_samples
from qcompiler.pass_manager import output_error
from qcompiler.passes import Equalize
from qcompiler.weight_only import channel_range_spread, fake_quantize_weights


def logits(gm, images):
    with torch.no_grad():
        return gm(images)


def layer_spreads(gm):
    return {n.name: (layer_view(gm, n).describe(), tuple(tensor_arg(gm, n, 1).shape), channel_range_spread(tensor_arg(gm, n, 1)))
            for n in gm.graph.nodes if layer_view(gm, n) is not None}


def main() -> None:
    torch.manual_seed(0)
    model = efficientnet_lite0()
    data = imagenet_samples()
    start = time.perf_counter()
    captured = qcompiler.capture(model, data.images[:1])
    print(f"capture: {time.perf_counter() - start:.1f} s")
    reference = logits(captured, data.images)

    graphs = {"captured (BN unfolded)": captured}
    graphs["fold_bn"] = qcompiler.PassManager(["fold_bn"]).run(clone_graph(captured)).gm
    graphs["fold_bn + CLE (no bias absorption)"] = qcompiler.PassManager(["fold_bn", Equalize(absorb_bias=False)]).run(clone_graph(captured)).gm
    result = qcompiler.PassManager(["fold_bn", "equalize"], verify=True).run(clone_graph(captured), (data.images[:4],))
    graphs["fold_bn + equalize (CLE + bias absorption)"] = result.gm
    print("\npass report (verify mode, 4 images):\n")
    print(result.report)

    print(f"\nfloat top-1 vs labels: {top1_accuracy(reference, data.labels) * 20:.0f}/20\n")
    print("| graph | float rel. error vs captured | W8 per-tensor: logits SQNR (dB) | top-1 agree w/ float | top-1 vs labels | W8 per-channel: SQNR (dB) | agree |")
    print("|---|---|---|---|---|---|---|")
    for name, gm in graphs.items():
        float_out = logits(gm, data.images)
        _, rel = output_error([reference], [float_out])
        q_tensor = logits(fake_quantize_weights(gm, 8, per_channel=False), data.images)
        q_channel = logits(fake_quantize_weights(gm, 8, per_channel=True), data.images)
        print(f"| {name} | {rel:.1e} | {sqnr_db(reference, q_tensor):.2f} | {top1_agreement(reference, q_tensor) * 20:.0f}/20 "
              f"| {top1_accuracy(q_tensor, data.labels) * 20:.0f}/20 | {sqnr_db(reference, q_channel):.2f} "
              f"| {top1_agreement(reference, q_channel) * 20:.0f}/20 |")

    before = layer_spreads(graphs["fold_bn"])
    after = layer_spreads(graphs["fold_bn + equalize (CLE + bias absorption)"])
    print("\nWeight-range spread per layer: max over output channels of max|w| / median over channels "
          "(1 = balanced; per-tensor quantization wastes the grid on the widest channel).\n")
    print("| layer | kind | weight shape | spread after fold_bn | after equalize |")
    print("|---|---|---|---|---|")
    for name, (kind, shape, spread) in before.items():
        print(f"| {name} | {kind} | {list(shape)} | {spread:.1f} | {after[name][2]:.1f} |")
    med = lambda xs: float(torch.tensor(xs).median())
    print(f"| **median** | | | {med([v[2] for v in before.values()]):.1f} | {med([v[2] for v in after.values()]):.1f} |")
    print(f"| **max** | | | {max(v[2] for v in before.values()):.1f} | {max(v[2] for v in after.values()):.1f} |")


if __name__ == "__main__":
    main()
