"""The model's inputs: what shapes and dtypes a captured model takes, and one check used at
every entry point (``simulate``, ``interpret``, calibration, ``analyze``, ``run_int``), so
that a wrong input is an error naming the entry point, the input (and the calibration
batch), the expected and the given shape, and the fix, never a guard failure from inside
torch or a reshape error from inside the interpreter.

    specs = input_specs(gm, example_inputs)        # [InputSpec("x", (None, 3, 32, 32), torch.float32)]
    check_inputs(specs, (x,), "qm.simulate")       # raises InputError, or returns the inputs

A dimension is ``None`` when ``torch.export`` kept it symbolic (the batch dimension, where the
model allows it): any size is accepted there.
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import torch
import torch.fx as fx
import torch.utils.data

from . import meta
from .errors import QCompilerError
from .log import logger


class InputError(QCompilerError):
    """An input of the wrong number, shape or dtype (the message says which and the fix)."""


@dataclass(frozen=True)
class InputSpec:
    """One positional input: its placeholder's name, shape (None where any size is
    accepted) and dtype."""

    name: str
    shape: Optional[tuple[Optional[int], ...]]  # None: not known (the input is not checked)
    dtype: Optional[torch.dtype]
    # per dimension, the name of its symbol where it is free ("s0"): dimensions of several
    # inputs that share a symbol must have the same size (a batch the inputs share)
    symbols: Optional[tuple[Optional[str], ...]] = None

    def describe(self) -> str:
        if self.shape is None:
            return "(any)"
        dims = ", ".join("N" if d is None else str(d) for d in self.shape)
        return f"[{dims}] {str(self.dtype).replace('torch.', '')}"


def as_input_tuple(inputs: Any, what: str = "example_inputs") -> tuple:
    """``inputs`` as a tuple of positional inputs: a tensor or array is one input; a tuple
    or a list holds one per input. numpy arrays become tensors (``torch.from_numpy``)."""
    if isinstance(inputs, (torch.Tensor, np.ndarray)):
        inputs = (inputs,)
    if isinstance(inputs, (tuple, list)):
        return tuple(torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v for v in inputs)
    raise InputError(f"{what} must be a tensor or a tuple (or list) of the model's positional inputs; "
                     f"got {type(inputs).__name__}")


def _numbers_only(value: Any) -> bool:
    """True for a (nested) list/tuple of Python numbers: data that should have been a tensor."""
    if isinstance(value, (bool, int, float)):
        return True
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(_numbers_only(v) for v in value)


def check_example_inputs(model: torch.nn.Module, inputs: tuple) -> None:
    """The example inputs (``as_input_tuple``'s result) are something qcompiler can capture:
    tensors, not lists of numbers; with at least one value; float32 where floating-point
    (the model's dtype: qcompiler.capture checks the model's). InputError naming the input
    and the fix otherwise."""
    for i, value in enumerate(inputs):
        if isinstance(value, (list, tuple)) and _numbers_only(value):
            raise InputError(f"example_inputs: input {i} is a {type(value).__name__} of numbers, not a tensor. Fix: make "
                             f"it a tensor, e.g. torch.tensor(data, dtype=torch.float32)")
        if not isinstance(value, torch.Tensor):
            continue
        if value.numel() == 0:
            raise InputError(f"example_inputs: input {i} has shape {list(value.shape)}, which holds no values: qcompiler "
                             f"traces and calibrates on it. Fix: give an example with at least one sample (e.g. batch size 1)")
        if value.is_floating_point() and value.dtype != torch.float32:
            raise InputError(f"example_inputs: input {i} is {str(value.dtype).replace('torch.', '')}, but qcompiler "
                             f"quantizes float32 models. Fix: convert it, e.g. x.float() (np.float32 for a numpy array)")


def _symbol(size: Any) -> Optional[str]:
    node = getattr(size, "node", None)
    return str(node.expr) if node is not None and _dim(size) is None else None


def _dim(size: Any) -> Optional[int]:
    """A dimension's size, or None when it is symbolic (a SymInt export did not specialise)."""
    if isinstance(size, int):
        return size
    node = getattr(size, "node", None)
    value = node.maybe_as_int() if node is not None and hasattr(node, "maybe_as_int") else None
    return int(value) if value is not None else None


def input_specs(gm: fx.GraphModule, example_inputs: Optional[Sequence] = None) -> list[InputSpec]:
    """The inputs ``gm`` takes, from its placeholders' ``meta['val']`` (as torch.export
    records them, with symbolic dimensions as None), else from ``example_inputs`` (static)."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    specs = []
    for i, node in enumerate(placeholders):
        val = node.meta.get(meta.VAL)
        if isinstance(val, torch.Tensor):
            specs.append(InputSpec(node.name, tuple(_dim(s) for s in val.shape), val.dtype,
                                   tuple(_symbol(s) for s in val.shape)))
        elif example_inputs is not None and i < len(example_inputs) and isinstance(example_inputs[i], torch.Tensor):
            x = example_inputs[i]
            specs.append(InputSpec(node.name, tuple(x.shape), x.dtype))
        else:
            specs.append(InputSpec(node.name, None, None))  # not known: not checked
    return specs


def _shape_dtype(value: Any) -> tuple[tuple[int, ...], Any, bool]:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape), value.dtype, value.is_floating_point()
    array = np.asarray(value)
    return tuple(array.shape), array.dtype, bool(np.issubdtype(array.dtype, np.floating))


def _mismatch(spec: InputSpec, shape: tuple[int, ...]) -> Optional[str]:
    if len(shape) != len(spec.shape):
        return f"it has {len(shape)} dimension(s), expected {len(spec.shape)}"
    for d, (got, want) in enumerate(zip(shape, spec.shape)):
        if want is not None and got != want:
            return f"dimension {d} is {got}, expected {want}"
    return None


def check_inputs(specs: Sequence[InputSpec], inputs: Any, where: str, batch: Optional[int] = None,
                 fix: Optional[str] = None) -> tuple:
    """``inputs`` (a tensor, or a tuple/list of them) as a tuple of tensors, checked against
    ``specs``: numpy arrays become tensors; the dtype must be the model's (a float64 input
    to a float32 model is an error with the fix, as for a compiled model); free dimensions
    that the inputs share (a common batch) must agree.

    Raises InputError naming ``where`` (the entry point), the ``batch`` index (calibration
    and analysis data), the input, the expected and the given shape/dtype, and ``fix`` (a
    default that fits the example-based entry points otherwise)."""
    inputs = as_input_tuple(inputs, f"{where} inputs")
    at = f"{where}, batch {batch}" if batch is not None else where
    if len(inputs) != len(specs):
        expected = ", ".join(f"{s.name} {s.describe()}" for s in specs)
        hint = f". Fix: give one tensor per input ({', '.join(s.name for s in specs)})"
        if len(inputs) == 1 and isinstance(inputs[0], (tuple, list)) and len(inputs[0]) == len(specs):
            hint = ". Fix: pass the inputs as separate arguments, not as one list or tuple"
        raise InputError(f"{at}: the model takes {len(specs)} input(s) ({expected}), got {len(inputs)}{hint}")
    checked = []
    free: dict[str, tuple[int, int, int]] = {}  # symbol -> (input, dimension, size) where first seen
    for i, (value, spec) in enumerate(zip(inputs, specs)):
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if spec.shape is None:
            checked.append(value)
            continue
        if not isinstance(value, torch.Tensor):
            hint = (" Fix: pass the inputs as separate arguments, not as one list or tuple"
                    if isinstance(value, (tuple, list)) else "")
            raise InputError(f"{at}: input {i} ('{spec.name}') must be a tensor {spec.describe()}, got "
                             f"{type(value).__name__}.{hint}".rstrip("."))
        shape = tuple(value.shape)
        problem = _mismatch(spec, shape)
        if problem is not None:
            hint = fix or ("give inputs shaped like the example inputs (N: any batch size), or quantize again with an "
                           "example input of the new shape")
            if len(shape) == len(spec.shape) - 1 and _mismatch(InputSpec(spec.name, spec.shape[1:], spec.dtype), shape) is None:
                hint = f"it looks like one sample without its batch dimension: add it (x.unsqueeze(0)); {hint}"
            raise InputError(f"{at}: input {i} ('{spec.name}') has shape {list(shape)}, expected {spec.describe()}: "
                             f"{problem}. Fix: {hint}")
        for d, symbol in enumerate(spec.symbols or ()):
            if symbol is None:
                continue
            first = free.setdefault(symbol, (i, d, shape[d]))
            if first[2] != shape[d]:
                raise InputError(f"{at}: input {first[0]} has {first[2]} in dimension {first[1]} and input {i} ('{spec.name}') "
                                 f"has {shape[d]} in dimension {d}; the model needs them equal (one batch size N for all "
                                 f"inputs). Fix: give every input the same batch size")
        if value.dtype != spec.dtype:
            raise InputError(f"{at}: input {i} ('{spec.name}') has dtype {str(value.dtype).replace('torch.', '')}, expected "
                             f"{spec.describe()}. Fix: convert it, e.g. x.to({spec.dtype})")
        checked.append(value)
    return tuple(checked)


CALIBRATION_BATCH = 32


def calibration_source(data: Any, specs: Sequence[InputSpec]) -> Iterable:
    """Calibration data as an iterable of batches. A single tensor (or array) holding many
    samples along dimension 0 is taken as a set of samples and split into batches: of the
    model's batch size where the model fixes it, else of ``CALIBRATION_BATCH`` (a one-input
    model only; give a list of batches otherwise). Anything else is returned as it is (a
    DataLoader, a list of batches, ...)."""
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(data)
    if isinstance(data, (str, bytes, os.PathLike)):
        raise InputError(f"calibration={str(data)!r} is a {type(data).__name__}, not data. Fix: load the batches first, "
                         f"e.g. calibration=torch.load(path) (a tensor of samples), or pass a DataLoader")
    if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        raise InputError(f"calibration is a {type(data).__name__} (a Dataset), which gives single samples without a "
                         f"batch dimension. Fix: wrap it in a DataLoader, e.g. "
                         f"torch.utils.data.DataLoader(dataset, batch_size={CALIBRATION_BATCH})")
    if isinstance(data, dict) or not (isinstance(data, torch.Tensor) or hasattr(data, "__iter__")):
        raise InputError(f"calibration must be a DataLoader, a list of batches or one tensor of samples, got "
                         f"{type(data).__name__}. Fix: e.g. calibration=[x1, x2] or calibration=DataLoader(dataset, "
                         f"batch_size={CALIBRATION_BATCH})")
    if isinstance(data, torch.Tensor):
        n_inputs = len(specs)
        if n_inputs != 1:
            raise InputError(f"calibration: a single tensor was given, but the model takes {n_inputs} inputs; give an "
                             f"iterable of batches, each a tuple of {n_inputs} tensors")
        if data.dim() == 0:
            raise InputError("calibration: a 0-dimensional tensor is not a set of samples; give batches of inputs")
        if len(data) == 0:
            raise InputError(f"calibration: the tensor has shape {list(data.shape)}: 0 samples. Fix: give at least one "
                             f"sample along dimension 0 (or leave calibration out to calibrate on the example inputs)")
        shape = specs[0].shape
        fixed = shape[0] if shape and len(shape) == data.dim() and shape[0] is not None else None
        batches = list(data.split(fixed or CALIBRATION_BATCH))
        if fixed and len(data) % fixed:
            if len(data) < fixed:
                raise InputError(f"calibration: one tensor of {len(data)} sample(s) was given, but the model takes batches "
                                 f"of exactly {fixed}; give at least {fixed} samples")
            logger.warning("calibration: %d samples do not fill batches of %d (the batch size the model fixes); the last "
                           "%d are left out", len(data), fixed, len(data) % fixed)
            batches = batches[:-1]
        return batches
    return data


def describe_types(types: Sequence[tuple[tuple[int, ...], str]]) -> str:
    """"float32 [1, 3, 8, 8], ..." for (shape, dtype) per input."""
    return ", ".join(f"{dtype} {list(shape)}" for shape, dtype in types)


def check_built_inputs(inputs: Sequence, types: Sequence[tuple[tuple[int, ...], str]], what: str) -> list[np.ndarray]:
    """The inputs of a built program (static shapes and dtypes, ``types``: (shape, dtype)
    per input) as contiguous numpy arrays; InputError saying what was expected otherwise."""
    if len(inputs) != len(types):
        raise InputError(f"{what} takes {len(types)} input(s) ({describe_types(types)}), got {len(inputs)}. Fix: call "
                         f"it with one tensor per input")
    arrays = []
    for i, (value, (shape, dtype)) in enumerate(zip(inputs, types)):
        if isinstance(value, (tuple, list)):
            raise InputError(f"{what}: input {i} expected a tensor {dtype} {list(shape)}, got a {type(value).__name__}. Fix: "
                             f"pass the inputs as separate arguments, not as one list or tuple")
        if not isinstance(value, (torch.Tensor, np.ndarray)):
            raise InputError(f"{what}: input {i} expected a tensor {dtype} {list(shape)}, got {type(value).__name__}. Fix: "
                             f"pass a tensor (or a numpy array)")
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        want = np.dtype(dtype)
        if tuple(array.shape) != tuple(shape) or array.dtype != want:
            if tuple(array.shape) != tuple(shape):
                hint = "shapes are static: compile again with an example input of the new shape"
                if tuple(array.shape) == tuple(shape)[1:]:
                    hint = f"one sample without its batch dimension: add it (x.unsqueeze(0)); {hint}"
            else:
                hint = f"convert it, e.g. x.to(torch.{dtype})"
                if not np.issubdtype(want, np.floating):
                    hint += " (the integer inputs' encodings: cm.input_encodings)"
            raise InputError(f"{what}: input {i} expected {dtype} {list(shape)}, got {array.dtype} {list(array.shape)}. "
                             f"Fix: {hint}")
        arrays.append(np.ascontiguousarray(array))
    return arrays


def example_from_calibration(model: Any, calibration: Any) -> tuple[tuple, Any]:
    """(example inputs, calibration) when only calibration data is given: the first batch
    is the example (a tensor of samples: its first CALIBRATION_BATCH of them). A one-shot
    iterator (a generator) is read into a list first, so that calibration still sees every
    batch. Raises InputError if there is no data or the first batch holds no tensors."""
    if calibration is None:
        raise InputError("give example_inputs, or calibration data whose first batch can stand for them "
                         "(qcompile(model, calibration=loader, target=...))")
    if isinstance(calibration, np.ndarray):
        calibration = torch.from_numpy(calibration)
    if isinstance(calibration, torch.Tensor):
        if calibration.dim() == 0 or len(calibration) == 0:
            raise InputError(f"calibration: a tensor of shape {tuple(calibration.shape)} holds no samples")
        return (calibration[:CALIBRATION_BATCH],), calibration
    if iter(calibration) is calibration:
        calibration = list(calibration)
    first = next(iter(calibration), None)
    if first is None:
        raise InputError("calibration data is empty: give at least one batch")
    if isinstance(first, torch.Tensor):
        return (first,), calibration
    forward = getattr(model, "forward", None)
    n_inputs = len([p for p in inspect.signature(forward).parameters.values()
                    if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]) if forward else 1
    if isinstance(first, (tuple, list)) and len(first) >= n_inputs and all(isinstance(t, torch.Tensor) for t in first[:n_inputs]):
        return tuple(first[:n_inputs]), calibration
    raise InputError(f"calibration batch 0 is a {type(first).__name__}; give tensors, or tuples/lists whose first "
                     f"{n_inputs} element(s) are the model's inputs (a DataLoader of (inputs, labels) works)")

