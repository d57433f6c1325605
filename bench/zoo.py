"""torchvision sweep: does each architecture quantize, how close is it to float, is the host
build bit-exact, and how fast is it next to PyTorch float and ONNX Runtime int8.

    .venv/bin/python bench/zoo.py                                  # every model, 64x64, 1 thread
    .venv/bin/python bench/zoo.py --models resnet18,googlenet --runs 50
    .venv/bin/python bench/zoo.py --remedy                         # retry with the error's overrides

Models: random weights (``weights=None``, nothing is downloaded), seed 0, BatchNorm statistics
from ``--bn-passes`` training-mode passes on random normal batches (cumulative averages),
then ``eval()``. Input: 1×3×``--size``×``--size`` random normal values; the small
VisionTransformer takes that size too (patch size = size / 4, 2 layers, 2 heads, width 64).

Per model: ``qcompiler.quantize(model, x, bits=8, calibration=...)`` on ``--calibration``
random batches; SQNR (dB) of the simulation and of the integer program (``qm.interpret``)
against the float model on ``--eval`` other random inputs; host bit-exact: ``qm.compile("host")``
equals ``qm.interpret`` on those inputs; compile time (quantize, lower + build); median
batch-1 latency over ``--runs`` interleaved calls (bench/host_speed.py's engines and timing)
of our host build, PyTorch float and ONNX Runtime static int8 (bench/onnx_int8.py), all on
``--threads`` threads. A stage that fails prints its error's first line and the sweep goes on;
the full errors follow the table.

torchvision is installed with ``--no-deps`` (requirements-nodeps.txt). Its wheel's compiled
ops (torchvision/_C.so, a CUDA build) do not load on our CPU-only torch, and torchvision's
import then fails registering fake kernels for ``torchvision::nms``/``qnms``; ``import_torchvision``
declares those two schemas first (no torchvision op runs in these models).
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import importlib.util
import logging
import re
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from host_speed import Slot, ort_engine, ort_int8, pytorch_float, time_rounds  # noqa: E402
from onnx_int8 import export_onnx, quantize_onnx_int8  # noqa: E402

import qcompiler  # noqa: E402
from qcompiler.metrics import sqnr_db  # noqa: E402

MODELS = ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "shufflenet_v2_x0_5",
          "squeezenet1_0", "mnasnet0_5", "regnet_y_400mf", "googlenet", "densenet121", "convnext_tiny", "vit_small"]
_TV_LIB: list = []  # keeps the torch.library.Library of the declared schemas alive


def import_torchvision():
    """Import torchvision; if its compiled ops do not load, declare the schemas its import
    registers fake kernels for (torchvision::nms, torchvision::qnms). Returns (module, note)."""
    if "torchvision" in sys.modules:
        return sys.modules["torchvision"], ""
    folder = importlib.util.find_spec("torchvision").submodule_search_locations[0]
    note = "torchvision compiled ops loaded"
    try:
        torch.ops.load_library(glob.glob(os.path.join(folder, "_C*.so"))[0])
    except (OSError, IndexError) as e:
        lib = torch.library.Library("torchvision", "DEF")
        for name in ("nms", "qnms"):
            lib.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _TV_LIB.append(lib)
        note = f"torchvision/_C.so did not load ({type(e).__name__}): declared torchvision::nms, qnms"
    import torchvision
    if "+cu" in torchvision.__version__ and "declared" in note:
        note += " (a CUDA wheel: _C.so links libtorch_cuda)"
    return torchvision, note


def build_model(name: str, size: int) -> torch.nn.Module:
    """A torchvision model with random weights (seed 0), ready for BatchNorm statistics."""
    import torchvision.models as tvm

    torch.manual_seed(0)
    if name == "vit_small":
        vit = tvm.VisionTransformer(image_size=size, patch_size=size // 4, num_layers=2, num_heads=2,
                                    hidden_dim=64, mlp_dim=128)
        vit.heads.head.reset_parameters()  # torchvision zeroes the head: the logits would be all 0
        return vit
    kwargs = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    return getattr(tvm, name)(weights=None, **kwargs)


def set_bn_statistics(model: torch.nn.Module, size: int, passes: int, batch: int = 8) -> torch.nn.Module:
    """BatchNorm running statistics from ``passes`` training-mode passes on random batches
    (cumulative averages: momentum None), then eval()."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(passes):
            model(torch.randn(batch, 3, size, size))
    return model.eval()


def causes(e: BaseException) -> list[BaseException]:
    """``e`` and the exceptions it was raised from, outermost first."""
    chain = [e]
    while chain[-1].__cause__ is not None and len(chain) < 10:
        chain.append(chain[-1].__cause__)
    return chain


def first_line(e: BaseException) -> str:
    """The innermost cause's type and first line (a PassError's first line only names the pass)."""
    inner = causes(e)[-1]
    text = [t.strip() for t in str(inner).strip().splitlines()] or [""]
    line = text[0]
    if line.endswith(":"):  # a list follows (e.g. the nodes with no integer form): its first items
        items = [t[2:] for t in text[1:] if t.startswith("- ")]
        line += " " + "; ".join(items[:3]) + (f"; +{len(items) - 3} more" if len(items) > 3 else "")
    return f"{type(inner).__name__}: {line}"


@dataclass
class Row:
    name: str
    cells: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)  # (stage, exception text)

    def fail(self, stage: str, e: BaseException, graph=None) -> None:
        self.cells.setdefault("status", f"{stage}: {first_line(e)}")
        text = "".join(traceback.format_exception_only(type(e), e)).strip()
        self.errors.append((stage, text + _behind(graph, text), _where(e)))


def _behind(graph, text: str) -> str:
    """For each node of ``graph`` that ``text`` names: its op, and for a getitem the op it reads."""
    if graph is None:
        return ""
    nodes = {n.name: n for n in graph.graph.nodes}
    lines = []
    for name in dict.fromkeys(re.findall(r"(?<![.\w])[A-Za-z_]\w*(?![.\w])", text)):
        n = nodes.get(name)
        if n is None or n.op not in ("call_function", "call_module"):
            continue
        what = f"{name} = {getattr(n.target, '__name__', n.target)}"
        if "getitem" in str(n.target) and n.args and hasattr(n.args[0], "target"):
            what += f"(item {n.args[1]} of {n.args[0].name} = {n.args[0].target})"
        frames = [f.strip() for f in (n.meta.get("stack_trace") or "").splitlines() if f.strip().startswith("File")]
        frames = [f for f in frames if "/torch/" not in f] or frames
        lines.append(what + (f"  <- {frames[-1]}" if frames else ""))
    return "".join(f"\n  node: {line}" for line in lines)


def _where(e: BaseException) -> str:
    """The innermost qcompiler frame of ``e``'s traceback (file:line in function)."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if "qcompiler" in f.filename or "/targets/" in f.filename
              or "/passes/" in f.filename]
    if not frames:
        return ""
    f = frames[-1]
    return f"{Path(f.filename).name}:{f.lineno} in {f.name}"


def run_model(name: str, args) -> Row:
    """One model: float reference, ours (quantize, simulate, interpret, host build), baselines."""
    row = Row(name)
    torch.manual_seed(0)
    model = set_bn_statistics(build_model(name, args.size), args.size, args.bn_passes)
    g = torch.Generator().manual_seed(1)
    calibration = [torch.randn(1, 3, args.size, args.size, generator=g) for _ in range(args.calibration)]
    inputs = [torch.randn(1, 3, args.size, args.size, generator=g) for _ in range(args.eval)]
    with torch.no_grad():
        ref = torch.cat([model(x) for x in inputs])
    ours = build_ours(row, model, calibration, inputs, ref, args)
    return _baselines(row, model, calibration, inputs, ref, calibration[0], args, ours)


def build_ours(row: Row, model, calibration, inputs, ref, args):
    """Quantize, measure, build for host; the host build as an engine, or None at the first failure."""
    x = calibration[0]
    start = time.perf_counter()
    try:
        qm = qcompiler.quantize(model, x, bits=8, calibration=calibration, progress=False)
    except Exception as e:  # noqa: BLE001 - the sweep reports any failure and goes on
        overrides = next((o for o in (getattr(c, "overrides", None) for c in causes(e)) if o is not None), None)
        if not (args.remedy and isinstance(overrides, dict)):
            row.fail("quantize", e)
            if args.remedy:
                row.errors.append(("remedy", "skipped: the error carries no .overrides", ""))
            return None
        row.errors.append(("quantize", f"{first_line(e)}\nremedy: quantize again with overrides={overrides}", ""))
        start = time.perf_counter()
        try:
            qm = qcompiler.quantize(model, x, bits=8, calibration=calibration, overrides=overrides, progress=False)
            row.cells["remedy"] = f"{len(overrides)} float"
        except Exception as e2:  # noqa: BLE001
            row.fail("quantize+remedy", e2)
            return None
    row.cells["quantize s"] = time.perf_counter() - start
    try:
        row.cells["sim dB"] = sqnr_db(ref, torch.cat([qm.simulate(t) for t in inputs]))
    except Exception as e:  # noqa: BLE001
        row.fail("simulate", e, qm.graph)
    try:
        integer = [np.asarray(qm.interpret(t)) for t in inputs]
        row.cells["int dB"] = sqnr_db(ref, torch.from_numpy(np.concatenate(integer)))
    except Exception as e:  # noqa: BLE001
        row.fail("interpret", e, qm.graph)
        return None
    start = time.perf_counter()
    try:
        cm = qm.compile("host", threads=args.threads, progress=False)
        row.cells["compile s"] = time.perf_counter() - start
        same = all(np.array_equal(np.asarray(cm(t.numpy())), i) for t, i in zip(inputs, integer))
        row.cells["bit-exact"] = "yes" if same else "NO"
    except Exception as e:  # noqa: BLE001
        row.fail("compile host", e, qm.program)
        return None
    row.cells.setdefault("status", "ok" + (" (remedy)" if "remedy" in row.cells else ""))
    return lambda a: np.asarray(cm(a))


def _baselines(row: Row, model, calibration, inputs, ref, x, args, ours=None) -> Row:
    """ORT int8 SQNR, then the interleaved latencies of ours (if built), PyTorch float, ORT int8."""
    slots = [Slot("ours", args.threads, ours, 0.0)] if ours is not None else []
    slots.append(Slot("torch", args.threads, pytorch_float(model, calibration, args.threads), 0.0))
    try:  # quiet: ORT's per-channel warnings for BatchNorm weights, the exporter's graph dump on failure
        with quiet(), _no_mha_fastpath():
            ort = ort_int8_engine(model, calibration, args.threads, row)
        row.cells["ORT dB"] = sqnr_db(ref, torch.from_numpy(np.concatenate([ort(t.numpy()) for t in inputs])))
        slots.append(Slot("ort", args.threads, ort, 0.0))
    except Exception as e:  # noqa: BLE001
        row.errors.append(("ONNX Runtime int8", first_line(e), _where(e)))
        row.cells["ORT dB"] = "error"
    time_rounds(slots, np.ascontiguousarray(x.numpy()), args.runs, 1, warmup=3)
    for s in slots:
        row.cells[f"{s.name} ms"] = float(np.median(s.times_ms))
    return row


def ort_int8_engine(model, calibration, threads: int, row: Row):
    """bench/host_speed.py's ORT int8 engine; where ORT's symbolic shape inference (its
    quantization pre-processing) fails, the same quantization without that pre-processing."""
    try:
        return ort_int8(model, calibration, threads)
    except AssertionError as e:
        if "symbolic_shape_infer" not in "".join(traceback.format_tb(e.__traceback__)):
            raise
    folder = Path(tempfile.mkdtemp(prefix="zoo.ort."))
    fp32 = export_onnx(model, calibration[0][:1], folder / "model.onnx")
    row.errors.append(("ONNX Runtime int8", "ORT's symbolic shape inference failed: quantized without quant_pre_process", ""))
    return ort_engine(quantize_onnx_int8(fp32, folder / "model.int8.onnx", calibration, preprocess=False), threads)


@contextlib.contextmanager
def quiet():
    """Root-logger warnings and Python-level stdout/stderr silenced (ONNX export and ORT quantization)."""
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)
    try:
        with open(os.devnull, "w") as null, contextlib.redirect_stderr(null), contextlib.redirect_stdout(null):
            yield
    finally:
        logging.getLogger().setLevel(level)


@contextlib.contextmanager
def _no_mha_fastpath():
    """nn.MultiheadAttention's eval fast path (aten._native_multi_head_attention) has no ONNX
    export; the ordinary path computes the same attention."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


def cpu_description() -> str:
    """The CPU's model name, LLVM's name for it (the host target) and its SIMD features."""
    from qcompiler.targets.host import host_target_spec

    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("model name")), "?")
    flags = set(next((l.split(":", 1)[1].split() for l in info.splitlines() if l.startswith("flags")), []))
    wanted = ["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8"]
    have = " ".join(f for f in wanted if f in flags) or "none of " + " ".join(wanted)
    return f"{model}; LLVM cpu {host_target_spec().get('mcpu', 'generic')}; {os.cpu_count()} CPUs; {have}"


def fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "inf" if value == float("inf") else f"{value:.{digits}f}"
    return str(value)


def print_table(rows: list[Row], title: str, caption: str) -> None:
    from rich.console import Console
    from rich.table import Table

    columns = ["model", "status", "sim dB", "int dB", "bit-exact", "quantize s", "compile s", "ours ms",
               "torch ms", "ORT int8 ms", "ORT dB", "× torch", "× ORT"]
    table = Table(title=title, caption=caption)
    for c in columns:
        table.add_column(c, justify="left" if c in ("model", "status") else "right", overflow="fold")
    for r in rows:
        c = r.cells
        ours, torch_ms, ort_ms = c.get("ours ms"), c.get("torch ms"), c.get("ort ms")
        table.add_row(r.name, c.get("status", "?"), fmt(c.get("sim dB")), fmt(c.get("int dB")), fmt(c.get("bit-exact")),
                      fmt(c.get("quantize s")), fmt(c.get("compile s")), fmt(ours, 2), fmt(torch_ms, 2), fmt(ort_ms, 2),
                      fmt(c.get("ORT dB")), fmt(ours / torch_ms, 2) if ours and torch_ms else "-",
                      fmt(ours / ort_ms, 2) if ours and ort_ms else "-")
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    console.print(table)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated (default: all of {','.join(MODELS)})")
    p.add_argument("--size", type=int, default=64, help="input height and width (default 64)")
    p.add_argument("--runs", type=int, default=30, help="timed batch-1 calls per engine, interleaved (default 30)")
    p.add_argument("--threads", type=int, default=1, help="threads of every engine (default 1)")
    p.add_argument("--calibration", type=int, default=4, help="random calibration batches of 1 (default 4)")
    p.add_argument("--eval", type=int, default=4, help="random inputs for SQNR and bit-exactness (default 4)")
    p.add_argument("--bn-passes", type=int, default=3, help="training-mode passes (batch 8) for BatchNorm statistics")
    p.add_argument("--remedy", action="store_true", help="when quantize's error carries .overrides, retry with them")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")

    torchvision, note = import_torchvision()
    print(f"CPU: {cpu_description()}")
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}; {note}", flush=True)
    torch.set_num_threads(args.threads)
    rows, start = [], time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        try:
            row = run_model(name, args)
        except Exception as e:  # noqa: BLE001 - e.g. the float model itself
            row = Row(name)
            row.fail("setup", e)
        rows.append(row)
        numbers = ", ".join(f"{k} {fmt(v, 2)}" for k, v in row.cells.items() if k != "status")
        print(f"{name}: {row.cells.get('status')}; {numbers} ({time.perf_counter() - t0:.0f} s)", flush=True)
    load = os.getloadavg()[0]
    print_table(rows, f"torchvision sweep: 1×3×{args.size}×{args.size}, W8A8 (bits=8), {args.threads} thread(s), "
                      f"median of {args.runs} calls", f"load average {load:.1f}; total {time.perf_counter() - start:.0f} s")
    for r in rows:
        for stage, text, where in r.errors:
            print(f"\n{r.name} [{stage}]{' at ' + where if where else ''}:\n  " + text.replace("\n", "\n  "))


if __name__ == "__main__":
    main()
