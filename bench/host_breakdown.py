"""Where the time of qcompiler's host build of EfficientNet-Lite0 goes, at 1 thread, by
kind of layer, next to ONNX Runtime int8's own profile of the same model; and how many
pointwise weight pairs the exact u8×s8 kernel (targets/kernels/x86_u8s8.py) can keep whole.

    .venv/bin/python bench/host_breakdown.py            # 15 profiled runs of ours, 50 of ORT
    .venv/bin/python bench/host_breakdown.py --u8s8     # pointwise layers with the u8×s8 kernel

Ours: ``HostRuntime.profile`` (per-kernel times through the VM's instrument hook), median
per kernel over the runs, kernels matched to layers as ``cm.report()`` does. ORT: the int8
QDQ model of bench/host_speed.py (cached by bench/onnx_int8.py), ``enable_profiling``,
median per node over the runs after 10 warm-up runs. The quantized program uses min-max
calibration (the structure, and so the kernels, are those of the demo's MSE + bias
correction program; only requantize constants differ).
"""
from __future__ import annotations

import argparse
import collections
import functools
import glob
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def kind_of(program, node, shapes) -> str:
    from qcompiler.graph import get_tensor

    if "linear" in str(node.target):
        return "linear"
    w = get_tensor(program, node.args[1])
    groups = shapes[node.args[0].name][1] // w.shape[1]
    return "depthwise" if groups > 1 else ("pointwise 1x1" if w.shape[2] == 1 else "stem 3x3 s2")


def ours(args) -> tuple[dict, float, float, object]:
    """{kind: [macs, ms, layers]}, other ms, total ms, the program."""
    import torch

    import qcompiler
    from qcompiler.compile_report import _attach_times, layer_rows
    from qcompiler.interpreter import interpret
    from qcompiler.models import efficientnet_lite0, imagenet_calibration_set, imagenet_samples
    from qcompiler.targets.kernels import x86 as x86_kernels
    from qcompiler.targets.host import compile_host

    if args.u8s8:
        x86_kernels.conv2d_requant_primfunc = functools.partial(x86_kernels.conv2d_requant_primfunc, u8s8=True)
    data = imagenet_samples()
    qm = qcompiler.quantize(efficientnet_lite0(), data.images[:1], bits=8, method="minmax",
                            calibration=imagenet_calibration_set(crops_per_image=1).split(10), progress=False)
    program, example = qm.program, qm.example_inputs
    runtime = compile_host(program, example, threads=1)
    x = example[0].numpy()
    for _ in range(5):
        runtime.run(x)
    record: dict = {}
    interpret(program, *example, record=record)
    shapes = {k: tuple(np.shape(v)) for k, v in record.items()}
    rows = layer_rows(program, shapes)
    runs = [runtime.profile(x) for _ in range(args.runs)]
    median = [(runs[0][i][0], float(np.median([r[i][1] for r in runs]))) for i in range(len(runs[0]))]
    other = _attach_times(rows, median)
    nodes = {n.name: n for n in program.graph.nodes}
    kinds: dict = collections.defaultdict(lambda: [0, 0.0, 0])
    for r in rows:
        if r.op in ("conv2d", "linear"):
            k = kinds[kind_of(program, nodes[r.node], shapes)]
            k[0] += r.macs
            k[1] += r.time_ms or 0.0
            k[2] += 1
    return kinds, other, sum(s for _, s in median) * 1e3, program


def ort(runs: int) -> tuple[dict, float]:
    """{kind: ms}, total ms of ORT int8's nodes (1 thread)."""
    import onnxruntime as ort_

    paths = sorted(glob.glob(str(ROOT / "bench" / ".cache" / "onnx" / "*" / "model.int8.*.onnx")))
    if not paths:
        raise SystemExit("no cached ORT int8 model: run bench/host_speed.py once (it exports and quantizes it)")
    options = ort_.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.execution_mode = ort_.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort_.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "ort")
    session = ort_.InferenceSession(paths[0], options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    for _ in range(10 + runs):
        session.run(None, {name: x})
    events = [e for e in json.load(open(session.end_profiling())) if e.get("cat") == "Node"
              and e["name"].endswith("_kernel_time")]
    times = collections.defaultdict(list)
    op = {}
    for e in events:
        times[e["name"]].append(e["dur"])
        op[e["name"]] = e["args"]["op_name"]
    kinds: dict = collections.defaultdict(float)
    for n, d in times.items():
        ms = float(np.median(d[10:])) / 1e3
        if op[n] == "QLinearConv":
            kinds["depthwise" if "depthwise" in n else ("stem 3x3 s2" if "stem" in n else "pointwise 1x1")] += ms
        elif op[n] == "QGemm":
            kinds["linear"] += ms
        else:
            kinds["other"] += ms
    return kinds, sum(kinds.values())


def safe_pairs(program) -> tuple[float, float]:
    """Shares of pointwise weight pairs that vpmaddubsw keeps whole (same-sign magnitudes
    ≤ 128), and of weight quads within that bound over all four (two int16 steps)."""
    from qcompiler.graph import get_tensor

    pairs = quads = safe2 = safe4 = 0
    for n in program.graph.nodes:
        if str(n.target) != "qcompiler.conv2d.default":
            continue
        w = get_tensor(program, n.args[1]).numpy().astype(np.int64)
        if w.shape[1] == 1 or w.shape[2] != 1:
            continue
        w = w.reshape(w.shape[0], -1)
        w = np.pad(w, ((0, 0), (0, -w.shape[1] % 4)))
        for size, count in ((2, "pairs"), (4, "quads")):
            g = w.reshape(w.shape[0], -1, size)
            ok = (np.maximum(g, 0).sum(-1) <= 128) & (np.maximum(-g, 0).sum(-1) <= 128)
            if size == 2:
                pairs, safe2 = pairs + ok.size, safe2 + int(ok.sum())
            else:
                quads, safe4 = quads + ok.size, safe4 + int(ok.sum())
    return safe2 / pairs, safe4 / quads


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=15, help="profiled runs of ours (ORT: 50)")
    p.add_argument("--u8s8", action="store_true", help="pointwise layers with the exact vpmaddubsw kernel")
    args = p.parse_args()
    os.environ["TVM_NUM_THREADS"] = "1"
    sys.path.insert(0, str(ROOT))
    kinds, other, total, program = ours(args)
    ort_kinds, ort_total = ort(50)
    all_macs = sum(k[0] for k in kinds.values())
    print(f"EfficientNet-Lite0, batch 1, 1 thread; pointwise kernel: {'u8s8 (vpmaddubsw)' if args.u8s8 else 'vpmaddwd'}; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'kind':14s} {'layers':>6s} {'MMAC':>7s} {'MAC %':>6s} {'ours ms':>8s} {'time %':>6s} {'GMAC/s':>7s} {'ORT ms':>7s}")
    for name, (macs, ms, n) in sorted(kinds.items(), key=lambda kv: -kv[1][1]):
        print(f"{name:14s} {n:6d} {macs / 1e6:7.1f} {macs / all_macs:6.1%} {ms:8.2f} {ms / total:6.1%} "
              f"{macs / ms / 1e6:7.1f} {ort_kinds.get(name, 0.0):7.2f}")
    print(f"{'other':14s} {'':6s} {'':7s} {'':6s} {other:8.2f} {other / total:6.1%} {'':7s} {ort_kinds.get('other', 0.0):7.2f}")
    print(f"{'total':14s} {'':6s} {all_macs / 1e6:7.1f} {'':6s} {total:8.2f} {'':6s} {'':7s} {ort_total:7.2f}")
    pairs, quads = safe_pairs(program)
    print(f"pointwise weights kept whole by vpmaddubsw: {pairs:.1%} of pairs; {quads:.1%} of quads (two int16 steps)")


if __name__ == "__main__":
    main()
