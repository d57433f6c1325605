"""Instructions per inference on aarch64, counted: EfficientNet-Lite0 and the Fashion-MNIST
model, int8, batch 1, one thread, each run under ``qemu-aarch64 -cpu cortex-a76`` and
counted by our QEMU plugin (targets/arm/count_plugin.c) between marker instructions around
the inference call only, by class (sdot/smmla, other SIMD, loads/stores, scalar). Counts
are exactly reproducible, so one run of each suffices on this noisy machine.

    .venv/bin/python bench/arm_speed.py                  # both models, every engine
    .venv/bin/python bench/arm_speed.py --models lite0 --layers   # + qcompiler's per-layer table
    .venv/bin/python bench/arm_speed.py --no-tvm --no-ort          # qcompiler and the floor only

Rows:
- qcompiler arm_cpu: the arm_cpu scheme (int8 activations), our sdot kernels;
- qcompiler arm_cpu, uint8 activations: the host scheme's program on the same target;
- qcompiler arm_cpu_i8mm: the i8mm variant (smmla GEMMs, 32 MACs each), run under
  ``qemu-aarch64 -cpu max`` (qemu models no i8mm Cortex); its floor would be lower, but
  the column compares every row to the sdot floor;
- TVM default build: the same integer program lowered generically and built by
  ``tvm.compile``'s default pipeline for the same aarch64 target (what a TVM user gets);
- ONNX Runtime aarch64: ORT's own aarch64 build (bench/ort_aarch64.py) running ORT's int8
  QDQ model of the same float model (bench/onnx_int8.py), 1 intra-op thread;
- floor: MACs / 16 (one sdot does 16 int8 multiply-adds).
The library size is the exported .so against the program's int8 weight bytes.
``--layers``: qcompiler's count per kernel (ours and TVM's fused elementwise kernels),
with its MACs and its ratio to its own floor.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import qcompiler  # noqa: E402
from qcompiler.compile_report import layer_rows  # noqa: E402
from qcompiler.interpreter import interpret  # noqa: E402
from qcompiler.scheme import arm_scheme, host_scheme  # noqa: E402
from qcompiler.targets.arm_cpu import arm_lowerings, build_arm  # noqa: E402
from qcompiler.targets.lower import lower  # noqa: E402


def lite0_setup():
    from qcompiler.models import efficientnet_lite0, imagenet_calibration_set, imagenet_samples

    data = imagenet_samples()
    calibration = list(imagenet_calibration_set(crops_per_image=1)[:8].split(4))
    return efficientnet_lite0(), data.images[:1], calibration


def fashion_setup():
    from qcompiler.models import fashion_mnist, fashion_mobilenet

    x_train, _ = fashion_mnist("train")
    x_test, _ = fashion_mnist("test")
    return fashion_mobilenet(), x_test[:1], [x_train[i:i + 64] for i in range(0, 256, 64)]


MODELS = {"lite0": ("EfficientNet-Lite0", lite0_setup), "fashion": ("Fashion-MNIST model", fashion_setup)}


def macs_of(program, x) -> int:
    record: dict = {}
    interpret(program, x, record=record)
    shapes = {k: tuple(np.shape(v)) for k, v in record.items()}
    return sum(r.macs for r in layer_rows(program, shapes))


def weight_bytes(program) -> int:
    """Bytes of the program's int8 conv/linear weights."""
    from qcompiler.compile_report import op_of
    from qcompiler.graph import get_tensor

    total = 0
    for node in program.graph.nodes:
        if node.op == "call_function" and op_of(node.target) in ("conv2d", "linear"):
            total += get_tensor(program, node.args[1]).numel()
    return total


def kernel_infos(mod) -> dict[str, dict]:
    """{Relax function name: kernel_info} of our kernels in a lowered module."""
    from qcompiler.targets.kernels.relax_call import kernel_info

    out = {}
    for gv, func in mod.functions.items():
        info = kernel_info(func) if hasattr(func, "attrs") and not hasattr(func, "ret_struct_info") else {}
        if info:
            out[gv.name_hint] = info
    return out


def qcompiler_row(model, x, calibration, scheme, layers: bool, variant: str = "arm_cpu"):
    qm = qcompiler.quantize(model, x, calibration=calibration, scheme=scheme, progress=False)
    mod = lower(qm.program, (x,), target_lowerings=arm_lowerings(variant))
    start = time.perf_counter()
    runtime = build_arm(mod, variant)
    build = time.perf_counter() - start
    counts = runtime.count(x)
    per_layer = runtime.count_by_function(x) if layers else None
    return qm, counts, runtime.library.stat().st_size, build, per_layer, kernel_infos(mod)


def tvm_default_row(qm, x):
    runtime = build_arm(lower(qm.program, (x,)), scheduled=False)
    return runtime.count(x), runtime.library.stat().st_size


def ort_row(model, x, calibration):
    from onnx_int8 import cached_onnx_models
    from ort_aarch64 import count_ort

    _, int8_path = cached_onnx_models(model, calibration[0][:1], calibration)
    _, counts = count_ort(str(int8_path), x.numpy())
    return counts


def fmt(n: float) -> str:
    return f"{n / 1e6:8.2f} M"


def print_layers(per_layer, infos: dict, total: int) -> None:
    print(f"\n{'kernel':<44} {'kind':<10} {'MMACs':>8} {'instr':>11} {'share':>6} {'/floor':>7} {'sdot':>9} {'simd':>9} "
          f"{'ld/st':>9} {'scalar':>9}")
    for name, c in per_layer:
        short = name.removeprefix("__tvm_ffi_")
        info = infos.get(short, {})
        macs = info.get("macs", 0)
        ratio = f"{c['total'] / (macs / 16):7.2f}" if macs else "       "
        print(f"{short[:44]:<44} {info.get('kind', ''):<10} {macs / 1e6:8.2f} {c['total']:>11,} {c['total'] / total:6.1%} "
              f"{ratio} {c['sdot']:>9,} {c['simd']:>9,} {c['loadstore']:>9,} {c['scalar']:>9,}")
    kinds: dict[str, list[int]] = {}
    for name, c in per_layer:
        kind = infos.get(name.removeprefix("__tvm_ffi_"), {}).get("kind", "other (generic kernels, runtime)")
        row = kinds.setdefault(kind, [0, 0])
        row[0] += c["total"]
        row[1] += infos.get(name.removeprefix("__tvm_ffi_"), {}).get("macs", 0)
    print(f"\n{'kind':<34} {'instr':>12} {'share':>6} {'MMACs':>8} {'/floor':>7}")
    for kind, (n, macs) in sorted(kinds.items(), key=lambda kv: -kv[1][0]):
        ratio = f"{n / (macs / 16):7.2f}" if macs else ""
        print(f"{kind:<34} {n:>12,} {n / total:6.1%} {macs / 1e6:8.2f} {ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--layers", action="store_true", help="qcompiler's count per kernel")
    parser.add_argument("--no-tvm", action="store_true", help="skip TVM's default build (slow to count)")
    parser.add_argument("--no-ort", action="store_true", help="skip ONNX Runtime aarch64")
    parser.add_argument("--no-uint8", action="store_true", help="skip the uint8-activation program")
    parser.add_argument("--no-i8mm", action="store_true", help="skip the i8mm (smmla) variant")
    args = parser.parse_args()
    torch.manual_seed(0)
    for key in args.models:
        title, setup = MODELS[key]
        model, x, calibration = setup()
        rows = []
        qm, counts, size, build, per_layer, infos = qcompiler_row(model, x, calibration, arm_scheme(), args.layers)
        macs = macs_of(qm.program, x)
        wbytes = weight_bytes(qm.program)
        floor = macs / 16
        rows.append(("qcompiler arm_cpu (int8 activations)", counts, size))
        if not args.no_uint8:
            _, c8, s8, *_ = qcompiler_row(model, x, calibration, host_scheme(), False)
            rows.append(("qcompiler arm_cpu, uint8 activations", c8, s8))
        if not args.no_i8mm:
            _, cm, sm, *_ = qcompiler_row(model, x, calibration, arm_scheme(), False, "arm_cpu_i8mm")
            rows.append(("qcompiler arm_cpu_i8mm (smmla; -cpu max)", cm, sm))
        if not args.no_tvm:
            rows.append(("TVM default build, same program", *tvm_default_row(qm, x)))
        if not args.no_ort:
            try:
                rows.append(("ONNX Runtime aarch64 (int8 QDQ)", ort_row(model, x, calibration), None))
            except Exception as exc:  # the table still prints; say why the row is missing
                print(f"ONNX Runtime aarch64: not counted: {type(exc).__name__}: {exc}")
        print(f"\n{title}: {macs / 1e6:.1f} M MACs, floor (MACs/16) {floor / 1e6:.2f} M instructions; "
              f"int8 weights {wbytes / 1024:.0f} KiB; qcompiler build {build:.0f} s")
        print(f"{'engine':<40} {'instructions':>12} {'/floor':>7} {'sdot+smmla':>10} {'simd':>10} {'ld/st':>10} {'scalar':>10} "
              f"{'library':>10}")
        for name, c, lib in rows:
            libtxt = f"{lib / 1024:7.0f} KiB" if lib else ""
            print(f"{name:<40} {fmt(c['total'])} {c['total'] / floor:7.2f} {fmt(c.get('sdot', 0) + c.get('smmla', 0))} "
                  f"{fmt(c.get('simd', 0))} {fmt(c.get('loadstore', 0))} {fmt(c.get('scalar', 0))} {libtxt:>10}")
        print(f"{'floor: MACs / 16':<40} {fmt(floor)} {1.0:7.2f}")
        if size:
            print(f"library / int8 weight bytes: {size / wbytes:.2f}")
        if per_layer:
            print_layers(per_layer, infos, counts["total"])


if __name__ == "__main__":
    main()
