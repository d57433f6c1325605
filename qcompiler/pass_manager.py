"""Passes and the PassManager.

A pass is a class with a contract (after torch.fx's pass infra): ``requires`` checks what it
needs, ``run`` rewrites the graph, ``ensures`` checks what it promises, and ``preserves``
plus ``tolerance`` state how close the function after the pass is to the function before.
``requires`` and ``ensures`` return every unmet condition at once (a list of ``Problem``s,
each with its fix), or raise a QCompilerError themselves.
``@register_pass(after=..., before=...)`` adds it to the registry under a name; the
PassManager orders the passes it is given from those constraints (a networkx DAG), lints the
graph after each pass, runs the checks registered with ``add_checks`` or
``checks_after_every_pass``, times each pass, and in verify mode runs the example inputs
before and after each pass and records the error it introduced.

This module never imports the built-in passes (``qcompiler.passes``): they register
themselves when that package is imported, which ``import qcompiler`` does.
"""
from __future__ import annotations

import contextlib
import inspect
import re
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Iterator, Optional, Sequence, Union

import networkx as nx
import torch
import torch.fx as fx
from torch.utils._pytree import tree_leaves

from . import meta
from .errors import PassError, PassOrderError, QCompilerError, UnsupportedOpError, did_you_mean
from .graph import get_tensor
from .inputs import InputError
from .pass_report import PassRecord, PassReport
from .verify import verify_graph

PRESERVES_KINDS = ("function", "function_up_to_fp", "nothing")


@dataclass
class PassResult:
    """What a pass returns: the graph module, whether it changed anything, one line saying
    what it did (shown in the report), and ``counts``: what it did as numbers, keyed by what
    they count (e.g. ``{"folded": 2, "left_alone": 1}``), for tests and tools to read
    instead of the summary. ``Pass.__call__`` fills in how many ops were added, removed or
    rewired and how many constant tensors are new or changed."""

    gm: fx.GraphModule
    modified: bool
    summary: str = ""
    changed_ops: int = 0
    changed_tensors: int = 0
    counts: dict[str, int] = field(default_factory=dict)


# What ``PassContext(state=...)`` used to carry for the built-in passes, now typed fields.
_FORMER_STATE_KEYS = ("calibration", "float_graph")


@dataclass
class PassContext:
    """Shared by the passes of one PassManager run.

    example_inputs: the inputs verify mode runs (and the shapes calibration batches must
        have), a tuple of the graph's positional inputs.
    calibration: the calibration data (a DataLoader, a list of batches, or one tensor of
        samples; qcompiler.inputs.calibration_source) that calibrate and the PTQ passes run.
    float_graph: the float reference (the graph after the float passes) that the PTQ passes
        (bias_correction, adaround) compare the simulation with.
    progress: whether a long pass shows a progress bar (None: on a terminal or in a
        notebook; qcompiler.progress).
    notes: per-pass remarks for the report, keyed by pass name.
    state: for your own passes to hand data to later ones; the built-in passes never read
        or write it (what they share is a field above).
    """

    example_inputs: Optional[tuple] = None
    state: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    progress: Optional[bool] = None
    calibration: Optional[Iterable] = None
    float_graph: Optional[fx.GraphModule] = None

    def __post_init__(self) -> None:
        self.check_state()

    def check_state(self) -> None:
        """Refuse the ``state`` keys the built-in passes used to read: they are fields now,
        and data left under the old key would be silently ignored."""
        old = sorted(set(self.state) & set(_FORMER_STATE_KEYS))
        if old:
            fixes = ", ".join(f"state['{k}'] -> PassContext({k}=...)" for k in old)
            raise PassError(f"PassContext.state no longer carries {old} for the built-in passes; they are typed fields: {fixes}")


@dataclass(frozen=True)
class Problem:
    """One unmet precondition (``requires``) or broken promise (``ensures``): what is wrong,
    and how to fix it."""

    what: str
    fix: str = ""

    def __str__(self) -> str:
        return self.what + (f". Fix: {self.fix}" if self.fix else "")


class ContractError(PassError):
    """A pass's ``requires`` or ``ensures`` found problems; the message lists all of them."""

    def __init__(self, pass_name: str, side: str, problems: Sequence[Union[Problem, str]], history: Optional[str] = None):
        self.pass_name, self.side, self.problems = pass_name, side, list(problems)
        heading = ("cannot run on this graph" if side == "requires" else "did not establish what it promises")
        where = f"; passes run before it: {history}" if history is not None else ""
        super().__init__(f"pass '{pass_name}' {heading} ({side}, {len(self.problems)} problem(s){where}):\n  - "
                         + "\n  - ".join(str(p) for p in self.problems))


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

    def requires(self, gm: fx.GraphModule, ctx: PassContext) -> Optional[Sequence[Union[Problem, str]]]:
        """Every reason ``gm`` (with ``ctx``) is not something this pass can run on, as a list
        of Problems (empty or None: it can run). Raising a QCompilerError works too."""
        return None

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> Union[fx.GraphModule, PassResult]:
        raise NotImplementedError(f"pass {type(self).__name__} does not implement run()")

    def ensures(self, gm: fx.GraphModule, ctx: PassContext) -> Optional[Sequence[Union[Problem, str]]]:
        """Every way the pass did not establish what it promises, as a list of Problems
        (empty or None: it did). Raising a QCompilerError works too."""
        return None

    def __call__(self, gm: fx.GraphModule, ctx: Optional[PassContext] = None) -> PassResult:
        """requires → run → ensures, and recompile. Returns a PassResult. Problems found by
        requires or ensures raise one ContractError that lists them all."""
        ctx = ctx or PassContext()
        name = self.name or type(self).__name__
        before = _snapshot(gm)
        problems = self.requires(gm, ctx)
        if problems:
            raise ContractError(name, "requires", problems)
        out = self.run(gm, ctx)
        result = out if isinstance(out, PassResult) else PassResult(out, modified=False)
        result.gm.recompile()
        result.changed_ops, result.changed_tensors = _count_changes(before, _snapshot(result.gm))
        result.modified = result.modified or result.changed_ops + result.changed_tensors > 0
        problems = self.ensures(result.gm, ctx)
        if problems:
            raise ContractError(name, "ensures", problems)
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


def get_pass(spec: PassLike) -> Pass:
    """A Pass instance from a registered name, a Pass subclass or an instance."""
    if isinstance(spec, Pass):
        return spec
    if isinstance(spec, type) and issubclass(spec, Pass):
        return spec()
    if isinstance(spec, str):
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


GraphCheck = Callable[[fx.GraphModule], None]
_CHECKS_AFTER_EVERY_PASS: list[GraphCheck] = []


def _check_signature(check: Any) -> None:
    """torch.fx's add_checks rule: a check is a callable taking the graph module alone."""
    if not callable(check):
        raise TypeError(f"a graph check is a callable taking the GraphModule, not {check!r}")
    try:
        inspect.signature(check).bind(None)
    except TypeError:
        raise TypeError(f"a graph check takes exactly one argument, the GraphModule; "
                        f"{getattr(check, '__name__', check)}{inspect.signature(check)} does not") from None
    except ValueError:  # builtins without a signature: trust them
        pass


@contextlib.contextmanager
def checks_after_every_pass(*checks: GraphCheck) -> Iterator[None]:
    """Within this block, every PassManager runs ``checks`` (each takes the graph module and
    raises on a problem) after every pass, whatever its ``lint`` setting: the tests run the
    IR verifier after every pass this way (tests/conftest.py). A failing check is a
    PassError naming the pass."""
    for check in checks:
        _check_signature(check)
    _CHECKS_AFTER_EVERY_PASS.extend(checks)
    try:
        yield
    finally:
        for check in checks:
            _CHECKS_AFTER_EVERY_PASS.remove(check)


class PassManager:
    """Runs passes in the order their constraints give.

    >>> pm = PassManager(["fold_bn", "equalize"], verify=True)
    >>> result = pm.run(gm, example_inputs)     # result.gm, result.report
    >>> print(result.report)

    lint: run the IR verifier (qcompiler.verify_graph) after every pass (on by default).
    verify: run the example inputs before and after each pass; record the error and raise
        PassError if a pass exceeds the tolerance it declares.
    steps: repeat the whole pipeline until no pass changes anything, at most this many times.
    checks: more graph checks to run after every pass (also ``add_checks``); see also
        ``checks_after_every_pass``.
    """

    def __init__(self, passes: Sequence[PassLike], *, verify: bool = False, lint: bool = True, steps: int = 1,
                 checks: Sequence[GraphCheck] = ()):
        self.passes = order_passes([get_pass(p) for p in passes])
        self.verify = verify
        self.lint = lint
        self.steps = steps
        self.checks: list[GraphCheck] = []
        for check in checks:
            self.add_checks(check)

    def add_checks(self, check: GraphCheck) -> None:
        """Run ``check(gm)`` after every pass; it raises to report a problem. A callable that
        does not take exactly the graph module is a TypeError."""
        _check_signature(check)
        self.checks.append(check)

    @property
    def names(self) -> list[str]:
        return [p.name or type(p).__name__ for p in self.passes]

    def _checks(self) -> list[GraphCheck]:
        checks = ([verify_graph] if self.lint else []) + self.checks + _CHECKS_AFTER_EVERY_PASS
        return list(dict.fromkeys(checks))  # the verifier once, even when both lint and a global check name it

    def _run_checks(self, name: str, gm: fx.GraphModule) -> None:
        for check in self._checks():
            try:
                check(gm)
            except QCompilerError as exc:
                raise PassError(f"pass '{name}' left a {exc}") from exc
            except Exception as exc:
                check_name = getattr(check, "__name__", repr(check))
                raise PassError(f"pass '{name}' failed the check {check_name}: {type(exc).__name__}: {exc}") from exc

    def run(self, gm: fx.GraphModule, example_inputs: Any = None, ctx: Optional[PassContext] = None) -> PassManagerResult:
        """Run the passes on ``gm``. ``example_inputs`` default to the ones capture stored;
        ``ctx`` carries calibration data and the float graph to passes that need them."""
        if example_inputs is None:
            example_inputs = gm.meta.get(meta.EXAMPLE_INPUTS)
        if isinstance(example_inputs, torch.Tensor):
            example_inputs = (example_inputs,)
        ctx = ctx or PassContext(example_inputs=example_inputs)
        ctx.check_state()
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
                except (InputError, UnsupportedOpError):
                    raise  # the user's data or model is at fault, not the pass: the error says what and the fix
                except ContractError as exc:
                    history = ", ".join(f"'{d}'" for d in done) or "none"
                    raise ContractError(exc.pass_name, exc.side, exc.problems, history) from exc
                except Exception as exc:
                    history = ", ".join(f"'{d}'" for d in done) or "none"
                    kind = type(exc).__name__
                    raise PassError(f"pass '{name}' failed (passes run before it: {history}):\n  {kind}: {exc}") from exc
                seconds = time.perf_counter() - start
                gm = result.gm
                self._run_checks(name, gm)
                record = PassRecord(name, seconds, result.changed_ops, result.changed_tensors, result.modified, result.summary,
                                    dict(result.counts))
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
