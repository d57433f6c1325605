"""Per-layer speed of the exact int8 x86 kernels (targets/kernels/x86.py) against TVM's default
build of the same fused op, for every distinct conv2d / linear layer of EfficientNet-Lite0
(batch 1), and the whole-network total (per-layer times weighted by how often each shape
occurs), optionally next to ONNX Runtime's int8 EfficientNet-Lite0 measured in the same run.

    .venv/bin/python bench/x86_kernels.py                 # 1 thread, ours vs TVM default
    .venv/bin/python bench/x86_kernels.py --ort           # + ORT int8 whole network, interleaved
    .venv/bin/python bench/x86_kernels.py --no-default    # ours only (fast)
    .venv/bin/python bench/x86_kernels.py --threads 2
    .venv/bin/python bench/x86_kernels.py --real          # the model's own weights and requantize
                                                          # parameters (quantizes it first: slow)
    .venv/bin/python bench/x86_kernels.py --sweep         # GEMM tilings per pointwise layer
    .venv/bin/python bench/x86_kernels.py --no-default --u8s8   # pointwise with the exact vpmaddubsw kernel

Layers. ``LAYERS`` was derived once by quantizing EfficientNet-Lite0
(``qcompiler.quantize(models.efficientnet_lite0(), models.imagenet_samples().images[:1])``)
and walking ``qm.program`` for ``qcompiler.conv2d`` / ``qcompiler.linear`` nodes (padding is an
explicit pad op before each conv in that program, hence padding 0 everywhere); ``--real``
re-derives it and uses the real weights, zero points and multipliers. By default the
operands are synthetic with the same statistics as the real ones: int8 weights in
[−127, 127], shifts 33–45, lo/hi = 0/255, nonzero zero points.

Timing. Every function is a compiled TVM module timed by its C++ time evaluator (one call
= ``--calls`` back-to-back runs). All (layer, implementation) pairs are visited in
round-robin order, ``--rounds`` times, so machine noise hits them alike; the table shows
the median over rounds (and, for ours, the minimum). The TVM default build is the same
Relax graph targets/lower.py emits (x − z in int16, conv2d → int32, then the int64
requantize), compiled with ``tvm.compile`` and its default pipelines. Every build is
checked bit-exact against the op references (``qcompiler.ops``) once.

Threads: TVM's runtime reads TVM_NUM_THREADS when it starts its thread pool, so the
script sets it (``--threads``) before importing TVM.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

# (kind, x shape, w shape, stride, groups, count in the network). kind: "conv" | "linear".
LAYERS = [
    ("conv", (1, 3, 225, 225), (32, 3, 3, 3), (2, 2), 1, 1),
    ("conv", (1, 32, 114, 114), (32, 1, 3, 3), (1, 1), 32, 1),
    ("conv", (1, 32, 112, 112), (16, 32, 1, 1), (1, 1), 1, 1),
    ("conv", (1, 16, 112, 112), (96, 16, 1, 1), (1, 1), 1, 1),
    ("conv", (1, 96, 113, 113), (96, 1, 3, 3), (2, 2), 96, 1),
    ("conv", (1, 96, 56, 56), (24, 96, 1, 1), (1, 1), 1, 1),
    ("conv", (1, 24, 56, 56), (144, 24, 1, 1), (1, 1), 1, 2),
    ("conv", (1, 144, 58, 58), (144, 1, 3, 3), (1, 1), 144, 1),
    ("conv", (1, 144, 56, 56), (24, 144, 1, 1), (1, 1), 1, 1),
    ("conv", (1, 144, 59, 59), (144, 1, 5, 5), (2, 2), 144, 1),
    ("conv", (1, 144, 28, 28), (40, 144, 1, 1), (1, 1), 1, 1),
    ("conv", (1, 40, 28, 28), (240, 40, 1, 1), (1, 1), 1, 2),
    ("conv", (1, 240, 32, 32), (240, 1, 5, 5), (1, 1), 240, 1),
    ("conv", (1, 240, 28, 28), (40, 240, 1, 1), (1, 1), 1, 1),
    ("conv", (1, 240, 29, 29), (240, 1, 3, 3), (2, 2), 240, 1),
    ("conv", (1, 240, 14, 14), (80, 240, 1, 1), (1, 1), 1, 1),
    ("conv", (1, 80, 14, 14), (480, 80, 1, 1), (1, 1), 1, 3),
    ("conv", (1, 480, 16, 16), (480, 1, 3, 3), (1, 1), 480, 2),
    ("conv", (1, 480, 14, 14), (80, 480, 1, 1), (1, 1), 1, 2),
    ("conv", (1, 480, 18, 18), (480, 1, 5, 5), (1, 1), 480, 1),
    ("conv", (1, 480, 14, 14), (112, 480, 1, 1), (1, 1), 1, 1),
    ("conv", (1, 112, 14, 14), (672, 112, 1, 1), (1, 1), 1, 3),
    ("conv", (1, 672, 18, 18), (672, 1, 5, 5), (1, 1), 672, 2),
    ("conv", (1, 672, 14, 14), (112, 672, 1, 1), (1, 1), 1, 2),
    ("conv", (1, 672, 17, 17), (672, 1, 5, 5), (2, 2), 672, 1),
    ("conv", (1, 672, 7, 7), (192, 672, 1, 1), (1, 1), 1, 1),
    ("conv", (1, 192, 7, 7), (1152, 192, 1, 1), (1, 1), 1, 4),
    ("conv", (1, 1152, 11, 11), (1152, 1, 5, 5), (1, 1), 1152, 3),
    ("conv", (1, 1152, 7, 7), (192, 1152, 1, 1), (1, 1), 1, 3),
    ("conv", (1, 1152, 9, 9), (1152, 1, 3, 3), (1, 1), 1152, 1),
    ("conv", (1, 1152, 7, 7), (320, 1152, 1, 1), (1, 1), 1, 1),
    ("conv", (1, 320, 7, 7), (1280, 320, 1, 1), (1, 1), 1, 1),
    ("linear", (1, 1280), (1000, 1280), None, 1, 1),
]

ORT_INT8_MS_QUIET = 8.5  # ORT int8 EfficientNet-Lite0, 1 thread, batch 1, on a quiet machine


@dataclass
class Layer:
    kind: str
    x_shape: tuple
    w_shape: tuple
    stride: tuple | None
    groups: int
    count: int
    operands: dict = field(default_factory=dict)  # x, w, bias, x_zp, mult, shift, out_zp, lo, hi

    @property
    def out_shape(self) -> tuple:
        if self.kind == "linear":
            return self.x_shape[:-1] + (self.w_shape[0],)
        n, _, h, w = self.x_shape
        o, _, kh, kw = self.w_shape
        sh, sw = self.stride
        return (n, o, (h - kh) // sh + 1, (w - kw) // sw + 1)

    @property
    def macs(self) -> int:
        if self.kind == "linear":
            return int(np.prod(self.out_shape)) * self.x_shape[-1]
        return int(np.prod(self.out_shape)) * int(np.prod(self.w_shape[1:]))

    @property
    def label(self) -> str:
        if self.kind == "linear":
            return f"linear {self.x_shape[-1]}->{self.w_shape[0]}"
        _, c, h, w = self.x_shape
        o, cg, kh, kw = self.w_shape
        what = "dw" if self.groups == c and cg == 1 else ("pw" if kh == kw == 1 else "conv")
        return f"{what} {kh}x{kw}/{self.stride[0]} {c}->{o} @{h}x{w}"

    def reference(self) -> np.ndarray:
        from qcompiler.ops import conv2d as conv2d_op, linear as linear_op

        a = self.operands
        if self.kind == "linear":
            return linear_op.reference(a["x"], a["w"], a["bias"], a["x_zp"], a["mult"], a["shift"], a["out_zp"], a["lo"],
                                       a["hi"])
        return conv2d_op.reference(a["x"], a["w"], a["bias"], a["x_zp"], self.stride, (0, 0), (1, 1), self.groups,
                                   a["mult"], a["shift"], a["out_zp"], a["lo"], a["hi"])


def synthetic_operands(layer: Layer, rng: np.random.Generator) -> dict:
    from qcompiler.fixed_point import quantize_multipliers

    o = layer.w_shape[0]
    k = int(np.prod(layer.w_shape[1:]))
    w = np.clip(np.round(rng.normal(0, 40, layer.w_shape)), -127, 127).astype(np.int8)
    w.reshape(o, -1)[:, 0] = 127  # per-channel weight scales: every channel reaches ±127
    x = rng.integers(0, 256, layer.x_shape).astype(np.uint8)
    real = rng.uniform(0.5, 2.0, o) * 2.0 ** -rng.uniform(2, 12, o) / np.sqrt(k)
    mult, shift = quantize_multipliers(real)
    return dict(x=x, w=w, bias=rng.integers(-20000, 20000, o).astype(np.int64), x_zp=int(rng.integers(0, 200)),
                mult=mult, shift=shift, out_zp=int(rng.integers(0, 200)), lo=np.zeros(o, np.int64),
                hi=np.full(o, 255, np.int64))


def real_layers() -> list[Layer]:
    """The conv2d / linear layers of the quantized EfficientNet-Lite0, with their operands
    (x: the layer's input on the first sample image), deduplicated by shape (first one)."""
    import qcompiler
    from qcompiler import models
    from qcompiler.graph import get_tensor
    from qcompiler.interpreter import interpret

    images = models.imagenet_samples().images[:1]
    qm = qcompiler.quantize(models.efficientnet_lite0(), images)
    prog = qm.program
    record: dict = {}
    interpret(prog, images, record=record)

    def value(a):
        if hasattr(a, "op") and a.op == "get_attr":
            a = get_tensor(prog, a.target)
        return a.detach().cpu().numpy() if hasattr(a, "detach") else a

    layers: dict[tuple, Layer] = {}
    for node in prog.graph.nodes:
        name = str(node.target)
        if node.op != "call_function" or not ("qcompiler.conv2d" in name or "qcompiler.linear" in name):
            continue
        args = [value(a) for a in node.args]
        x = np.asarray(record[node.args[0].name])
        if "conv2d" in name:
            _, w, bias, x_zp, stride, padding, dilation, groups, mult, shift, out_zp, lo, hi, _ = args
            assert tuple(padding) == (0, 0) and tuple(dilation) == (1, 1)
            layer = Layer("conv", x.shape, np.asarray(w).shape, tuple(stride), int(groups), 1)
        else:
            _, w, bias, x_zp, mult, shift, out_zp, lo, hi, _ = args
            layer = Layer("linear", x.shape, np.asarray(w).shape, None, 1, 1)
        key = (layer.kind, layer.x_shape, layer.w_shape, layer.stride, layer.groups)
        if key in layers:
            layers[key].count += 1
            continue
        layer.operands = dict(x=x, w=np.asarray(w).astype(np.int8), bias=np.asarray(bias, np.int64), x_zp=int(x_zp),
                              mult=np.asarray(mult, np.int64), shift=np.asarray(shift, np.int64), out_zp=int(out_zp),
                              lo=np.asarray(lo, np.int64), hi=np.asarray(hi, np.int64))
        layers[key] = layer
    return list(layers.values())


# ------------------------------------------------------------------ builds


@dataclass
class Built:
    name: str
    timer: object  # args -> seconds per call
    args: list
    ok: bool
    info: dict = field(default_factory=dict)
    times: list = field(default_factory=list)


def build_ours(layer: Layer, target, calls: int, plan=None, threads: int = 1, u8s8: bool = False) -> Built:
    import tvm

    from qcompiler.targets.kernels import x86 as K

    a = layer.operands
    if layer.kind == "linear":
        func, consts = K.linear_requant_primfunc(layer.x_shape, "uint8", a["w"], a["bias"], a["x_zp"], a["mult"],
                                                 a["shift"], a["out_zp"], a["lo"], a["hi"], "uint8", target)
    else:
        func, consts = K.conv2d_requant_primfunc(layer.x_shape, "uint8", a["w"], a["bias"], a["x_zp"], layer.stride,
                                                 (0, 0), (1, 1), layer.groups, a["mult"], a["shift"], a["out_zp"],
                                                 a["lo"], a["hi"], "uint8", target, plan=plan, threads=threads,
                                                 u8s8=u8s8)
    name = str(func.attrs["global_symbol"])
    ex = tvm.compile(func, target)
    out = tvm.runtime.tensor(np.zeros(layer.out_shape, np.uint8))
    args = [tvm.runtime.tensor(a["x"])] + [tvm.runtime.tensor(c) for c in consts] + [out]
    ex(*args)
    ok = np.array_equal(out.numpy(), layer.reference())
    ev = ex.mod.time_evaluator(name, tvm.cpu(), number=calls, repeat=1)
    return Built("ours", lambda *xs: ev(*xs).mean, args, ok, K.kernel_info(func))


def default_module(layer: Layer):
    """The Relax graph targets/lower.py emits for this op, as an IRModule."""
    from tvm import relax

    R = relax.op
    a = layer.operands
    o = layer.w_shape[0]
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(layer.x_shape, "uint8"))

    def chan(v, nd, axis, dtype="int64"):
        arr = np.asarray(v).astype(dtype)
        shape = [1] * nd
        shape[axis] = -1
        return relax.const(arr.reshape(shape), dtype)

    with bb.function("main", [x]):
        with bb.dataflow():
            xc = bb.emit(R.astype(x, "int16"))
            if a["x_zp"]:
                xc = bb.emit(R.subtract(xc, relax.const(np.int16(a["x_zp"]), "int16")))
            if layer.kind == "linear":
                wt = relax.const(np.ascontiguousarray(a["w"].T).astype(np.int16), "int16")
                acc = bb.emit(R.matmul(xc, wt, out_dtype="int32"))
                nd, axis = 2, 1
            else:
                acc = bb.emit(R.nn.conv2d(xc, relax.const(a["w"], "int8"), strides=list(layer.stride), padding=[0, 0, 0, 0],
                                          groups=layer.groups, out_dtype="int32"))
                nd, axis = 4, 1
            acc = bb.emit(R.astype(acc, "int64"))
            acc = bb.emit(R.add(acc, chan(a["bias"], nd, axis)))
            acc = bb.emit(R.multiply(acc, chan(a["mult"], nd, axis)))
            s = np.asarray(a["shift"], np.int64)
            half = np.where(s > 0, np.left_shift(np.int64(1), np.maximum(s - 1, 0)), 0)
            acc = bb.emit(R.add(acc, chan(half, nd, axis)))
            acc = bb.emit(R.right_shift(acc, chan(s, nd, axis)))
            if a["out_zp"]:
                acc = bb.emit(R.add(acc, relax.const(np.int64(a["out_zp"]), "int64")))
            acc = bb.emit(R.maximum(acc, chan(a["lo"], nd, axis)))
            acc = bb.emit(R.minimum(acc, chan(a["hi"], nd, axis)))
            y = bb.emit_output(R.astype(acc, "uint8"))
        bb.emit_func_output(y)
    return bb.get()


def build_default(layer: Layer, target, calls: int) -> Built:
    import tvm
    from tvm import relax

    ex = tvm.compile(default_module(layer), target)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    x = tvm.runtime.tensor(layer.operands["x"])
    ok = np.array_equal(vm["main"](x).numpy(), layer.reference())
    ev = vm.time_evaluator("main", tvm.cpu(), number=calls, repeat=1)
    return Built("default", lambda *xs: ev(*xs).mean, [x], ok)


def ort_session(threads: int):
    import onnxruntime as ort

    paths = sorted(glob.glob(str(ROOT / "bench" / ".cache" / "onnx" / "*" / "model.int8.*.onnx")))
    if not paths:
        raise SystemExit("no cached ORT int8 model: run bench/host_speed.py once (it exports and quantizes it)")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(paths[0], options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)

    def run(calls: int) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            session.run(None, {name: x})
        return (time.perf_counter() - start) / calls

    return run, paths[0]


# ------------------------------------------------------------------ main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=15, help="round-robin rounds (default 15)")
    p.add_argument("--calls", type=int, default=10, help="calls per timing of our kernels (default 10)")
    p.add_argument("--default-rounds", type=int, default=3, help="rounds for the (slow) TVM default builds")
    p.add_argument("--no-default", action="store_true", help="skip TVM's default builds")
    p.add_argument("--ort", action="store_true", help="also time ORT int8 EfficientNet-Lite0 (whole network)")
    p.add_argument("--real", action="store_true", help="use the quantized model's own layers and operands")
    p.add_argument("--sweep", action="store_true", help="time GEMM tilings for every pointwise layer")
    p.add_argument("--only", default="", help="comma-separated substrings of layer labels to keep")
    p.add_argument("--u8s8", action="store_true", help="pointwise layers with the opt-in vpmaddubsw kernel (targets/kernels/x86_u8s8.py)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    sys.path.insert(0, str(ROOT))
    import tvm

    from qcompiler.targets.host import host_target

    target = host_target()
    rng = np.random.default_rng(0)
    if args.real:
        layers = real_layers()
    else:
        layers = [Layer(*row) for row in LAYERS]
        for layer in layers:
            layer.operands = synthetic_operands(layer, rng)
    if args.only:
        keys = args.only.split(",")
        layers = [la for la in layers if any(k in la.label for k in keys)]
    if args.sweep:
        return sweep(layers, target, args)

    print(f"target {target}, TVM threads {args.threads}, {len(layers)} distinct layers, building...", flush=True)
    ours, default = [], []
    start = time.perf_counter()
    for layer in layers:
        ours.append(build_ours(layer, target, args.calls, threads=args.threads, u8s8=args.u8s8))
        default.append(None if args.no_default else build_default(layer, target, 1))
    print(f"built in {time.perf_counter() - start:.0f} s", flush=True)
    ort = ort_session(args.threads) if args.ort else None
    ort_times = []
    for r in range(args.rounds):
        order = list(range(len(layers)))
        k = r % len(order)
        for i in order[k:] + order[:k]:
            b = ours[i]
            b.times.append(b.timer(*b.args))
            if default[i] is not None and r < args.default_rounds:
                d = default[i]
                d.times.append(d.timer(*d.args))
        if ort is not None:
            ort_times.append(ort[0](3))

    head = f"{'layer':34s} {'x':>3s} {'MMAC':>7s} {'default ms':>10s} {'ours ms':>8s} {'min':>7s} {'GMAC/s':>6s} {'speedup':>7s}  kernel"
    print(head)
    print("-" * len(head))
    tot_ours = tot_min = tot_def = 0.0
    tot_macs = 0
    bykind: dict[str, float] = {}
    all_ok = True
    for layer, b, d in zip(layers, ours, default):
        med = float(np.median(b.times)) * 1e3
        mn = float(np.min(b.times)) * 1e3
        dm = float(np.median(d.times)) * 1e3 if d is not None else float("nan")
        tot_ours += med * layer.count
        tot_min += mn * layer.count
        tot_def += dm * layer.count
        tot_macs += layer.macs * layer.count
        kind = layer.label.split()[0]
        bykind[kind] = bykind.get(kind, 0.0) + med * layer.count
        ok = b.ok and (d is None or d.ok)
        all_ok &= ok
        info = b.info
        kern = info.get("kind", "?") + "".join(f" {k}={info[k]}" for k in ("layout", "mo", "np", "nvec", "rows", "vo") if k in info)
        print(f"{layer.label:34s} {layer.count:3d} {layer.macs / 1e6:7.2f} {dm:10.3f} {med:8.3f} {mn:7.3f} "
              f"{layer.macs / med / 1e6:6.1f} {dm / med:7.1f}  {kern}{'' if ok else '  NOT EXACT'}")
    print("-" * len(head))
    print(f"{'network total (weighted by count)':34s} {'':3s} {tot_macs / 1e6:7.1f} {tot_def:10.2f} {tot_ours:8.2f} "
          f"{tot_min:7.2f} {tot_macs / tot_ours / 1e6:6.1f} {tot_def / tot_ours:7.1f}")
    print("by kind (ms): " + ", ".join(f"{k} {v:.2f}" for k, v in bykind.items()))
    print("bit-exact: " + ("all builds equal the op references (qcompiler.ops)" if all_ok else "SOME BUILDS DIFFER"))
    if ort is not None:
        ort_ms = float(np.median(ort_times)) * 1e3
        print(f"ORT int8 EfficientNet-Lite0 (whole network, all ops), same run: median {ort_ms:.2f} ms "
              f"(min {np.min(ort_times) * 1e3:.2f}); our conv/linear total / ORT = {tot_ours / ort_ms:.2f}")
    else:
        print(f"ORT int8 EfficientNet-Lite0 (whole network, quiet machine): about {ORT_INT8_MS_QUIET} ms; "
              f"our conv/linear total / that = {tot_ours / ORT_INT8_MS_QUIET:.2f}")


def sweep(layers, target, args) -> None:
    from qcompiler.targets.kernels import x86 as K

    configs = [(1, 8), (1, 6), (2, 4), (2, 5), (4, 2), (6, 2), (3, 3)]
    for layer in layers:
        if "pw" not in layer.label:
            continue
        builds = [(None, build_ours(layer, target, args.calls))]
        builds += [(c, build_ours(layer, target, args.calls, plan=K.GemmPlan(*c))) for c in configs]
        for _ in range(args.rounds):
            for _, b in builds:
                b.times.append(b.timer(*b.args))
        rates = [(c, layer.macs / np.min(b.times) / 1e9) for c, b in builds]
        best = max(rates[1:], key=lambda t: t[1])
        print(f"{layer.label:34s} auto {rates[0][1]:5.1f}  " + "  ".join(f"{c[0]}x{c[1]} {g:5.1f}" for c, g in rates[1:])
              + f"   best {best[0]}")


if __name__ == "__main__":
    main()
