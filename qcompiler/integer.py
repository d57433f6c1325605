"""Convert the simulation (Q/DQ around float ops) into the integer program: an fx graph of
qcompiler's integer ops with every integer parameter explicit.

The conversion is the rule table of the op registry (``qcompiler/ops``): at each output
quantizer ``Q(act…(op(DQ…)))`` the rules whose pattern holds ``op`` are tried in order
(a rule that returns None declines); layout ops on integer values run through their
source's ``on_integers``. What is left:

  Q(float input)                               → qcompiler.quantize
  a value quantized again                      → the same integers, or qcompiler.requantize
  Q(float op(DQ…))  (fallback, or no rule)     → dequantize → float op → quantize
  graph output                                 → qcompiler.dequantize

It preserves the simulation's function up to one quantization step per op (tests compare
every op's integers with the simulation's).
"""
from __future__ import annotations

import copy
import operator
import warnings
from typing import Any, Optional

import numpy as np
import torch
import torch.fx as fx

from . import meta
from .errors import ConversionError
from .fixed_point import quantize_multiplier, quantize_values
from .graph import get_tensor, is_tuple_valued, node_label, produces_float
from .ops import ACTIVATION, PASSTHROUGH, WEIGHTED, IntValue, Match, QParams, op_kind, qc, rules_for, source_of
from .qparams import QuantParamsError, is_dequantize, is_quantize, read_qparams

aten = torch.ops.aten
INNER_BITS = 7  # an unquantized conv/linear output inside a fused PT2E pattern: int32 at 1/128 of the next step

__all__ = ["to_integer_program", "ConversionError", "IntValue"]


class _Converter:
    """The walk over the simulation, and the helpers conversion rules call (``cv``)."""

    def __init__(self, sim: fx.GraphModule, problems: Optional[list] = None):
        self.sim = sim
        self.problems = problems  # None: raise at the first node with no integer form; a list: collect them there
        self.root = torch.nn.Module()
        self.graph = fx.Graph()
        self.ints: dict[fx.Node, IntValue] = {}
        self.values: dict[Any, Any] = {}  # sim node -> new node (float tensors, sizes, ...)
        self.n_const = 0
        self.names: set[str] = set()
        # nodes insert_quantizers keeps in float (an override, the scheme's fallback ops): float ops in the program too
        self.float_nodes = {n.name for n in sim.graph.nodes if n.meta.get(meta.KEPT_FLOAT)}
        self.float_nodes |= {name for name, o in sim.meta.get(meta.OVERRIDES, {}).items() if getattr(o, "float", False)}
        with warnings.catch_warnings():  # torch's pytree warns when its specs are copied
            warnings.simplefilter("ignore", FutureWarning)
            self.graph._codegen = copy.deepcopy(sim.graph._codegen)  # same input/output structure as the model

    # -- helpers for rules ----------------------------------------------------------------
    def tensor(self, node_or_target) -> torch.Tensor:
        """A constant of the simulation (detached: PT2E graphs keep biases as Parameters)."""
        return get_tensor(self.sim, node_or_target).detach()

    def const(self, value, name: str) -> fx.Node:
        """A constant of the program (a buffer named ``name_<n>``) and its get_attr node."""
        tensor = torch.as_tensor(np.ascontiguousarray(value)) if not isinstance(value, torch.Tensor) else value
        target = f"{name}_{self.n_const}"
        self.n_const += 1
        self.root.register_buffer(target, tensor.clone())
        return self.graph.get_attr(target)

    def emit_for(self, sim_node: fx.Node, target, args: tuple, name: Optional[str] = None,
                 kwargs: Optional[dict] = None) -> fx.Node:
        """A new program node standing for ``sim_node`` (the simulation's quantize, or the
        layout op, it replaces), named ``name`` (default: after ``sim_node``)."""
        node = self.graph.call_function(target, args, kwargs or {})
        node.meta[meta.SIM_NODE] = sim_node.name
        wanted = name or sim_node.name
        if wanted not in self.names:
            node.name = wanted
        self.names.add(node.name)
        return node

    def emit(self, target, args: tuple, m: Match) -> fx.Node:
        """The integer op a rule builds for match ``m``."""
        return self.emit_for(m.q, target, args, m.name)

    def int_of(self, sim_node: Any, where: fx.Node) -> IntValue:
        """The integer value of a quantized sim node; ConversionError otherwise."""
        if isinstance(sim_node, fx.Node) and sim_node in self.ints:
            return self.ints[sim_node]
        raise ConversionError(f"{node_label(where)}: its input {sim_node!r} is not a quantized value (no quantize before it)")

    def float_of(self, sim_node: Any) -> Any:
        """The new-graph value of a sim argument, dequantizing integer values."""
        if isinstance(sim_node, (list, tuple)):
            return type(sim_node)(self.float_of(v) for v in sim_node)
        if not isinstance(sim_node, fx.Node):
            return sim_node
        if sim_node in self.ints:
            iv = self.ints[sim_node]
            key = ("dq", iv.node)
            if key not in self.values:
                self.values[key] = self.graph.call_function(qc.dequantize.default, (iv.node, iv.scale, iv.zp))
            return self.values[key]
        if sim_node in self.values:
            return self.values[sim_node]
        if sim_node.op == "get_attr":
            self.values[sim_node] = self.const(self.tensor(sim_node), sim_node.name)
            return self.values[sim_node]
        if is_dequantize(sim_node) and isinstance(sim_node.args[0], fx.Node) and sim_node.args[0].op == "get_attr":
            # a quantized weight read by an op that runs in float: the simulation's dequantized values
            self.values[sim_node] = self.const(self.constant_value(sim_node), sim_node.name)
            return self.values[sim_node]
        if op_kind(sim_node.target) == WEIGHTED and not self.sim.meta.get(meta.SCHEME) and sim_node.args[0] in self.ints:
            # a PT2E conv/linear with a float output (no quantizer after it): exact in int32, then dequantized
            iv = self.inner_value(sim_node, sim_node, self.float_output_step(sim_node))
            self.values[sim_node] = self.graph.call_function(qc.dequantize.default, (iv.node, iv.scale, iv.zp))
            return self.values[sim_node]
        if sim_node.op == "call_function" and (not self.sim.meta.get(meta.SCHEME) or not produces_float(sim_node)
                                               or self.from_constants(sim_node)):
            # index or shape arithmetic on integers (no quantization involved), or a float op
            # a PT2E quantizer left between dequantize and quantize: the same op in the program
            self.values[sim_node] = self.float_op(sim_node)
            return self.values[sim_node]
        raise ConversionError(f"node {node_label(sim_node)} has no value in the integer program")

    def operand(self, arg: Any, op: fx.Node, out: QParams) -> IntValue:
        """An integer operand: a quantized value, or a constant (a Python number or a float
        tensor) quantized on the output's scale."""
        if isinstance(arg, fx.Node) and arg in self.ints:
            return self.ints[arg]
        if isinstance(arg, fx.Node) and op_kind(arg.target) == WEIGHTED and arg not in self.values and len(arg.users) == 1:
            return self.inner_value(arg, op, out.scale)
        if isinstance(arg, fx.Node) and arg.op == "call_function" and self.from_constants(arg):
            value = self.float_of(arg)  # e.g. a class token expanded to the batch: computed, then quantized like the output
            node = self.graph.call_function(qc.quantize.default, (value, out.scale, out.zp, out.qmin, out.qmax, out.dtype))
            return IntValue(node, out.scale, out.zp, out.qmin, out.qmax, out.dtype)
        if isinstance(arg, fx.Node) and arg.op == "get_attr":
            value = self.tensor(arg).double().numpy()
        elif isinstance(arg, (int, float)):
            value = np.array(float(arg))
        else:
            raise ConversionError(f"{node_label(op)}: operand {arg!r} is neither quantized nor constant")
        qv = np.rint(value / out.scale).astype(np.int64)
        return IntValue(self.const(qv, f"{op.name}_const"), out.scale, 0, int(qv.min(initial=0)), int(qv.max(initial=0)), torch.int64)

    def from_constants(self, node: fx.Node) -> bool:
        """Whether ``node`` is computed from constants and shapes alone (no input data, no
        quantized value): such a value can be computed in the program and quantized there."""
        if node.op == "get_attr" or node.target == aten.sym_size.int:
            return True
        if node.op != "call_function" or node in self.ints or is_quantize(node) or is_dequantize(node):
            return False
        return all(self.from_constants(a) for a in node.all_input_nodes)

    def constant_value(self, node: fx.Node) -> torch.Tensor:
        """The value of a node computed from constants only (a weight's dequantize)."""
        if node.op == "get_attr":
            return self.tensor(node)
        args = [self.constant_value(a) if isinstance(a, fx.Node) else a for a in node.args]
        return node.target(*args, **node.kwargs)

    def float_output_step(self, layer: fx.Node) -> float:
        """The step ``inner_value`` takes for a conv/linear whose output stays float: it
        computes at 2^-INNER_BITS of it, which is 2^-30 of the largest output the layer's
        integer inputs allow (int32 cannot overflow, and the result stands for float)."""
        x = self.ints[layer.args[0]]
        w = self.constant_value(layer.args[1]).double()
        bias = layer.args[2] if len(layer.args) > 2 else None
        bias_max = float(self.constant_value(bias).abs().max()) if isinstance(bias, fx.Node) else 0.0
        x_max = x.scale * max(x.qmax - x.zp, x.zp - x.qmin)
        bound = float(w.abs().reshape(w.shape[0], -1).sum(1).max()) * x_max + bias_max
        return max(bound, 1e-30) / 2**30 * 2**INNER_BITS

    def inner_value(self, layer: fx.Node, op: fx.Node, out_step: float) -> IntValue:
        """The output of a conv/linear that a PT2E quantizer fused into ``op`` with no
        quantizer between them (X86InductorQuantizer's conv + add): computed in int32 at
        2^-INNER_BITS of ``out_step`` (the step of ``op``'s output), so that ``op``'s own
        rounding keeps the result within one step of the simulation's (2^-7 + 1/2 + 1/2 < 1.5,
        and both are integers)."""
        q_inner = 2**31 - 1
        inner = QParams(out_step / 2**INNER_BITS, 0, -q_inner, q_inner, torch.int32)
        node = self.convert(layer, inner, op)
        return IntValue(node, inner.scale, 0, inner.qmin, inner.qmax, torch.int32)

    def bounds(self, acts: list[fx.Node], out: QParams, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel integer clamp bounds of a fused activation chain (composed in order:
        clamp(clamp(x, a1, b1), a2, b2) = clamp(x, clamp(a1, a2, b2), clamp(b1, a2, b2)))."""
        lo = np.full(channels, -np.inf)
        hi = np.full(channels, np.inf)
        for act in acts:
            if act.target == aten.clamp.Tensor:  # per-channel bounds: tensors of the simulation
                a = [self.tensor(b).double().reshape(-1).numpy() if isinstance(b, fx.Node) else None
                     for b in (act.args[1] if len(act.args) > 1 else None, act.args[2] if len(act.args) > 2 else None)]
            else:
                a = list(source_of(act.target).bounds(act))
            a_lo = np.full(channels, -np.inf) if a[0] is None else np.broadcast_to(np.asarray(a[0], dtype=np.float64), (channels,))
            a_hi = np.full(channels, np.inf) if a[1] is None else np.broadcast_to(np.asarray(a[1], dtype=np.float64), (channels,))
            lo, hi = np.clip(lo, a_lo, a_hi), np.clip(hi, a_lo, a_hi)
        qlo = np.array([out.qmin if not np.isfinite(v) else self._q_bound(v, out) for v in lo], dtype=np.int64)
        qhi = np.array([out.qmax if not np.isfinite(v) else self._q_bound(v, out) for v in hi], dtype=np.int64)
        return qlo, qhi

    @staticmethod
    def _q_bound(v: float, out: QParams) -> int:
        return int(quantize_values(np.array([v], dtype=np.float32), out.scale, out.zp, out.qmin, out.qmax)[0])

    # -- the walk -------------------------------------------------------------------------
    def run(self) -> fx.GraphModule:
        for node in self.sim.graph.nodes:
            if node.op == "placeholder":
                self.values[node] = self.graph.placeholder(node.name)
                self.names.add(node.name)
            elif node.op == "get_attr" or (node.op == "call_module" and node.target == "_guards_fn"):
                continue
            elif node.op == "call_function":
                self.visit(node)
            elif node.op == "output":
                self.graph.output(self.float_of(node.args[0]))
            else:
                raise ConversionError(f"node {node_label(node)} ({node.op}) cannot be converted")
        program = fx.GraphModule(self.root, self.graph)
        program.meta[meta.INPUTS] = {n.name: (iv.scale, iv.zp, iv.qmin, iv.qmax, iv.dtype)
                                     for n, iv in self.ints.items() if n.args and n.args[0] in self.values and is_quantize(n)}
        return program

    def visit(self, node: fx.Node) -> None:
        t = node.target
        if node.meta.get(meta.KEPT_FLOAT) and is_tuple_valued(node):
            self.values[node] = self.float_op(node)  # a tuple-valued op kept in float: its getitems are read below
        elif t is operator.getitem and node.args[0] in self.values:
            self.values[node] = self.graph.call_function(t, (self.values[node.args[0]], node.args[1]))
        elif is_quantize(node):
            self.quantize(node)
        elif is_dequantize(node) and isinstance(node.args[0], fx.Node) and node.args[0].op == "get_attr":
            return  # weights and biases: read by the layer that uses them
        elif is_dequantize(node):
            self.ints[node] = self.int_of(node.args[0], node)
        elif t == aten.sym_size.int:
            src = node.args[0]
            tensor = self.ints[src].node if src in self.ints else self.float_of(src)
            self.values[node] = self.graph.call_function(t, (tensor, node.args[1]))
        elif isinstance(node.args[0] if node.args else None, fx.Node) and node.args[0] in self.ints and op_kind(t) == PASSTHROUGH \
                and node.name not in self.float_nodes:
            self.on_integers(node)
        # anything else is computed when the quantize after it is reached (or is float-only)

    def on_integers(self, node: fx.Node) -> None:
        """A passthrough op on an integer value: its source's ``on_integers``, or the same op
        on the integers; the result keeps the input's parameters. When collecting problems,
        one with no integer form is recorded and computed in float, quantized with its
        input's parameters (so the walk goes on)."""
        iv = self.ints[node.args[0]]
        convert = source_of(node.target).on_integers or self._same_op
        try:
            new = convert(self, node, iv)
        except ConversionError as exc:
            if self.problems is None:
                raise
            self.problems.append((node, str(exc)))
            new = self.graph.call_function(qc.quantize.default, (self.float_op(node), iv.scale, iv.zp, iv.qmin, iv.qmax, iv.dtype))
        self.ints[node] = IntValue(new, iv.scale, iv.zp, iv.qmin, iv.qmax, iv.dtype)

    def _same_op(self, cv: "_Converter", node: fx.Node, iv: IntValue) -> fx.Node:
        args = tuple(self.ints[a].node if isinstance(a, fx.Node) and a in self.ints else self.float_of(a) for a in node.args)
        return self.emit_for(node, node.target, args, kwargs={k: self.float_of(v) for k, v in node.kwargs.items()})

    def quantize(self, q: fx.Node) -> None:
        params = read_qparams(self.sim, q)
        try:
            scale, zp = params.scalar(f"value '{q.args[0].name}' (quantized by '{q.name}')")
        except QuantParamsError as e:
            raise ConversionError(str(e)) from None
        src, dtype = q.args[0], params.dtype
        out = QParams(scale, zp, params.qmin, params.qmax, dtype)
        if src in self.values or (isinstance(src, fx.Node) and src.op == "get_attr"):  # a float value: an edge quantizer
            new = self.emit_for(q, qc.quantize.default, (self.float_of(src), out.scale, out.zp, out.qmin, out.qmax, dtype),
                                f"{src.name}_quantize")
        else:
            new = self.convert(src, out, q)
        self.ints[q] = IntValue(new, out.scale, out.zp, out.qmin, out.qmax, dtype)

    def convert(self, src: fx.Node, out: QParams, q: fx.Node) -> fx.Node:
        """The program node for ``Q(src)``: the first rule of the registry that accepts it."""
        acts: list[fx.Node] = []
        base = src
        while op_kind(base.target) == ACTIVATION and base.args[0] not in self.ints:
            acts.insert(0, base)
            base = base.args[0]
        kept_float = [n.name for n in acts if n.name in self.float_nodes]
        if kept_float:
            raise ConversionError(f"{node_label(base)}: the activation(s) {kept_float} fused after it are kept in float by "
                                  f"an override, but it is not: override '{base.name}' as 'float' too")
        if base.name in self.float_nodes and not acts:
            return self.fallback(base, out, q)
        op = self.tuple_op(base)
        match = Match(op, acts, out, q, base.name)
        try:
            for rule in rules_for(op.target):
                if acts and not rule.fuses_activations:
                    continue
                new = rule.rewrite(self, match)
                if new is not None:
                    return new
        except ConversionError as exc:
            if self.problems is None and self.sim.meta.get(meta.SCHEME):
                raise
            if self.problems is not None:  # quantize collects every such node for one error
                self.problems.append((op, str(exc)))
            # else a PT2E graph: an op its quantizer left with a float input runs in float
            if acts:
                return self.fallback_chain(base, acts, out, q)
            return self.fallback(base, out, q)
        if acts:
            raise ConversionError(f"{node_label(acts[0])}: a fused activation after {node_label(base)} has no integer form")
        if op_kind(base.target) == PASSTHROUGH and base in self.ints:  # e.g. PT2E quantizes a flatten's output again
            return self.requantize_value(self.ints[base], out, q, base.name)
        return self.fallback(base, out, q)

    def requantize_value(self, x: IntValue, out: QParams, q: fx.Node, name: str) -> fx.Node:
        """A value quantized again: the same integers if the parameters match, else a rescale."""
        if (x.scale, x.zp, x.qmin, x.qmax, x.dtype) == (out.scale, out.zp, out.qmin, out.qmax, out.dtype):
            return x.node
        m, s = quantize_multiplier(x.scale / out.scale)
        return self.emit_for(q, qc.requantize.default, (x.node, x.zp, m, s, out.zp, out.qmin, out.qmax, out.dtype), name)

    def tuple_op(self, node: fx.Node) -> fx.Node:
        """For ``getitem(op, k)`` where ``k`` is the output of a tuple-valued op that has an
        integer form (``Source.integer_outputs``), the op itself (its rules match there);
        ``node`` otherwise."""
        if node.target is operator.getitem and isinstance(node.args[0], fx.Node):
            source = source_of(node.args[0].target)
            if source is not None and source.integer_outputs == node.args[1]:
                return node.args[0]
        return node

    def float_op(self, op: fx.Node) -> fx.Node:
        """``op`` run in float on the dequantized (or float) values of its arguments."""
        args = tuple(self.float_of(a) for a in op.args)
        kwargs = {k: self.float_of(v) for k, v in op.kwargs.items()}
        f = self.graph.call_function(op.target, args, kwargs)
        f.meta[meta.FLOAT_FALLBACK] = True
        return f

    def fallback_chain(self, base: fx.Node, acts: list, out: QParams, q: fx.Node) -> fx.Node:
        """``base`` and the activations fused after it, in float, then quantized."""
        self.values[base] = self.float_op(base)
        for act in acts[:-1]:
            self.values[act] = self.float_op(act)
        return self.fallback(acts[-1], out, q)

    def fallback(self, op: fx.Node, out: QParams, q: fx.Node) -> fx.Node:
        """A float op the scheme lets fall back: dequantize its inputs, run it, quantize.
        Output ``k`` of a tuple-valued op runs the op and takes its ``k``-th value."""
        if op.target is operator.getitem and isinstance(op.args[0], fx.Node) and op.args[0] not in self.values:
            f = self.graph.call_function(operator.getitem, (self.float_op(op.args[0]), op.args[1]))
        else:
            f = self.float_op(op)
        return self.emit_for(q, qc.quantize.default, (f, out.scale, out.zp, out.qmin, out.qmax, out.dtype), f"{op.name}_quantize")


def to_integer_program(sim: fx.GraphModule, problems: Optional[list] = None) -> fx.GraphModule:
    """The integer program of a simulation graph (see the module docstring). Raises
    ConversionError naming the node of a pattern with no integer form; with a list as
    ``problems``, appends (node, why) for each such node instead, computes it in float and
    goes on (quantize reports them all at once)."""
    program = _Converter(sim, problems).run()
    program.graph.lint()
    program.recompile()
    return program
