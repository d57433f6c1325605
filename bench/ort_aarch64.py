"""ONNX Runtime's official aarch64 build, run under ``qemu-aarch64 -cpu cortex-a76``: the
instructions it executes for one inference, counted by our QEMU plugin, to set beside
qcompiler's arm_cpu counts.

    bash scripts/setup-arm-ort.sh                      # once: build/arm/ort/ (about 55 MB fetched)
    .venv/bin/python bench/ort_aarch64.py              # EfficientNet-Lite0's int8 QDQ model
    .venv/bin/python bench/ort_aarch64.py --reduce-range   # ... with 7-bit weights
    .venv/bin/python bench/ort_aarch64.py model.onnx   # any single-input model, seeded random input

    outputs, counts = count_ort("model.int8.onnx", x)  # counts: total, sdot, smmla, simd, loadstore, scalar

The guest is Debian's arm64 CPython 3.11 with the aarch64 wheels of onnxruntime and numpy, in
build/arm/ort/ (made by scripts/setup-arm-ort.sh; nothing is fetched at run time). The session
has 1 intra-op and 1 inter-op thread, sequential execution and ORT's default graph
optimizations (ORT_ENABLE_ALL). After one warm-up run, the markers of build/arm/ort/libmarker.so
are executed through ctypes right around one ``sess.run``: the count covers that call with its
Python wrapper (about 15,000 instructions) and the ctypes calls (about 1,400). It is the same
from run to run of the same set-up: the guest's Python hashes with a fixed seed, reads
bytecode compiled at set-up and writes none, and sees a stopped CLOCK_REALTIME
(build/arm/ort/libfixedtime.so), since ORT's Run() otherwise flushes its run statistics on a
wall-clock schedule, which moved the count by a few hundred instructions. A counted run of
EfficientNet-Lite0 takes about 5 s. ORT_DISABLE_TELEMETRY=1 is set in the guest (and here for
the x86 reference): ORT 1.32 otherwise starts a telemetry uploader and writes to ~/.cache.
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from qcompiler.targets.arm_cpu import parse_counts

REPO = Path(__file__).resolve().parent.parent
ORT_DIR = REPO / "build" / "arm" / "ort"
PLUGIN = REPO / "build" / "arm" / "libcount.so"
QEMU_CPU = "cortex-a76"

# Run by the aarch64 interpreter: argv = site dir, marker library, model; the input comes as
# .npy on stdin, the outputs go as .npz to stdout (no temporary paths, which would vary).
_GUEST = """
import ctypes, io, sys
site, marker, model = sys.argv[1:4]
sys.path.insert(0, site)
import numpy as np
import onnxruntime as ort
so = ort.SessionOptions()
so.intra_op_num_threads = 1
so.inter_op_num_threads = 1
so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
so.log_severity_level = 3
sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
feed = {sess.get_inputs()[0].name: np.load(io.BytesIO(sys.stdin.buffer.read()))}
sess.run(None, feed)
lib = ctypes.CDLL(marker)
start, stop = lib.qc_count_start, lib.qc_count_stop
start()
outputs = sess.run(None, feed)
stop()
np.savez(sys.stdout.buffer, *outputs)
"""


class OrtAarch64Error(RuntimeError):
    """The aarch64 ONNX Runtime set-up is missing, or its run failed."""


def _require_tools() -> dict[str, Path]:
    """Paths of what a counted run needs; raises OrtAarch64Error naming what is missing."""
    paths = {"python": ORT_DIR / "root" / "usr" / "bin" / "python3.11", "site": ORT_DIR / "site",
             "marker": ORT_DIR / "libmarker.so", "fixedtime": ORT_DIR / "libfixedtime.so"}
    missing = [str(p) for p in (*paths.values(), paths["site"] / "onnxruntime") if not p.exists()]
    if shutil.which("qemu-aarch64") is None:
        missing.append("qemu-aarch64 (Debian package qemu-user)")
    if missing:
        raise OrtAarch64Error(f"aarch64 ONNX Runtime: missing {', '.join(missing)}: run scripts/setup-arm-ort.sh")
    if not PLUGIN.exists():
        raise OrtAarch64Error(f"the counting plugin {PLUGIN} is missing: run scripts/setup-arm.sh")
    return paths


def count_ort(model_path: str, x: np.ndarray) -> tuple[list[np.ndarray], dict[str, int]]:
    """Run the single-input ONNX model on ``x`` with ONNX Runtime aarch64 under qemu; return
    its outputs and the instructions of one inference call by class (total, sdot, smmla,
    simd, loadstore, scalar)."""
    tools = _require_tools()
    x_npy = io.BytesIO()
    np.save(x_npy, np.ascontiguousarray(x))
    command = ["qemu-aarch64", "-L", str(ORT_DIR / "root"), "-cpu", QEMU_CPU, "-plugin", str(PLUGIN), "-d", "plugin",
               "-E", f"LD_PRELOAD={tools['fixedtime']}", str(tools["python"]), "-B", "-s", "-S", "-c", _GUEST,
               str(tools["site"]), str(tools["marker"]), str(Path(model_path).resolve())]
    # a fixed environment (-B -s -S rather than -I, which would ignore PYTHONHASHSEED)
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0", "ORT_DISABLE_TELEMETRY": "1"}
    proc = subprocess.run(command, input=x_npy.getvalue(), capture_output=True, env=env, cwd="/")
    log = proc.stderr.decode(errors="replace")
    if proc.returncode != 0:
        signal = f" (signal {-proc.returncode})" if proc.returncode < 0 else ""
        raise OrtAarch64Error(f"the aarch64 ONNX Runtime run failed with exit code {proc.returncode}{signal}:\n"
                              f"{log.strip()[-3000:]}")
    with np.load(io.BytesIO(proc.stdout)) as npz:
        outputs = [npz[f"arr_{k}"] for k in range(len(npz.files))]
    return outputs, parse_counts(log, OrtAarch64Error)


def _lite0_int8(reduce_range: bool) -> tuple[Path, np.ndarray]:
    """EfficientNet-Lite0's int8 QDQ model (built and cached as bench/host_speed.py does) and
    the first foolbox ImageNet image."""
    sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]
    from onnx_int8 import cached_onnx_models
    from qcompiler.models import efficientnet_lite0, imagenet_calibration_set, imagenet_samples

    calibration = list(imagenet_calibration_set().split(10))
    _, int8 = cached_onnx_models(efficientnet_lite0(), calibration[0][:1], calibration, reduce_range=reduce_range)
    return int8, np.ascontiguousarray(imagenet_samples().images[:1].numpy())


def _random_input(model_path: Path) -> np.ndarray:
    """A seeded random input for the model's single (static-shape) input."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    (value,) = [i for i in graph.input if i.name not in inits]
    tensor_type = value.type.tensor_type
    shape = [d.dim_value or 1 for d in tensor_type.shape.dim]
    return np.random.default_rng(0).standard_normal(shape).astype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))


def _output_steps(model_path: Path) -> list[float | None]:
    """For each graph output made by a DequantizeLinear with a scalar scale, that scale (one
    quantization step of the output); None for the others."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(model_path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    steps: list[float | None] = []
    for out in graph.output:
        node = producer.get(out.name)
        scale = inits.get(node.input[1]) if node is not None and node.op_type == "DequantizeLinear" else None
        steps.append(float(scale) if scale is not None and scale.size == 1 else None)
    return steps


def _compare_with_host(model: Path, x: np.ndarray, outputs: list[np.ndarray]) -> None:
    """Print how far the aarch64 outputs are from this host's (x86) onnxruntime's."""
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    reference = sess.run(None, {sess.get_inputs()[0].name: x})
    for k, (out, ref, step) in enumerate(zip(outputs, reference, _output_steps(model))):
        diff = float(np.max(np.abs(out.astype(np.float64) - ref))) if out.size else 0.0
        in_steps = f" = {diff / step:.2f} quantization steps" if step else ""
        print(f"  output {k}: max |aarch64 - x86 onnxruntime {ort.__version__}| = {diff:.6g}{in_steps}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", help="ONNX model with one input (default: EfficientNet-Lite0 int8 QDQ)")
    p.add_argument("--reduce-range", action="store_true", help="Lite0 with 7-bit weights (bench/onnx_int8.py)")
    args = p.parse_args(argv)
    if args.model:
        model, x = Path(args.model), _random_input(Path(args.model))
    else:
        model, x = _lite0_int8(args.reduce_range)
    start = time.perf_counter()
    outputs, counts = count_ort(str(model), x)
    seconds = time.perf_counter() - start
    print(f"ONNX Runtime aarch64 under qemu -cpu {QEMU_CPU}, 1 thread, one inference of {model}:")
    print("  " + "  ".join(f"{k}={v:,}" for k, v in counts.items()))
    print(f"  (counted run: {seconds:.1f} s)")
    _compare_with_host(model, x, outputs)


if __name__ == "__main__":
    main()
