"""Convert the simulation (Q/DQ around float ops) into the integer program: an fx graph of
qcompiler's integer ops with every integer parameter explicit.

Pattern by pattern (``q`` int values, ``s, z`` their scale and zero point):
  Q(float input)                               → qcompiler.quantize
  Q(act…(conv|linear(DQ(x), DQ(w), b)))        → qcompiler.conv2d | linear   (fused clamp bounds)
  Q(act…(add|sub(DQ(a), DQ(b))))               → qcompiler.add
  Q(mul | matmul | cat | lut-op (DQ…))         → qcompiler.mul | matmul | concat | lut
  Q(mean | avg_pool(DQ(x)))                    → qcompiler.mean | avg_pool2d
  Q(clamp-op(DQ(x)))                           → qcompiler.requantize with clamp bounds
  layout op / max pool / zero pad on DQ(x)     → the same op on the integer values
  Q(float op(DQ…))  (fallback)                 → dequantize → float op → quantize
  graph output                                 → qcompiler.dequantize
"""
from __future__ import annotations

import copy
import math
import operator
import warnings
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
import torch.fx as fx

from .errors import QCompilerError
from .fixed_point import quantize_bias, quantize_multiplier, quantize_multipliers, quantize_values
from .graph import get_tensor, node_label
from .integer_ops import qc
from .quant_ops import ACTIVATION, CLAMP_BOUNDS, LUT_OPS, OWN, PASSTHROUGH, SHARED, WEIGHTED, op_kind

aten = torch.ops.aten
qd = torch.ops.quantized_decomposed
Q_OPS = {qd.quantize_per_tensor.default}
DQ_OPS = {qd.dequantize_per_tensor.default}
WEIGHT_DQ_OPS = {qd.dequantize_per_channel.default, qd.dequantize_per_tensor.default}
class ConversionError(QCompilerError):
    """The simulation has a pattern with no integer form."""


@dataclass
class IntValue:
    """An integer tensor of the program and the real values it stands for: s·(q − z)."""

    node: fx.Node
    scale: float
    zp: int
    qmin: int
    qmax: int
    dtype: torch.dtype


class _Converter:
    def __init__(self, sim: fx.GraphModule):
        self.sim = sim
        self.root = torch.nn.Module()
        self.graph = fx.Graph()
        self.ints: dict[fx.Node, IntValue] = {}
        self.values: dict[fx.Node, Any] = {}  # sim node -> new node (float tensors, sizes, ...)
        self.n_const = 0
        self.names: set[str] = set()
        # nodes an override keeps in float: they run as float ops in the program too
        self.float_nodes = {name for name, o in sim.meta.get("qc_overrides", {}).items() if getattr(o, "float", False)}
        with warnings.catch_warnings():  # torch's pytree warns when its specs are copied
            warnings.simplefilter("ignore", FutureWarning)
            self.graph._codegen = copy.deepcopy(sim.graph._codegen)  # same input/output structure as the model

    # -- helpers ---------------------------------------------------------------------------
    def tensor(self, node_or_target) -> torch.Tensor:
        """A constant of the simulation (detached: PT2E graphs keep biases as Parameters)."""
        return get_tensor(self.sim, node_or_target).detach()

    def const(self, value, name: str) -> fx.Node:
        tensor = torch.as_tensor(np.ascontiguousarray(value)) if not isinstance(value, torch.Tensor) else value
        target = f"{name}_{self.n_const}"
        self.n_const += 1
        self.root.register_buffer(target, tensor.clone())
        return self.graph.get_attr(target)

    def call(self, target, args: tuple, sim_node: fx.Node, name: Optional[str] = None) -> fx.Node:
        """A new integer op standing for ``sim_node`` (the simulation's quantize, or the
        layout op, it replaces), named after the op it computes."""
        node = self.graph.call_function(target, args)
        node.meta["qc_sim_node"] = sim_node.name
        wanted = name or sim_node.name
        if wanted not in self.names:
            node.name = wanted
        self.names.add(node.name)
        return node

    def int_of(self, sim_node: Any, where: fx.Node) -> IntValue:
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
        raise ConversionError(f"node {node_label(sim_node)} has no value in the integer program")

    def q_bound(self, v: Optional[float], scale: float, zp: int, qmin: int, qmax: int, default: int) -> int:
        if v is None:
            return default
        return int(quantize_values(np.array([v], dtype=np.float32), scale, zp, qmin, qmax)[0])

    def bounds(self, acts: list[fx.Node], out: dict, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel integer clamp bounds of a fused activation chain (composed in order:
        clamp(clamp(x, a1, b1), a2, b2) = clamp(x, clamp(a1, a2, b2), clamp(b1, a2, b2)))."""
        lo = np.full(channels, -np.inf)
        hi = np.full(channels, np.inf)
        for act in acts:
            if act.target == aten.clamp.Tensor:
                a = [self.tensor(b).double().reshape(-1).numpy() if isinstance(b, fx.Node) else None
                     for b in (act.args[1] if len(act.args) > 1 else None, act.args[2] if len(act.args) > 2 else None)]
            else:
                a = list(CLAMP_BOUNDS[act.target](act))
            a_lo = np.full(channels, -np.inf) if a[0] is None else np.broadcast_to(np.asarray(a[0], dtype=np.float64), (channels,))
            a_hi = np.full(channels, np.inf) if a[1] is None else np.broadcast_to(np.asarray(a[1], dtype=np.float64), (channels,))
            lo, hi = np.clip(lo, a_lo, a_hi), np.clip(hi, a_lo, a_hi)
        s, z, qmin, qmax = out["scale"], out["zp"], out["qmin"], out["qmax"]
        qlo = np.array([qmin if not np.isfinite(v) else self.q_bound(v, s, z, qmin, qmax, qmin) for v in lo], dtype=np.int64)
        qhi = np.array([qmax if not np.isfinite(v) else self.q_bound(v, s, z, qmin, qmax, qmax) for v in hi], dtype=np.int64)
        return qlo, qhi

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
        program.meta["qc_inputs"] = {n.name: (iv.scale, iv.zp, iv.qmin, iv.qmax, iv.dtype)
                                     for n, iv in self.ints.items() if n.args and n.args[0] in self.values and n.target in Q_OPS}
        return program

    def visit(self, node: fx.Node) -> None:
        t = node.target
        if t in Q_OPS:
            self.quantize(node)
        elif t in DQ_OPS:
            self.ints[node] = self.int_of(node.args[0], node)
        elif t in WEIGHT_DQ_OPS or t == qd.dequantize_per_channel.default:
            return  # weights: read by the layer that uses them
        elif t == aten.sym_size.int:
            src = node.args[0]
            tensor = self.ints[src].node if src in self.ints else self.float_of(src)
            self.values[node] = self.graph.call_function(t, (tensor, node.args[1]))
        elif isinstance(node.args[0] if node.args else None, fx.Node) and node.args[0] in self.ints and op_kind(t) == PASSTHROUGH:
            self.passthrough(node)
        # anything else is computed when the quantize after it is reached (or is float-only)

    def passthrough(self, node: fx.Node) -> None:
        iv = self.ints[node.args[0]]
        t = node.target
        if t is operator.getitem:  # (values, indices) of a max pool: the integer max pool returns the values
            if node.args[0].target != aten.max_pool2d_with_indices.default or node.args[1] != 0:
                raise ConversionError(f"{node_label(node)}: only the values of a max pool have an integer form")
            self.ints[node] = iv
            return
        if t in (aten.max_pool2d_with_indices.default, aten.max_pool2d.default):
            a = node.args
            kernel = list(a[1])
            stride = list(a[2]) if len(a) > 2 and a[2] else kernel
            padding = list(a[3]) if len(a) > 3 else [0, 0]
            dilation = list(a[4]) if len(a) > 4 else [1, 1]
            if len(a) > 5 and a[5]:
                raise ConversionError(f"{node_label(node)}: max pooling with ceil_mode=True has no integer form yet")
            new = self.call(qc.max_pool2d.default, (iv.node, kernel, _pair(stride), _pair(padding), _pair(dilation), iv.qmin), node)
        elif t == aten.constant_pad_nd.default:
            new = self.call(t, (iv.node, node.args[1], iv.zp), node)  # zero padding = the zero point
        else:
            args = tuple(self.ints[a].node if isinstance(a, fx.Node) and a in self.ints else self.float_of(a) for a in node.args)
            new = self.call(t, args, node)
        self.ints[node] = IntValue(new, iv.scale, iv.zp, iv.qmin, iv.qmax, iv.dtype)

    def quantize(self, q: fx.Node) -> None:
        src, scale, zp, qmin, qmax, dtype = q.args
        out = dict(scale=float(scale), zp=int(zp), qmin=int(qmin), qmax=int(qmax), dtype=dtype)
        if src in self.values or (isinstance(src, fx.Node) and src.op == "get_attr"):  # a float value: an edge quantizer
            new = self.call(qc.quantize.default, (self.float_of(src), float(scale), int(zp), int(qmin), int(qmax), dtype), q, f"{src.name}_quantize")
        else:
            base = src
            while op_kind(base.target) == ACTIVATION and base.args[0] not in self.ints:
                base = base.args[0]
            self.current_name = base.name
            new = self.lower(src, out, q)
        self.ints[q] = IntValue(new, float(scale), int(zp), int(qmin), int(qmax), dtype)

    def lower(self, src: fx.Node, out: dict, q: fx.Node) -> fx.Node:
        acts: list[fx.Node] = []
        base = src
        while op_kind(base.target) == ACTIVATION and base.args[0] not in self.ints:
            acts.insert(0, base)
            base = base.args[0]
        kind = op_kind(base.target)
        kept_float = [n.name for n in acts if n.name in self.float_nodes]
        if kept_float:
            raise ConversionError(f"{node_label(base)}: the activation(s) {kept_float} fused after it are kept in float by "
                                  f"an override, but it is not: override '{base.name}' as 'float' too")
        if base.name in self.float_nodes and not acts:
            return self.fallback(base, out, q)
        if kind == WEIGHTED:
            return self.weighted(base, acts, out, q)
        if base.target in (aten.add.Tensor, aten.sub.Tensor):
            return self.add(base, acts, out, q)
        if acts:
            raise ConversionError(f"{node_label(acts[0])}: a fused activation after {node_label(base)} has no integer form")
        if kind == ACTIVATION:
            return self.clamp(base, out, q)
        if base.target in (aten.mul.Tensor, aten.div.Tensor) and any(isinstance(a, (int, float)) for a in base.args[:2]):
            return self.scale_by_number(base, out, q)
        if base.target == aten.mul.Tensor:
            return self.mul(base, out, q)
        if base.target in (aten.mm.default, aten.bmm.default, aten.matmul.default):
            return self.matmul(base, out, q)
        if base.target == aten.cat.default:
            return self.concat(base, out, q)
        if base.target in LUT_OPS:
            return self.lut(base, out, q)
        if kind == SHARED:
            return self.pool(base, out, q)
        if kind == PASSTHROUGH and base in self.ints:  # e.g. PT2E quantizes a flatten's output again
            return self.requantize_value(self.ints[base], out, q)
        return self.fallback(base, out, q)

    def requantize_value(self, x: IntValue, out: dict, q: fx.Node) -> fx.Node:
        """A value quantized again: the same integers if the parameters match, else a rescale."""
        if (x.scale, x.zp, x.qmin, x.qmax, x.dtype) == (out["scale"], out["zp"], out["qmin"], out["qmax"], out["dtype"]):
            return x.node
        m, s = quantize_multiplier(x.scale / out["scale"])
        return self.call(qc.requantize.default, (x.node, x.zp, m, s, out["zp"], out["qmin"], out["qmax"], out["dtype"]), q, self.current_name)

    # -- lowerings -------------------------------------------------------------------------
    def weighted(self, op: fx.Node, acts: list[fx.Node], out: dict, q: fx.Node) -> fx.Node:
        x = self.int_of(op.args[0], op)
        wdq = op.args[1]
        if not (isinstance(wdq, fx.Node) and wdq.target in WEIGHT_DQ_OPS):
            raise ConversionError(f"{node_label(op)}: its weight is not quantized (kept in float by an override?)")
        w = self.tensor(wdq.args[0]).to(torch.int64)
        if wdq.target == qd.dequantize_per_channel.default:
            w_scales = self.tensor(wdq.args[1]).double().numpy()
            if int(wdq.args[3]) != 0:
                raise ConversionError(f"{node_label(op)}: weights must be quantized per output channel (axis 0)")
        else:
            w_scales = np.full(w.shape[0], float(wdq.args[1]))
        channels = w.shape[0]
        bias = op.args[2] if len(op.args) > 2 else None
        if isinstance(bias, fx.Node) and bias.target == qd.dequantize_per_channel.default:  # the int32 bias of the simulation
            b_q = self.tensor(bias.args[0]).to(torch.int64).numpy()
        else:  # a float bias (e.g. a PT2E graph): quantized here with scale s_x·s_w
            b = self.tensor(bias).double().numpy() if isinstance(bias, fx.Node) else np.zeros(channels)
            b_q = quantize_bias(b, x.scale, w_scales)
        mult, shift = quantize_multipliers(x.scale * w_scales / out["scale"])
        lo, hi = self.bounds(acts, out, channels)
        name = op.name
        common = (self.const(w.to(torch.int8 if w.abs().max() <= 127 else torch.int16), f"{name}_w"), self.const(b_q, f"{name}_bias"), x.zp)
        epilogue = (self.const(mult, f"{name}_mult"), self.const(shift, f"{name}_shift"), out["zp"],
                    self.const(lo, f"{name}_lo"), self.const(hi, f"{name}_hi"), out["dtype"])
        if op.target == aten.linear.default:
            return self.call(qc.linear.default, (x.node, *common, *epilogue), q, self.current_name)
        a = op.args
        if op.target == aten.convolution.default:
            stride, padding, dilation, transposed, groups = a[3], a[4], a[5], a[6], a[8]
            if transposed:
                raise ConversionError(f"{node_label(op)}: transposed convolution has no integer form yet")
        else:  # aten.conv2d
            stride, padding, dilation, groups = (a[3] if len(a) > 3 else 1), (a[4] if len(a) > 4 else 0), (a[5] if len(a) > 5 else 1), (a[6] if len(a) > 6 else 1)
        if len(w.shape) != 4:
            raise ConversionError(f"{node_label(op)}: only 2-d convolution has an integer form yet (weight {tuple(w.shape)})")
        return self.call(qc.conv2d.default, (x.node, *common, _pair(stride), _pair(padding), _pair(dilation), int(groups), *epilogue), q, self.current_name)

    def operand(self, arg: Any, op: fx.Node, out: dict) -> IntValue:
        """An integer operand: a quantized value, or a constant (a Python number or a float
        tensor) quantized on the output's scale."""
        if isinstance(arg, fx.Node) and arg in self.ints:
            return self.ints[arg]
        if isinstance(arg, fx.Node) and arg.op == "get_attr":
            value = self.tensor(arg).double().numpy()
        elif isinstance(arg, (int, float)):
            value = np.array(float(arg))
        else:
            raise ConversionError(f"{node_label(op)}: operand {arg!r} is neither quantized nor constant")
        qv = np.rint(value / out["scale"]).astype(np.int64)
        return IntValue(self.const(qv, f"{op.name}_const"), out["scale"], 0, int(qv.min(initial=0)), int(qv.max(initial=0)), torch.int64)

    def add(self, op: fx.Node, acts: list[fx.Node], out: dict, q: fx.Node) -> fx.Node:
        a = self.operand(op.args[0], op, out)
        b = self.operand(op.args[1], op, out)
        alpha = float(op.kwargs.get("alpha", op.args[2] if len(op.args) > 2 else 1.0))
        sign = -1.0 if op.target == aten.sub.Tensor else 1.0
        ra, rb = a.scale / out["scale"], sign * alpha * b.scale / out["scale"]
        shift = 30 - math.frexp(max(abs(ra), abs(rb)))[1] + 1
        shift = min(max(shift, 0), 62)
        ma, mb = int(round(ra * 2**shift)), int(round(rb * 2**shift))
        lo, hi = self.bounds(acts, out, 1)
        return self.call(qc.add.default, (a.node, b.node, a.zp, b.zp, ma, mb, shift, out["zp"], int(lo[0]), int(hi[0]), out["dtype"]), q, self.current_name)

    def scale_by_number(self, op: fx.Node, out: dict, q: fx.Node) -> fx.Node:
        """x·c or x/c for a Python number c: one rescale, q = z + round((q_x − z_x)·s_x·c/s_y),
        through the add kernel with the second operand's multiplier 0 (c may be negative)."""
        x_arg, c = (op.args[0], op.args[1]) if isinstance(op.args[1], (int, float)) else (op.args[1], op.args[0])
        x = self.int_of(x_arg, op)
        factor = float(c) if op.target == aten.mul.Tensor else 1.0 / float(c)
        real = x.scale * factor / out["scale"]
        if real == 0:
            m, shift = 0, 0
        else:
            shift = min(max(30 - math.frexp(abs(real))[1] + 1, 0), 62)
            m = int(round(real * 2**shift))
        return self.call(qc.add.default, (x.node, x.node, x.zp, x.zp, m, 0, shift, out["zp"], out["qmin"], out["qmax"], out["dtype"]),
                         q, self.current_name)

    def mul(self, op: fx.Node, out: dict, q: fx.Node) -> fx.Node:
        a = self.operand(op.args[0], op, out) if op.args[0] in self.ints else None
        b = self.operand(op.args[1], op, out) if op.args[1] in self.ints else None
        if a is None or b is None:  # times a constant: the constant gets its own symmetric scale
            iv, const = (a, op.args[1]) if a is not None else (b, op.args[0])
            if iv is None:
                raise ConversionError(f"{node_label(op)}: neither operand is quantized")
            value = self.tensor(const).double().numpy() if isinstance(const, fx.Node) else np.array(float(const))
            c_scale = float(np.abs(value).max()) / 127 or 1.0
            cq = np.rint(value / c_scale).astype(np.int64)
            other = IntValue(self.const(cq, f"{op.name}_const"), c_scale, 0, -127, 127, torch.int64)
            a, b = iv, other
        m, s = quantize_multiplier(a.scale * b.scale / out["scale"])
        return self.call(qc.mul.default, (a.node, b.node, a.zp, b.zp, m, s, out["zp"], out["qmin"], out["qmax"], out["dtype"]), q, self.current_name)

    def matmul(self, op: fx.Node, out: dict, q: fx.Node) -> fx.Node:
        a, b = self.int_of(op.args[0], op), self.int_of(op.args[1], op)
        m, s = quantize_multiplier(a.scale * b.scale / out["scale"])
        return self.call(qc.matmul.default, (a.node, b.node, a.zp, b.zp, m, s, out["zp"], out["qmin"], out["qmax"], out["dtype"]), q, self.current_name)

    def concat(self, op: fx.Node, out: dict, q: fx.Node) -> fx.Node:
        parts = [self.int_of(x, op) for x in op.args[0]]
        dim = op.args[1] if len(op.args) > 1 else op.kwargs.get("dim", 0)
        pairs = [quantize_multiplier(p.scale / out["scale"]) for p in parts]
        return self.call(qc.concat.default, ([p.node for p in parts], int(dim), [p.zp for p in parts], [m for m, _ in pairs],
                                             [s for _, s in pairs], out["zp"], out["qmin"], out["qmax"], out["dtype"]), q, self.current_name)

    def lut(self, op: fx.Node, out: dict, q: fx.Node) -> fx.Node:
        x = self.int_of(op.args[0], op)
        codes = torch.arange(x.qmin, x.qmax + 1, dtype=torch.int64)
        with torch.no_grad():
            real = qd.dequantize_per_tensor.default(codes.to(x.dtype), x.scale, x.zp, x.qmin, x.qmax, x.dtype)
            y = op.target(real, *op.args[1:], **op.kwargs)
            table = qd.quantize_per_tensor.default(y, out["scale"], out["zp"], out["qmin"], out["qmax"], out["dtype"])
        return self.call(qc.lut.default, (x.node, self.const(table, f"{op.name}_table"), x.qmin), q, self.current_name)

    def clamp(self, op: fx.Node, out: dict, q: fx.Node) -> fx.Node:
        x = self.int_of(op.args[0], op)
        if op.target == aten.clamp.Tensor:
            raise ConversionError(f"{node_label(op)}: a per-channel clamp must follow a conv/linear to be fused")
        lo, hi = self.bounds([op], out, 1)
        m, s = quantize_multiplier(x.scale / out["scale"])
        return self.call(qc.requantize.default, (x.node, x.zp, m, s, out["zp"], int(lo[0]), int(hi[0]), out["dtype"]), q, self.current_name)

    def pool(self, op: fx.Node, out: dict, q: fx.Node) -> fx.Node:
        x = self.int_of(op.args[0], op)
        shape = _shape(op.args[0])
        if op.target == aten.mean.dim or (op.target in (aten._adaptive_avg_pool2d.default, aten.adaptive_avg_pool2d.default) and list(op.args[1]) == [1, 1]):
            dims = list(op.args[1]) if op.target == aten.mean.dim else [-2, -1]
            keepdim = bool(op.args[2]) if op.target == aten.mean.dim and len(op.args) > 2 else op.target != aten.mean.dim
            if shape is None:
                raise ConversionError(f"{node_label(op)}: the input's shape is unknown")
            count = int(np.prod([int(shape[d]) for d in dims]))
            m, s = quantize_multiplier(x.scale / (count * out["scale"]))
            return self.call(qc.mean.default, (x.node, dims, keepdim, x.zp, m, s, out["zp"], out["qmin"], out["qmax"], out["dtype"]), q, self.current_name)
        if op.target == aten.avg_pool2d.default:
            a = op.args
            kernel = _pair(a[1])
            stride = _pair(a[2]) if len(a) > 2 and a[2] else kernel
            padding = _pair(a[3]) if len(a) > 3 else [0, 0]
            ceil_mode = len(a) > 4 and a[4]
            include_pad = a[5] if len(a) > 5 else True
            divisor = a[6] if len(a) > 6 else None
            if ceil_mode or (not include_pad and any(padding)):
                raise ConversionError(f"{node_label(op)}: average pooling with ceil_mode or count_include_pad=False has no integer form yet")
            count = divisor or kernel[0] * kernel[1]
            m, s = quantize_multiplier(x.scale / (count * out["scale"]))
            return self.call(qc.avg_pool2d.default, (x.node, kernel, stride, padding, x.zp, m, s, out["zp"], out["qmin"], out["qmax"], out["dtype"]), q, self.current_name)
        raise ConversionError(f"{node_label(op)}: this pooling has no integer form yet")

    def fallback(self, op: fx.Node, out: dict, q: fx.Node) -> fx.Node:
        """A float op the scheme lets fall back: dequantize its inputs, run it, quantize."""
        args = tuple(self.float_of(a) for a in op.args)
        kwargs = {k: self.float_of(v) for k, v in op.kwargs.items()}
        f = self.graph.call_function(op.target, args, kwargs)
        f.meta["qc_float_fallback"] = True
        return self.call(qc.quantize.default, (f, out["scale"], out["zp"], out["qmin"], out["qmax"], out["dtype"]), q, f"{op.name}_quantize")


def _shape(node: fx.Node):
    """A value's shape from its metadata; for a dequantize without any (PT2E inserts them
    so), the shape of the value its quantize took."""
    while isinstance(node, fx.Node):
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor):
            return val.shape
        if node.target in DQ_OPS or node.target in Q_OPS:
            node = node.args[0]
        else:
            return None
    return None


def _pair(v) -> list[int]:
    if isinstance(v, int):
        return [v, v]
    v = list(v)
    return v * 2 if len(v) == 1 else v


def to_integer_program(sim: fx.GraphModule) -> fx.GraphModule:
    """The integer program of a simulation graph (see the module docstring)."""
    program = _Converter(sim).run()
    program.graph.lint()
    program.recompile()
    return program
