"""Batch-1 latency of EfficientNet-Lite0 on this host: PyTorch float, ONNX Runtime float and
ONNX Runtime static int8 (QDQ), at several thread counts, in one run.

    .venv/bin/python bench/host_speed.py                       # 1 and 2 threads, 40 rounds
    .venv/bin/python bench/host_speed.py --quick               # 12 rounds: a rough look
    .venv/bin/python bench/host_speed.py --threads 1 --rounds 60 --calls 5
    .venv/bin/python bench/host_speed.py --reduce-range        # + ORT int8 with 7-bit weights

Every engine is a callable numpy [1, 3, 224, 224] -> numpy logits [1, 1000], made by a
factory ``factory(model, calibration_batches, threads)``. Accuracy: logits SQNR and top-1
agreement against PyTorch float (batch 20) on the 20 foolbox ImageNet images; calibration
(for the int8 engines) uses flips/crops of them, never the originals.

Timing: all (engine, threads) pairs are measured interleaved, so machine noise hits them
alike: each round visits every pair (starting one further along each round); each visit is
one untimed settling call (re-warms caches and thread pools after the previous engine), then
``--calls`` timed calls. The table gives the median and p10/p90 of all timed calls, and the
ratio of the median to ONNX Runtime int8's at the same thread count.

Adding an engine (e.g. qcompiler's int8 program): write a factory with the signature of
``EngineFactory`` and either append it to ``ENGINES`` below or call
``register_engine("qcompiler int8", factory)`` before ``main()``. The factory is called once
per thread count; it should do its one-off work (quantization, compilation) there and make
the returned callable use exactly ``threads`` threads.

The ONNX models are exported and quantized by bench/onnx_int8.py and cached in bench/.cache/.
On x86 CPUs without VNNI (AVX2 only), ORT's u8×s8 int8 kernels can saturate their 16-bit
intermediates with full 8-bit weights, so "ONNX Runtime int8" is less accurate there than its
QDQ graph; ``--reduce-range`` adds the 7-bit-weight variant ORT recommends for such CPUs.
PyTorch's OpenMP threads spin at barriers: on a loaded machine its multi-thread latency
suffers badly (OMP_WAIT_POLICY=PASSIVE in the environment tames that).
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from onnx_int8 import cached_onnx_models  # noqa: E402

from qcompiler.metrics import sqnr_db  # noqa: E402

Engine = Callable[[np.ndarray], np.ndarray]
EngineFactory = Callable[[torch.nn.Module, list[torch.Tensor], int], Engine]

BASELINE = "ONNX Runtime int8"
REFERENCE = "PyTorch float"


# ------------------------------------------------------------------ engines

def pytorch_float(model: torch.nn.Module, calibration: list[torch.Tensor], threads: int) -> Engine:
    def run(x: np.ndarray) -> np.ndarray:
        torch.set_num_threads(threads)  # global: set on every call, as engines are interleaved
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    return run


_onnx_paths: dict[tuple[int, int, bool], tuple[Path, Path]] = {}


def onnx_models(model: torch.nn.Module, calibration: list[torch.Tensor], reduce_range: bool = False) -> tuple[Path, Path]:
    """(fp32, int8) ONNX paths for ``model``, shared by the ORT engines (and cached on disk)."""
    key = (id(model), id(calibration), reduce_range)
    if key not in _onnx_paths:
        _onnx_paths[key] = cached_onnx_models(model, calibration[0][:1], calibration, reduce_range=reduce_range)
    return _onnx_paths[key]


def ort_engine(path: Path, threads: int) -> Engine:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def ort_float(model: torch.nn.Module, calibration: list[torch.Tensor], threads: int) -> Engine:
    return ort_engine(onnx_models(model, calibration)[0], threads)


def ort_int8(model: torch.nn.Module, calibration: list[torch.Tensor], threads: int) -> Engine:
    return ort_engine(onnx_models(model, calibration)[1], threads)


def ort_int8_reduce_range(model: torch.nn.Module, calibration: list[torch.Tensor], threads: int) -> Engine:
    """ORT int8 with 7-bit weights (``reduce_range``): ORT's advice for x86 without VNNI, whose
    u8×s8 kernels can saturate with full 8-bit weights (added by ``--reduce-range``)."""
    return ort_engine(onnx_models(model, calibration, reduce_range=True)[1], threads)


_QUANTIZED: dict = {}


def quantized_model(model: torch.nn.Module, calibration: list[torch.Tensor]):
    """qcompiler's W8A8 EfficientNet-Lite0 (MSE calibration + bias correction, the demo's
    configuration), quantized once for every engine that needs it."""
    if "qm" not in _QUANTIZED:
        import qcompiler

        _QUANTIZED["qm"] = qcompiler.quantize(model, calibration[0][:1], bits=8, method="mse", calibration=calibration,
                                              ptq=["bias_correction"], progress=False)
    return _QUANTIZED["qm"]


def qcompiler_engine(scheduled: bool) -> EngineFactory:
    """qcompiler's host build of the integer program: with our kernels (scheduled) or TVM's
    default build of the same program (generic lowering, no schedules)."""
    def factory(model: torch.nn.Module, calibration: list[torch.Tensor], threads: int) -> Engine:
        from qcompiler.targets.host import compile_host

        qm = quantized_model(model, calibration)
        runtime = compile_host(qm.program, qm.example_inputs, scheduled=scheduled, threads=threads)

        def run(x: np.ndarray) -> np.ndarray:
            return runtime.run(x)[0]  # the runtime sets TVM's pool to its own thread count
        return run
    return factory


ENGINES: list[tuple[str, EngineFactory]] = [
    (REFERENCE, pytorch_float),
    ("ONNX Runtime float", ort_float),
    (BASELINE, ort_int8),
    ("qcompiler int8", qcompiler_engine(scheduled=True)),
    ("TVM default build, same program", qcompiler_engine(scheduled=False)),
]


def register_engine(name: str, factory: EngineFactory) -> None:
    """Add (or replace) an engine; it is measured like the others."""
    ENGINES[:] = [(n, f) for n, f in ENGINES if n != name] + [(name, factory)]


# ------------------------------------------------------------------ measurement

@dataclass
class Slot:
    """One engine at one thread count."""
    name: str
    threads: int
    run: Engine
    setup_s: float
    logits: np.ndarray | None = None
    times_ms: list[float] = field(default_factory=list)


def build_slots(model: torch.nn.Module, calibration: list[torch.Tensor], thread_counts: list[int]) -> list[Slot]:
    slots = []
    for threads in thread_counts:
        for name, factory in ENGINES:
            start = time.perf_counter()
            run = factory(model, calibration, threads)
            slots.append(Slot(name, threads, run, time.perf_counter() - start))
    return slots


def evaluate(slot: Slot, images: np.ndarray) -> None:
    """Logits for each image at batch 1 (doubles as the first warm-up)."""
    slot.logits = np.concatenate([slot.run(np.ascontiguousarray(images[i:i + 1])) for i in range(len(images))])


def time_rounds(slots: list[Slot], x: np.ndarray, rounds: int, calls: int, warmup: int) -> None:
    for slot in slots:
        for _ in range(warmup):
            slot.run(x)
    gc.collect()
    gc.disable()
    try:
        for r in range(rounds):
            for slot in slots[r % len(slots):] + slots[:r % len(slots)]:
                slot.run(x)  # settling call, untimed
                for _ in range(calls):
                    start = time.perf_counter_ns()
                    slot.run(x)
                    slot.times_ms.append((time.perf_counter_ns() - start) / 1e6)
    finally:
        gc.enable()


# ------------------------------------------------------------------ report

def print_table(slots: list[Slot], reference: np.ndarray, title: str, caption: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, caption=caption)
    for column in ("engine", "threads", "median ms", "p10 ms", "p90 ms", "SQNR dB", "top-1 agree",
                   "× ORT int8", "setup s"):
        table.add_column(column, justify="left" if column == "engine" else "right", no_wrap=True)
    medians = {(s.name, s.threads): float(np.median(s.times_ms)) for s in slots}
    ref = torch.from_numpy(reference)
    previous_threads = slots[0].threads
    for s in slots:
        if s.threads != previous_threads:
            table.add_section()
            previous_threads = s.threads
        median = medians[(s.name, s.threads)]
        p10, p90 = np.percentile(s.times_ms, [10, 90])
        sqnr = sqnr_db(ref, torch.from_numpy(s.logits))
        agree = int((reference.argmax(-1) == s.logits.argmax(-1)).sum())
        base = medians.get((BASELINE, s.threads))
        table.add_row(s.name, str(s.threads), f"{median:.2f}", f"{p10:.2f}", f"{p90:.2f}",
                      "inf" if sqnr == float("inf") else f"{sqnr:.1f}", f"{agree}/{len(reference)}",
                      f"{median / base:.2f}" if base else "-", f"{s.setup_s:.1f}")
    console = Console()
    if not console.is_terminal:  # a log or a pipe: don't squeeze the table into 80 columns
        console = Console(width=140)
    console.print(table)


# ------------------------------------------------------------------ main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default: 1 2)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 40; 12 with --quick)")
    p.add_argument("--calls", type=int, default=None, help="timed calls per engine per round (default 4; 3 with --quick)")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls per engine before the rounds (default 5)")
    p.add_argument("--quick", action="store_true", help="fewer rounds and calls")
    p.add_argument("--reduce-range", action="store_true",
                   help="also measure ORT int8 with 7-bit weights (ORT's advice for x86 CPUs without VNNI)")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (12 if args.quick else 40)
    args.calls = args.calls or (3 if args.quick else 4)
    return args


def main(argv: list[str] | None = None) -> None:
    from qcompiler.models import efficientnet_lite0, imagenet_calibration_set, imagenet_samples

    args = parse_args(argv)
    if args.reduce_range:
        register_engine("ONNX Runtime int8, 7-bit w", ort_int8_reduce_range)
    start = time.perf_counter()
    model = efficientnet_lite0()
    samples = imagenet_samples()
    calibration = list(imagenet_calibration_set().split(10))
    with torch.inference_mode():
        reference = model(samples.images).numpy()
    images = samples.images.numpy()

    slots = build_slots(model, calibration, args.threads)
    for slot in slots:
        evaluate(slot, images)
    load_before = os.getloadavg()[0]
    time_rounds(slots, np.ascontiguousarray(images[:1]), args.rounds, args.calls, args.warmup)
    load_after = os.getloadavg()[0]

    n_cal = sum(len(b) for b in calibration)
    title = f"EfficientNet-Lite0, batch 1, {args.rounds} rounds × {args.calls} calls per engine"
    caption = (f"accuracy: {len(images)} ImageNet images vs PyTorch float (batch {len(images)}); int8 calibration: "
               f"{n_cal} flips/crops; setup includes ONNX export/quantization unless cached\n{os.cpu_count()} CPUs, load average {load_before:.1f} → {load_after:.1f}; "
               f"total {time.perf_counter() - start:.0f} s")
    print_table(slots, reference, title, caption)


if __name__ == "__main__":
    main()
