"""Capture: ``torch.export`` a model (in eval mode) into an fx GraphModule of core ATen ops.

The ops the registry marks ``Source(keep_whole=True)`` are kept whole rather than decomposed:
``aten.linear`` (as PT2E does), so that a linear layer's weight stays recognisable to the
passes, the unary activations core ATen would split (hardswish, hardsigmoid, silu, mish,
softplus), so that each stays one op, and ops whose integer form is one op (``aten.pad``);
everything else is core ATen.
Parameters and buffers are copied: no pass can write into the user's model.
"""
from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import traceback
import warnings
from typing import Any, Sequence

import torch
import torch.fx as fx

from . import meta
from .errors import CaptureError
from .graph import TORCH_DIR
from .inputs import InputError, as_input_tuple, check_example_inputs
from .log import logger
from .ops import keep_whole_ops

aten = torch.ops.aten

def _decomposition_table() -> dict:
    """torch.export's default decompositions, less the ops the registry keeps whole
    (``Source(keep_whole=True)``: aten.linear, the unary activations one table computes,
    aten.pad, ...)."""
    table = torch.export.default_decompositions()
    for op in keep_whole_ops():
        table.pop(op, None)
    return table


def _as_tuple(example_inputs: Any) -> tuple:
    try:
        return as_input_tuple(example_inputs)
    except InputError as exc:
        raise CaptureError(str(exc)) from None


def _dtype_hint(model: torch.nn.Module, inputs: tuple, exc: BaseException) -> str:
    """A line naming an example input whose dtype differs from the model's parameters, when
    torch's error is a dtype mismatch (an int64 image into a conv); '' otherwise."""
    text = str(exc).lower()
    if not any(w in text for w in ("type", "dtype")):
        return ""
    for i, t in enumerate(inputs):
        if isinstance(t, torch.Tensor) and not t.is_floating_point() and any(True for _ in model.parameters()):
            return (f"  likely cause:   example input {i} is {str(t.dtype).replace('torch.', '')}, the model's parameters "
                    f"are float32. Fix: convert it, e.g. x.float()\n")
    return ""


def _check_float32(model: torch.nn.Module) -> None:
    """qcompiler quantizes float32 models: a CaptureError naming the other dtypes otherwise."""
    dtypes = {t.dtype for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()} - {torch.float32}
    if dtypes:
        names = "/".join(sorted(str(d).replace("torch.", "") for d in dtypes))
        raise CaptureError(f"{type(model).__name__} has {names} parameters or buffers: qcompiler quantizes float32 "
                           f"models. Fix: call model.float() and give float32 inputs (x.float())")


def _outputs_hold_tensors(gm: fx.GraphModule) -> bool:
    output = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    found = []
    fx.node.map_arg(output.args, found.append)
    return bool(found)


def _check_arity(model: torch.nn.Module, inputs: tuple) -> None:
    """The example inputs fit ``model.forward``'s positional parameters; a CaptureError
    naming them otherwise (before torch.export reports it from deep inside)."""
    try:
        signature = inspect.signature(model.forward)
    except (TypeError, ValueError):  # no signature to read (a builtin): torch.export will say
        return
    try:
        signature.bind(*inputs)
    except TypeError as exc:
        positional = [p for p in signature.parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        required = [p.name for p in positional if p.default is p.empty]
        names = ", ".join(p.name for p in positional)
        raise CaptureError(
            f"{type(model).__name__}.forward takes {len(required)} required input(s) ({names}), but example_inputs has "
            f"{len(inputs)} ({exc}). Fix: give example_inputs as a tuple with one tensor per input, e.g. "
            f"({', '.join(required) or 'x'},)") from None


# Modules whose forward differs between training and eval mode.
MODE_DEPENDENT = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.modules.instancenorm._InstanceNorm,
                  torch.nn.modules.dropout._DropoutNd, torch.nn.AlphaDropout, torch.nn.FeatureAlphaDropout)


def training_modules(model: torch.nn.Module) -> list[str]:
    """The modules of ``model`` in training mode whose forward depends on it, as "'name'
    (Class)": BatchNorm, InstanceNorm and dropout, else modules of the user's own classes
    (outside torch.nn: their forward may read ``self.training``)."""
    found = [f"'{name}' ({type(m).__name__})" for name, m in model.named_modules()
             if m.training and isinstance(m, MODE_DEPENDENT)]
    if not found:
        found = [f"'{name or type(m).__name__}' ({type(m).__name__}, which may read self.training)"
                 for name, m in model.named_modules() if m.training and not type(m).__module__.startswith("torch.")]
    return found


def _warn_training(model: torch.nn.Module) -> None:
    found = training_modules(model)
    if not found:
        return
    shown = ", ".join(found[:8]) + (f" and {len(found) - 8} more" if len(found) > 8 else "")
    logger.warning(
        "%s has modules in training mode (%s): qcompiler captures the model in eval mode (BatchNorm uses its running "
        "statistics, dropout is off) and leaves your model's train/eval flags as they were. Call model.eval() first to "
        "silence this.", type(model).__name__, shown)


class _ModuleStack:
    """Forward hooks that remember which submodule was running when export failed
    (export runs the model's Python for real in non-strict mode)."""

    def __init__(self, model: torch.nn.Module):
        self.stack: list[str] = []  # on an exception, forward hooks do not pop: the stack at fault stays
        self.handles = []
        for name, mod in model.named_modules():
            self.handles.append(mod.register_forward_pre_hook(self._enter(name or type(model).__name__, mod)))
            self.handles.append(mod.register_forward_hook(self._leave()))

    def _enter(self, name: str, mod: torch.nn.Module):
        def hook(_m, _inp):
            self.stack.append(f"{name} ({type(mod).__name__})")
        return hook

    def _leave(self):
        def hook(_m, _inp, _out):
            if self.stack:
                self.stack.pop()
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _user_frame(exc: BaseException) -> str:
    """The deepest traceback frame outside torch: the line of the user's model at fault."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(TORCH_DIR)]
    frames = [f for f in frames if not f.filename.endswith(os.path.join("qcompiler", "capture.py"))]
    if not frames:
        return ""
    f = frames[-1]
    return f"{f.filename}:{f.lineno} in {f.name}: {f.line}"


_QUIET_LOGGERS = ("torch._export", "torch.export", "torch.fx.experimental.symbolic_shapes", "torch._dynamo",
                  "torch.__trace")  # torch.export's DEBUG trace: floods pytest's failure reports


@contextlib.contextmanager
def _quiet_torch_logs():
    """torch.export logs specialisations and graph dumps at WARNING; our error says it better."""
    loggers = [logging.getLogger(n) for n in _QUIET_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        # torch.export prints the partial graph of a failed export to stderr; it is kept on
        # the exception (``partial_fx_graph``) and our error says where it failed.
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _batch_is_symbolic(exported) -> bool:
    for node in exported.graph.nodes:
        if node.op == "placeholder" and node.name in exported.graph_signature.user_inputs:
            val = node.meta.get(meta.VAL)
            if isinstance(val, torch.Tensor) and val.dim() > 0 and not isinstance(val.shape[0], int):
                return True
    return False


def _export(model: torch.nn.Module, inputs: tuple, dynamic_batch: bool, stack: _ModuleStack):
    tensors = [t for t in inputs if isinstance(t, torch.Tensor) and t.dim() > 0]
    if not dynamic_batch or not tensors:
        return torch.export.export(model, inputs, strict=False)
    dyn = tuple({0: torch.export.Dim.AUTO} if isinstance(t, torch.Tensor) and t.dim() > 0 else None for t in inputs)
    # torch specialises a size-1 dimension; trace a batch of 2 instead, and keep the result
    # only if the batch really stayed symbolic (else the model fixes it: use the example).
    if all(t.shape[0] == 1 for t in tensors):
        doubled = tuple(torch.cat([t, t]) if isinstance(t, torch.Tensor) and t.dim() > 0 else t for t in inputs)
        try:
            exported = torch.export.export(model, doubled, dynamic_shapes=dyn, strict=False)
            if _batch_is_symbolic(exported):
                return exported
        except Exception:
            pass
        stack.stack.clear()
        return torch.export.export(model, inputs, strict=False)
    return torch.export.export(model, inputs, dynamic_shapes=dyn, strict=False)


def capture(model: torch.nn.Module, example_inputs: Any, *, dynamic_batch: bool = True) -> fx.GraphModule:
    """Export ``model`` (in eval mode) with ``example_inputs`` into a GraphModule of core ATen
    ops (plus ``aten.linear``) whose parameters are copies of the model's.

    With ``dynamic_batch`` the leading dimension of every input is left symbolic where the
    model allows it (torch.export's ``Dim.AUTO``: it silently falls back to the example's
    size if the model fixes it). A model in training mode is captured in eval mode, with a warning (the "qcompiler"
    logger) naming its BatchNorm/dropout modules in training mode; every module's train/eval
    flag is restored afterwards.
    Raises CaptureError naming the model class, the submodule and the source line that failed.
    """
    if not isinstance(model, torch.nn.Module):
        raise CaptureError(f"capture() takes a torch.nn.Module, got {type(model).__name__}")
    inputs = _as_tuple(example_inputs)
    _check_float32(model)
    check_example_inputs(model, inputs)
    _check_arity(model, inputs)
    modes = {m: m.training for m in model.modules()}
    _warn_training(model)
    model.eval()
    stack = _ModuleStack(model)
    try:
        with _quiet_torch_logs():
            exported = _export(model, inputs, dynamic_batch, stack)
            gm = exported.run_decompositions(_decomposition_table()).module()
    except Exception as exc:  # torch raises many kinds; all become one clear error
        where = " > ".join(stack.stack) or type(model).__name__
        line = _user_frame(exc)
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CaptureError(
            f"could not capture {type(model).__name__} with torch.export.\n"
            f"  failing module: {where}\n"
            + (f"  failing line:   {line}\n" if line else "")
            + f"  torch says:     {type(exc).__name__}: {first_line}\n"
            + _dtype_hint(model, inputs, exc)
            + "  what to try: make the model's forward free of Python control flow on tensor values "
            "(use torch.where / torch.cond), of .item()/.tolist() and of in-place changes to module "
            "state; pass example_inputs with the shapes you will run; or capture the submodule "
            "that exports and handle the rest outside. The full torch error is chained below."
        ) from exc
    finally:
        stack.remove()
        for m, mode in modes.items():  # each module's own flag, as the user set it
            m.training = mode
    if not _outputs_hold_tensors(gm):
        raise CaptureError(f"{type(model).__name__}.forward returns no tensor (it returned a constant: None, a string or "
                           f"numbers), so there is nothing to quantize. Fix: return the output tensor(s), e.g. "
                           f"`return y` or a tuple/dict of tensors")
    for name, p in list(gm.named_parameters()):
        owner = gm.get_submodule(name.rpartition(".")[0]) if "." in name else gm
        owner._parameters[name.rpartition(".")[2]] = torch.nn.Parameter(p.detach().clone(), requires_grad=False)
    for name, b in list(gm.named_buffers()):
        owner = gm.get_submodule(name.rpartition(".")[0]) if "." in name else gm
        owner._buffers[name.rpartition(".")[2]] = b.detach().clone()
    gm.meta[meta.MODEL_CLASS] = type(model).__name__
    gm.meta[meta.EXAMPLE_INPUTS] = inputs
    return gm
