"""Passes and the PassManager.

A pass is a class with a contract (after torch.fx's pass infra): ``requires`` checks what it
needs, ``run`` rewrites the graph, ``ensures`` checks what it promises, and ``preserves``
plus ``tolerance`` state how close the function after the pass is to the function before.
``@register_pass(after=..., before=...)`` adds it to the registry under a name; the
PassManager orders the passes it is given from those constraints (a networkx DAG), lints the
graph after each pass, times each pass, and in verify mode runs the example inputs before
and after each pass and records the error it introduced.
"""
from __future__ import annotations

import io
import re
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Optional, Sequence, Union

import networkx as nx
import torch
import torch.fx as fx
from torch.utils._pytree import tree_leaves

from .errors import PassError, PassOrderError, QCompilerError, did_you_mean
from .inputs import InputError
from .verify import verify_graph

PRESERVES_KINDS = ("function", "function_up_to_fp", "nothing")


@dataclass
class PassResult:
    """What a pass returns: the graph module, whether it changed anything, and one line
    saying what it did (shown in the report). ``Pass.__call__`` fills in how many ops were
    added, removed or rewired and how many constant tensors are new or changed."""

    gm: fx.GraphModule
    modified: bool
    summary: str = ""
    changed_ops: int = 0
    changed_tensors: int = 0


@dataclass
class PassContext:
    """Shared by the passes of one PassManager run.

    ``example_inputs`` are the inputs verify mode runs; ``state`` is a dict passes may use to
    hand information to later passes; ``notes`` collects per-pass remarks for the report;
    ``progress`` is whether a long pass shows a progress bar (None: on a terminal or in a
    notebook; qcompiler.progress).
    """

    example_inputs: Optional[tuple] = None
    state: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)
    progress: Optional[bool] = None


class Pass:
    """Base class of a graph pass. Subclasses set ``preserves`` and implement ``run``.

    preserves: "function" (outputs equal to float rounding, relative error <= ``tolerance``,
    1e-6 by default), "function_up_to_fp" (the pass states its ``tolerance``), or "nothing"
    (e.g. quantization; no bound is checked).
    """

    name: ClassVar[str] = ""
    preserves: ClassVar[str] = "function"
    tolerance: ClassVar[float] = 1e-6
    after: ClassVar[tuple[str, ...]] = ()
    before: ClassVar[tuple[str, ...]] = ()

    def requires(self, gm: fx.GraphModule, ctx: PassContext) -> None:
        """Raise a QCompilerError if ``gm`` is not something this pass can run on."""

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> Union[fx.GraphModule, PassResult]:
        raise NotImplementedError(f"pass {type(self).__name__} does not implement run()")

    def ensures(self, gm: fx.GraphModule, ctx: PassContext) -> None:
        """Raise a QCompilerError if the pass did not establish what it promises."""

    def __call__(self, gm: fx.GraphModule, ctx: Optional[PassContext] = None) -> PassResult:
        """requires → run → ensures, and recompile. Returns a PassResult."""
        ctx = ctx or PassContext()
        before = _snapshot(gm)
        self.requires(gm, ctx)
        out = self.run(gm, ctx)
        result = out if isinstance(out, PassResult) else PassResult(out, modified=False)
        result.gm.recompile()
        result.changed_ops, result.changed_tensors = _count_changes(before, _snapshot(result.gm))
        result.modified = result.modified or result.changed_ops + result.changed_tensors > 0
        self.ensures(result.gm, ctx)
        return result

    def __repr__(self) -> str:
        return f"<pass {self.name or type(self).__name__}>"


PassLike = Union[str, Pass, type]
REGISTRY: dict[str, type] = {}


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def register_pass(after: Iterable[str] = (), before: Iterable[str] = (), name: Optional[str] = None):
    """Class decorator: register a Pass subclass under ``name`` (default: the class name in
    snake_case) with ordering constraints: it runs after every pass in ``after`` and before
    every pass in ``before`` that is in the same PassManager."""

    def deco(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, Pass)):
            raise TypeError(f"@register_pass decorates a subclass of qcompiler.Pass, not {cls!r}")
        if cls.preserves not in PRESERVES_KINDS:
            raise TypeError(f"pass {cls.__name__}: preserves must be one of {PRESERVES_KINDS}, got {cls.preserves!r}")
        cls.name = name or _snake(cls.__name__)
        cls.after = tuple(after)
        cls.before = tuple(before)
        old = REGISTRY.get(cls.name)
        if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            warnings.warn(f"pass '{cls.name}' ({old.__module__}.{old.__qualname__}) is replaced by {cls.__module__}.{cls.__qualname__}", stacklevel=2)
        REGISTRY[cls.name] = cls
        return cls

    return deco


def _load_builtin_passes() -> None:
    import qcompiler.passes  # noqa: F401  (registers fold_bn, equalize, ...)


def get_pass(spec: PassLike) -> Pass:
    """A Pass instance from a registered name, a Pass subclass or an instance."""
    if isinstance(spec, Pass):
        return spec
    if isinstance(spec, type) and issubclass(spec, Pass):
        return spec()
    if isinstance(spec, str):
        _load_builtin_passes()
        if spec not in REGISTRY:
            raise PassOrderError(
                f"no pass named '{spec}'{did_you_mean(spec, list(REGISTRY))}; registered passes: "
                f"{', '.join(sorted(REGISTRY))}. Register your own with @qcompiler.register_pass."
            )
        return REGISTRY[spec]()
    raise TypeError(f"a pass is given as a name, a Pass subclass or a Pass instance, not {spec!r}")


def order_passes(passes: Sequence[Pass]) -> list[Pass]:
    """Topologically order ``passes`` by their after/before constraints, keeping the given
    order where they leave it free. A constraint naming an unknown pass, two passes with one
    name, or a cycle is a PassOrderError that names the passes."""
    _load_builtin_passes()
    names = [p.name or type(p).__name__ for p in passes]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise PassOrderError(f"pass(es) {dupes} appear more than once in the pipeline; use steps= to repeat passes")
    known = set(REGISTRY) | set(names)
    graph = nx.DiGraph()
    graph.add_nodes_from(range(len(passes)))
    index = {n: i for i, n in enumerate(names)}
    for i, p in enumerate(passes):
        for rel, others in (("after", p.after), ("before", p.before)):
            for other in others:
                if other not in known:
                    raise PassOrderError(
                        f"pass '{names[i]}' is declared to run {rel} '{other}', which is not a registered pass"
                        f"{did_you_mean(other, sorted(known))}"
                    )
                if other in index:
                    edge = (index[other], i) if rel == "after" else (i, index[other])
                    graph.add_edge(*edge)
    try:
        order = list(nx.lexicographical_topological_sort(graph))
    except nx.NetworkXUnfeasible:
        cycle = nx.find_cycle(graph)
        path = " -> ".join(names[a] for a, _ in cycle) + f" -> {names[cycle[0][0]]}"
        raise PassOrderError(
            f"the pass constraints form a cycle: {path} (each arrow means 'runs before'). "
            "Remove one of these after=/before= constraints."
        ) from None
    return [passes[i] for i in order]


# ------------------------------------------------------------------------- report

@dataclass
class PassRecord:
    name: str
    seconds: float
    changed_ops: int
    changed_tensors: int
    modified: bool
    summary: str = ""
    max_abs_error: Optional[float] = None
    rel_error: Optional[float] = None
    total_rel_error: Optional[float] = None


@dataclass
class PassReport:
    """One row per pass run: time, ops and constant tensors changed, and (verify mode) the error it introduced
    relative to the graph before it, and the accumulated error relative to the input graph."""

    records: list[PassRecord] = field(default_factory=list)

    def table(self):
        from rich.table import Table

        t = Table(title="pass report")
        for col, just in (("pass", "left"), ("time (ms)", "right"), ("ops changed", "right"), ("tensors changed", "right"),
                          ("max abs err", "right"), ("rel err", "right"), ("total rel err", "right"), ("what it did", "left")):
            t.add_column(col, justify=just)
        fmt = lambda v: "-" if v is None else f"{v:.2e}"
        for r in self.records:
            t.add_row(r.name, f"{r.seconds * 1e3:.1f}", str(r.changed_ops), str(r.changed_tensors), fmt(r.max_abs_error),
                      fmt(r.rel_error), fmt(r.total_rel_error), r.summary)
        return t

    def __str__(self) -> str:
        from rich.console import Console

        console = Console(width=160, record=True, file=io.StringIO())
        console.print(self.table())
        return console.export_text()

    def __getitem__(self, name: str) -> PassRecord:
        for r in self.records:
            if r.name == name:
                return r
        raise KeyError(name)


@dataclass
class PassManagerResult:
    gm: fx.GraphModule
    report: PassReport
    ctx: PassContext


# ------------------------------------------------------------------------- the manager

def _run_graph(gm: fx.GraphModule, inputs: tuple) -> list[torch.Tensor]:
    with torch.no_grad():
        out = gm(*inputs)
    return [t.detach().clone() for t in tree_leaves(out) if isinstance(t, torch.Tensor) and t.is_floating_point()]


def output_error(reference: list[torch.Tensor], actual: list[torch.Tensor]) -> tuple[float, float]:
    """(max abs error, relative error = max abs error / max |reference|) over all outputs."""
    if len(reference) != len(actual):
        raise PassError(f"the pass changed the number of float outputs from {len(reference)} to {len(actual)}")
    max_abs, max_ref = 0.0, 0.0
    for r, a in zip(reference, actual):
        if r.shape != a.shape:
            raise PassError(f"the pass changed an output's shape from {tuple(r.shape)} to {tuple(a.shape)}")
        diff = (r.double() - a.double()).abs()
        if not torch.isfinite(diff).all():
            return float("inf"), float("inf")
        max_abs = max(max_abs, float(diff.max()) if diff.numel() else 0.0)
        max_ref = max(max_ref, float(r.abs().max()) if r.numel() else 0.0)
    return max_abs, max_abs / max(max_ref, 1e-30)


def _args_key(value: Any) -> Any:
    if isinstance(value, fx.Node):
        return ("node", value.name)
    if isinstance(value, (list, tuple)):
        return tuple(_args_key(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _args_key(v)) for k, v in value.items()))
    return repr(value)


def _snapshot(gm: fx.GraphModule) -> dict:
    from .graph import get_tensor

    snap = {}
    for n in gm.graph.nodes:
        tensor = None
        if n.op == "get_attr":
            try:
                t = get_tensor(gm, n)
                tensor = (t, t.detach().clone())
            except (AttributeError, TypeError):
                tensor = None
        snap[n.name] = ((n.op, str(n.target), _args_key(n.args), _args_key(n.kwargs)), tensor)
    return snap


def _count_changes(before: dict, after: dict) -> tuple[int, int]:
    """(ops added, removed or rewired; constant tensors added or changed in value)."""
    is_const = lambda snap, name: snap[name][0][0] == "get_attr"
    ops = sum(1 for n in before.keys() - after.keys() if not is_const(before, n))
    ops += sum(1 for n in after.keys() - before.keys() if not is_const(after, n))
    tensors = sum(1 for n in after.keys() - before.keys() if is_const(after, n))
    for name in before.keys() & after.keys():
        (sig_b, t_b), (sig_a, t_a) = before[name], after[name]
        if is_const(after, name):
            new = None if t_a is None else t_a[0]
            old_value = None if t_b is None else t_b[1]
            if new is not None and not (old_value is not None and old_value.shape == new.shape and torch.equal(old_value, new)):
                tensors += 1
        elif sig_b != sig_a:
            ops += 1
    return ops, tensors


class PassManager:
    """Runs passes in the order their constraints give.

    >>> pm = PassManager(["fold_bn", "equalize"], verify=True)
    >>> result = pm.run(gm, example_inputs)     # result.gm, result.report
    >>> print(result.report)

    lint: run the IR verifier after every pass (on by default).
    verify: run the example inputs before and after each pass; record the error and raise
        PassError if a pass exceeds the tolerance it declares.
    steps: repeat the whole pipeline until no pass changes anything, at most this many times.
    """

    def __init__(self, passes: Sequence[PassLike], *, verify: bool = False, lint: bool = True, steps: int = 1):
        self.passes = order_passes([get_pass(p) for p in passes])
        self.verify = verify
        self.lint = lint
        self.steps = steps

    @property
    def names(self) -> list[str]:
        return [p.name or type(p).__name__ for p in self.passes]

    def run(self, gm: fx.GraphModule, example_inputs: Any = None, ctx: Optional[PassContext] = None) -> PassManagerResult:
        if example_inputs is None:
            example_inputs = gm.meta.get("example_inputs")
        if isinstance(example_inputs, torch.Tensor):
            example_inputs = (example_inputs,)
        ctx = ctx or PassContext(example_inputs=example_inputs)
        if ctx.example_inputs is None:
            ctx.example_inputs = example_inputs
        if self.verify and ctx.example_inputs is None:
            raise PassError("verify=True needs example inputs: pass them to run() or capture the graph with qcompiler.capture")
        report = PassReport()
        original = _run_graph(gm, ctx.example_inputs) if self.verify else None
        done: list[str] = []
        for _step in range(self.steps):
            any_modified = False
            for p in self.passes:
                name = p.name or type(p).__name__
                reference = _run_graph(gm, ctx.example_inputs) if self.verify else None
                start = time.perf_counter()
                try:
                    result = p(gm, ctx)
                except InputError:
                    raise  # the user's data is at fault, not the pass: the error says which batch and why
                except Exception as exc:
                    history = ", ".join(f"'{d}'" for d in done) or "none"
                    kind = type(exc).__name__
                    raise PassError(f"pass '{name}' failed (passes run before it: {history}):\n  {kind}: {exc}") from exc
                seconds = time.perf_counter() - start
                gm = result.gm
                if self.lint:
                    try:
                        verify_graph(gm)
                    except QCompilerError as exc:
                        raise PassError(f"pass '{name}' left a {exc}") from exc
                record = PassRecord(name, seconds, result.changed_ops, result.changed_tensors, result.modified, result.summary)
                if self.verify:
                    after = _run_graph(gm, ctx.example_inputs)
                    record.max_abs_error, record.rel_error = output_error(reference, after)
                    record.total_rel_error = output_error(original, after)[1]
                    if p.preserves != "nothing" and not record.rel_error <= p.tolerance:
                        raise PassError(
                            f"pass '{name}' declares that it preserves the {p.preserves.replace('_', ' ')} "
                            f"(relative error <= {p.tolerance:g}) but changed the outputs by {record.rel_error:.3g} "
                            f"(max abs {record.max_abs_error:.3g}) on the example inputs"
                        )
                report.records.append(record)
                done.append(name)
                any_modified |= result.modified
            if not any_modified:
                break
        return PassManagerResult(gm, report, ctx)


def run_passes(gm: fx.GraphModule, passes: Sequence[PassLike], example_inputs: Any = None, **kwargs) -> PassManagerResult:
    """Shorthand for ``PassManager(passes, **kwargs).run(gm, example_inputs)``."""
    return PassManager(passes, **kwargs).run(gm, example_inputs)
