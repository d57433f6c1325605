"""`make demo`: capture EfficientNet-Lite0 (pretrained), run the float passes in verify mode,
print the pass report and what they did to accuracy and to 8-bit weight quantization.

    python -m qcompiler.demo
"""
from __future__ import annotations

import time

import torch

from qcompiler.graph import clone_graph

import qcompiler
from qcompiler.metrics import sqnr_db, top1_accuracy, top1_agreement
from qcompiler.models import efficientnet_lite0, imagenet_samples
from qcompiler.pass_manager import output_error
from qcompiler.weight_only import fake_quantize_weights


def main() -> None:
    model = efficientnet_lite0()
    data = imagenet_samples()
    print("EfficientNet-Lite0 (pretrained), 20 ImageNet images from the foolbox wheel\n")
    start = time.perf_counter()
    gm = qcompiler.capture(model, data.images[:1])
    print(f"captured with torch.export in {time.perf_counter() - start:.1f} s: "
          f"{sum(1 for n in gm.graph.nodes if n.op == 'call_function')} ATen ops\n")
    with torch.no_grad():
        reference = model(data.images)

    folded_only = qcompiler.PassManager(["fold_bn"]).run(clone_graph(gm)).gm
    result = qcompiler.PassManager(qcompiler.FLOAT_PASSES, verify=True).run(gm, (data.images[:2],))
    print(result.report)

    with torch.no_grad():
        out = result.gm(data.images)
        w8_before = fake_quantize_weights(folded_only, 8)(data.images)
        w8_after = fake_quantize_weights(result.gm, 8)(data.images)
    max_abs, rel = output_error([reference], [out])
    print(f"float top-1 vs labels: {top1_accuracy(reference, data.labels) * 20:.0f}/20")
    print(f"after fold_bn + equalize: logits max abs error {max_abs:.2e} (relative {rel:.1e}), "
          f"top-1 agreement {top1_agreement(reference, out) * 20:.0f}/20")
    print(f"8-bit per-tensor weights (float activations), logits SQNR vs float: "
          f"{sqnr_db(reference, w8_before):.1f} dB after fold_bn alone -> {sqnr_db(reference, w8_after):.1f} dB after equalize")


if __name__ == "__main__":
    main()
