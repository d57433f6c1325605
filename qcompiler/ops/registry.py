"""The op registry: every op an integer program can hold is one row (``OpDef``) of one list,
``OPS``, and everything qcompiler knows about it is in that row, written in the op's own file
under ``qcompiler/ops/``:

    schema       its torch.library schema (integer ops, namespace ``qcompiler``)
    reference    the numpy reference the interpreter runs (exact, int64 inside)
    sources      the float ATen ops whose quantized form it computes, each with its
                 quantization kind (how ``insert_quantizers`` places quantizers around it)
    rules        the simulation → integer conversion: rows of (pattern, rewrite); a rewrite
                 that returns None declines and the next rule is tried
    lowering     its TVM Relax lowering ``fn(ctx, node, args, kwargs)``; it reaches TVM only
                 through ``ctx`` (targets/relax_context.py), so ``import qcompiler`` does
                 not load TVM
    macs, data_args, kernel_words   what the compile report needs

The converter (``qcompiler/integer.py``), the interpreter, ``insert_quantizers``, the
lowering (``targets/lower.py``) and the report all read this list. ``register_op`` adds a
row (docs/custom-op.md).

Quantization kinds of a source op:

    weighted     conv / linear: int8 weights, int32 accumulation, own output quantizer
    activation   relu / relu6 / hardtanh / clamp: fused into the producer's output quantizer,
                 or (standalone) re-quantized with its input's parameters
    own          add, mul, cat, matmul, and unary ops run as a 256-entry table: own output quantizer
    shared       average pooling / spatial mean: output re-quantized with the input's parameters
    passthrough  layout ops, max pooling, zero padding, nearest upsampling: integer values
                 flow through unchanged
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Optional, Union

import numpy as np
import torch
import torch.fx as fx

from ..errors import QCompilerError

WEIGHTED = "weighted"
ACTIVATION = "activation"
OWN = "own"
SHARED = "shared"
PASSTHROUGH = "passthrough"
KINDS = (WEIGHTED, ACTIVATION, OWN, SHARED, PASSTHROUGH)

TORCH_TO_NUMPY = {torch.uint8: np.uint8, torch.int8: np.int8, torch.int16: np.int16, torch.uint16: np.uint16,
                  torch.int32: np.int32, torch.int64: np.int64, torch.float32: np.float32}

NodeCheck = Callable[[fx.Node], str]
Lowering = Callable[[Any, fx.Node, tuple, dict], Any]


class OpRegistryError(QCompilerError):
    """An op row is malformed or clashes with a registered one."""


@dataclass(frozen=True)
class Source:
    """A float ATen op whose quantized form an integer op computes.

    kind: one of KINDS (module docstring).
    check: ``check(node) -> str``: '' if this node's arguments have an integer form, else
        why not (the op then needs a float fallback), e.g. padding by a non-zero value.
    bounds: for an activation, ``bounds(node) -> (lo, hi)``: its clip bounds as Python
        numbers (None = unbounded).
    on_integers: for a passthrough op, ``on_integers(cv, node, x) -> fx.Node``: the node
        that computes it on the integer value ``x`` (an ``IntValue``) in the program; the
        default runs the same op on the integers.
    integer_outputs: for an op that returns a tuple (read through ``getitem``), the index
        of the one output that has an integer form (a max pool's values, BatchNorm's
        normalized output); None: every output has one (split). For a passthrough op,
        ``on_integers`` then returns that output's integer node; for an own/shared/weighted
        op, its output quantizer sits on ``getitem(op, k)`` and its rules are tried there
        with ``match.node`` the op itself.
    keep_whole: capture keeps this op whole instead of decomposing it (``torch.export``'s
        default decompositions would split it into several ops, e.g. ``aten.pad`` with
        mode="reflect" into index arithmetic, ``aten.linear`` into permute + addmm).
    """

    kind: str
    check: Optional[NodeCheck] = None
    bounds: Optional[Callable[[fx.Node], tuple]] = None
    on_integers: Optional[Callable[[Any, fx.Node, Any], fx.Node]] = None
    integer_outputs: Optional[int] = None
    keep_whole: bool = False


@dataclass(frozen=True)
class Rule:
    """A rewrite of the simulation into the integer program, tried at each output quantizer
    ``Q(act…(op(DQ…)))``: ``pattern`` are the ATen ops ``op`` it applies to;
    ``rewrite(cv, match) -> fx.Node | None`` builds the integer op (through the converter
    ``cv``; ``match`` is a ``convert.Match``) or declines with None.
    ``fuses_activations``: the rule takes the clamp-like activations between ``op`` and the
    quantizer into its output bounds (otherwise it is tried only when there are none)."""

    pattern: tuple
    rewrite: Callable[[Any, Any], Optional[fx.Node]]
    fuses_activations: bool = False


OutDtype = Union[int, str, None]


@dataclass(frozen=True)
class OpDef:
    """One op of integer programs (module docstring for the fields).

    name: the qcompiler op name ("conv2d"), or, for an ATen op that runs on integer values
        as it is (a layout op), its overload name ("aten.view.default").
    schema: torch.library schema of a qcompiler op, "(Tensor x, ...) -> Tensor"; None for
        an ATen op (``aten`` is then the op itself).
    reference: numpy function of the op's arguments (without ``out_dtype``'s argument).
    out_dtype: where the result's dtype comes from: the index of a ``ScalarType`` argument,
        "input" (the first argument's), "table" (the second's), "float32", or None (the
        reference's own, for ATen ops).
    """

    name: str
    doc: str
    schema: Optional[str] = None
    aten: Any = None
    reference: Optional[Callable] = None
    out_dtype: OutDtype = None
    lowering: Optional[Lowering] = None
    sources: Mapping[Any, Source] = field(default_factory=dict)
    rules: tuple[Rule, ...] = ()
    macs: Optional[Callable[[fx.GraphModule, fx.Node, tuple], int]] = None
    data_args: tuple[tuple[int, Optional[int]], ...] = ()
    kernel_words: tuple[str, ...] = ()

    @property
    def target(self) -> Any:
        """The fx target of this op's nodes in integer programs."""
        if self.schema is None:
            return self.aten
        return getattr(torch.ops.qcompiler, self.name).default

    def result_dtype(self, args: tuple) -> Any:
        """The numpy dtype of the result for (numpy) ``args``; None: the reference's own."""
        where = self.out_dtype
        if where == "float32":
            return np.float32
        if where == "input":
            return np.asarray(args[0]).dtype
        if where == "table":
            return np.asarray(args[1]).dtype
        if isinstance(where, int):
            return TORCH_TO_NUMPY[args[where]]
        return None

    def run(self, args: tuple, kwargs: Optional[dict] = None) -> Any:
        """The reference on numpy arguments, in the op's storage dtype."""
        if self.reference is None:
            raise OpRegistryError(f"op {self.name} has no numpy reference")
        ref_args = [a for i, a in enumerate(args) if not (isinstance(self.out_dtype, int) and i == self.out_dtype)]
        value = self.reference(*ref_args, **(kwargs or {}))
        dtype = self.result_dtype(args)
        return value if dtype is None else np.asarray(value).astype(dtype)


OPS: list[OpDef] = []
"""Every registered op, in registration order (the order rules are tried in)."""

_BY_TARGET: dict[Any, OpDef] = {}
_BY_NAME: dict[str, OpDef] = {}
_SOURCES: dict[Any, Source] = {}
_LIB = torch.library.Library("qcompiler", "DEF")


def _validate(op: OpDef) -> list[str]:
    problems = []
    if op.schema is None and op.aten is None:
        problems.append("a row needs a schema (a qcompiler op) or aten (an ATen op run on integers)")
    if op.schema is not None and not (op.schema.startswith("(") and "->" in op.schema):
        problems.append(f"schema {op.schema!r} is not of the form '(Tensor x, ...) -> Tensor'")
    if op.reference is None:
        problems.append("no numpy reference (the interpreter runs it)")
    for target, source in op.sources.items():
        if source.kind not in KINDS:
            problems.append(f"source {op_name(target)}: kind {source.kind!r} is not one of {', '.join(KINDS)}")
        owner = next((o for o in OPS if target in o.sources and o.name != op.name), None)
        if owner is not None:
            problems.append(f"source {op_name(target)} is already a source of op {owner.name}")
    for rule in op.rules:
        if not rule.pattern or not callable(rule.rewrite):
            problems.append(f"rule {rule!r} needs a non-empty pattern and a rewrite function")
    return problems


def register_op(op: OpDef, replace: bool = False) -> OpDef:
    """Add ``op`` to ``OPS`` (a qcompiler op is defined in torch.library, its CPU
    implementation the numpy reference). ``replace=True`` replaces a row of the same name
    (a qcompiler op's schema cannot change). Raises OpRegistryError listing every problem
    of the row. Returns ``op``."""
    problems = _validate(op)
    old = _BY_NAME.get(op.name)
    if old is not None and not replace:
        problems.append(f"an op named {op.name!r} is registered already (pass replace=True to replace it)")
    if old is not None and replace and old.schema != op.schema:
        problems.append(f"op {op.name!r} is defined with schema {old.schema!r}; a replacement must keep it")
    if problems:
        raise OpRegistryError(f"cannot register op {op.name!r}:\n" + "\n".join(f"  - {p}" for p in problems))
    if op.schema is not None and old is None:
        try:
            _LIB.define(f"{op.name}{op.schema}")
        except RuntimeError as exc:
            raise OpRegistryError(f"cannot register op {op.name!r}: torch.library cannot parse its schema "
                                  f"{op.schema!r}:\n{exc}") from exc
        _LIB.impl(op.name, _torch_impl(op.name), "CPU")
    if old is not None:
        OPS[OPS.index(old)] = op
    else:
        OPS.append(op)
    _reindex()
    return op


def _reindex() -> None:
    _BY_TARGET.clear()
    _BY_NAME.clear()
    _SOURCES.clear()
    for op in OPS:
        _BY_NAME[op.name] = op
        _BY_TARGET[op.target] = op
        _SOURCES.update(op.sources)


def _to_numpy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
        return [_to_numpy(v) for v in value]
    return value


def _torch_impl(name: str) -> Callable:
    def impl(*args):
        op = _BY_NAME[name]
        return torch.from_numpy(np.ascontiguousarray(op.run(tuple(_to_numpy(a) for a in args))))
    return impl


# ---------------------------------------------------------------- lookups


def get_op(name: str) -> OpDef:
    """The row called ``name``; OpRegistryError naming the known ones otherwise."""
    if name not in _BY_NAME:
        raise OpRegistryError(f"no op named {name!r}; registered: {', '.join(_BY_NAME)}")
    return _BY_NAME[name]


def find_op(name: str) -> Optional[OpDef]:
    """The row called ``name``, or None."""
    return _BY_NAME.get(name)


def op_for_target(target: Any) -> Optional[OpDef]:
    """The row of a program node's target (a qcompiler op or an ATen op run on integers)."""
    try:
        return _BY_TARGET.get(target)
    except TypeError:  # an unhashable target
        return None


def op_of(target: Any) -> Optional[str]:
    """The qcompiler op name of an fx target ("conv2d"), or None for anything else."""
    if isinstance(target, torch._ops.OpOverload) and target.namespace == "qcompiler":
        return target._schema.name.split("::")[1]
    return None


def source_of(target: Any) -> Optional[Source]:
    """How the float op ``target`` takes part in quantization, or None if no op computes it."""
    try:
        return _SOURCES.get(target)
    except TypeError:
        return None


def keep_whole_ops() -> list:
    """The float ops capture keeps whole (every registered source with ``keep_whole``)."""
    return [target for target, source in _SOURCES.items() if source.keep_whole]


def op_kind(target: Any) -> Optional[str]:
    """The quantization kind of the float op ``target`` (KINDS), or None."""
    source = source_of(target)
    return None if source is None else source.kind


def rules_for(target: Any) -> list[Rule]:
    """The conversion rules whose pattern holds ``target``, in ``OPS`` order."""
    return [rule for op in OPS for rule in op.rules if target in rule.pattern]


def fuses_activations(target: Any) -> bool:
    """Whether a conversion rule of ``target`` takes the activations after it into its bounds."""
    return any(rule.fuses_activations for rule in rules_for(target))


def arg_check(node: fx.Node) -> str:
    """'' if the node's arguments have an integer form (or it has no check), else why not."""
    source = source_of(node.target)
    return source.check(node) if source is not None and source.check is not None else ""


class SourceView(Mapping):
    """A live read-only view {ATen op: its Source's ``attribute``} of the registry's sources
    that have one (for code that reads a table, e.g. ``CLAMP_BOUNDS[node.target](node)``)."""

    def __init__(self, attribute: str):
        self.attribute = attribute

    def __getitem__(self, target: Any) -> Callable:
        value = getattr(_SOURCES[target], self.attribute)
        if value is None:
            raise KeyError(target)
        return value

    def __iter__(self) -> Iterator:
        return (t for t, source in _SOURCES.items() if getattr(source, self.attribute) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def op_name(target: Any) -> str:
    """'aten.convolution.default' for an OpOverload, the function name otherwise."""
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    return getattr(target, "__name__", str(target))


def op_arg(node: fx.Node, index: int, name: str, default: Any) -> Any:
    """Argument ``index`` of a call node, or its keyword ``name``, or ``default``."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)
