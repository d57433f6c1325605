"""The ``qcompile`` command: quantize and compile a model from the command line, print the
report, optionally export.

    qcompile qcompiler.models:efficientnet_lite0 --input-shape 1,3,224,224 \\
        --calibration qcompiler.models:imagenet_calibration_batches --target host --bits 8 --export out/

MODULE:FACTORY names a function returning an ``nn.Module`` (or a ``(module, example_inputs)``
pair). ``--calibration`` is MODULE:FUNCTION returning an iterable of batches, or a ``.pt``
file holding a tensor (split into batches of ``--batch``) or a list of batches.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from typing import Any, Optional

import torch
from rich.console import Console
from rich.markup import escape

from .compiled import compile_model, export_names
from .errors import QCompilerError, did_you_mean
from .export import resolve_destination
from .log import logger
from .progress import task
from .quantize import quantize
from .targets import TARGETS, get_target


def load_object(spec: str, what: str) -> Any:
    """The object named by "package.module:attribute"; a clear error otherwise."""
    if ":" not in spec:
        raise QCompilerError(f"{what} {spec!r}: write it as MODULE:NAME, e.g. qcompiler.models:efficientnet_lite0")
    module_name, attribute = spec.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise QCompilerError(f"{what} {spec!r}: cannot import module {module_name!r} ({exc}); is it on PYTHONPATH?") from exc
    if not hasattr(module, attribute):
        public = [n for n in dir(module) if not n.startswith("_")]
        raise QCompilerError(f"{what} {spec!r}: module {module_name!r} has no {attribute!r}{did_you_mean(attribute, public)}")
    return getattr(module, attribute)


def _shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--input-shape {text!r}: write it as 1,3,224,224") from exc


def load_calibration(spec: Optional[str], batch: int) -> Optional[Any]:
    if spec is None:
        return None
    if spec.endswith(".pt"):
        try:
            data = torch.load(spec, weights_only=True)
        except (OSError, RuntimeError) as exc:
            raise QCompilerError(f"--calibration {spec}: cannot read it ({exc})") from exc
        return [data[i:i + batch] for i in range(0, len(data), batch)] if isinstance(data, torch.Tensor) else data
    source = load_object(spec, "--calibration")
    return source() if callable(source) else source


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qcompile", description="Quantize a PyTorch model and compile its integer program.")
    p.add_argument("model", help="MODULE:FACTORY returning an nn.Module or (module, example_inputs)")
    p.add_argument("--input-shape", type=_shape, action="append",
                   help="example input shape, e.g. 1,3,224,224 (if the factory gives no example); repeat it for a model "
                        "with several inputs")
    p.add_argument("--target", default="host", choices=sorted(TARGETS))
    p.add_argument("--bits", type=int, default=8, help="weight bits (2-8)")
    p.add_argument("--activation-bits", type=int, default=8, choices=[8, 16])
    p.add_argument("--method", default="minmax", choices=["minmax", "mse", "percentile"], help="activation range calibration")
    p.add_argument("--calibration", help="MODULE:FUNCTION returning batches, or a .pt file")
    p.add_argument("--batch", type=int, default=16, help="batch size when --calibration is one tensor")
    p.add_argument("--ptq", nargs="*", default=[], help="PTQ passes to run, e.g. bias_correction adaround")
    p.add_argument("--threads", type=int, help="threads the compiled program runs on (default: every CPU)")
    p.add_argument("--export", metavar="DIR", help="write the library, encodings.json, manifest.json and the report "
                   "into DIR: a new or empty directory, or a previous export (its files are replaced)")
    p.add_argument("--force", action="store_true", help="with --export: replace DIR whole even if it holds other files "
                   "(never the working directory or a parent of it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars or spinners")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    console = Console(stderr=True)
    args = build_parser().parse_args(argv)
    progress = False if args.no_progress else None
    try:
        if args.export:  # refuse a destination before spending minutes compiling
            resolve_destination(args.export, args.force, export_names(get_target(args.target)))
        with task("loading the model", progress):
            made = load_object(args.model, "model")()
        model, example = made if isinstance(made, tuple) else (made, None)
        if example is None:
            if args.input_shape is None:
                raise QCompilerError(f"{args.model} gave no example inputs: pass --input-shape, e.g. 1,3,224,224")
            shapes = [torch.randn(shape) for shape in args.input_shape]
            example = shapes[0] if len(shapes) == 1 else tuple(shapes)
        calibration = load_calibration(args.calibration, args.batch)
        if calibration is None:
            logger.warning("no --calibration: ranges come from the example input alone")
        start = time.perf_counter()
        qm = quantize(model, example, bits=args.bits, activation_bits=args.activation_bits, calibration=calibration,
                      method=args.method, ptq=args.ptq, scheme=get_target(args.target).scheme(), progress=progress)
        quantize_s = time.perf_counter() - start
        cm = compile_model(qm, args.target, threads=args.threads, progress=progress)
        cm.timings = {"quantize": quantize_s, **cm.timings}
        with task("measuring the report", progress):
            report = cm.report()
        print(report)
        if args.export:
            path = cm.export(args.export, overwrite=args.force)
            print(f"exported to {path}")
    except QCompilerError as exc:
        console.print(f"[red]qcompile: {escape(str(exc))}[/red]", soft_wrap=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
