"""calibrate: run calibration data through the observed graph, set every activation's range,
and turn the observers into quantize→dequantize pairs (the simulation)."""
from __future__ import annotations

from typing import Any, Iterable, Optional

import torch
import torch.fx as fx

from qcompiler import meta
from qcompiler.fixed_point import quantize_bias
from qcompiler.graph import add_constant, get_tensor, is_constant
from qcompiler.inputs import calibration_source, check_inputs, input_specs
from qcompiler.layers import quant_layers
from qcompiler.observers import ActivationObserver, CalibrationError
from qcompiler.pass_manager import Pass, PassContext, PassResult, Problem, register_pass
from qcompiler.progress import bar
from qcompiler.qparams import QuantParams, insert_quantizer, is_quantize, read_qparams

qd = torch.ops.quantized_decomposed


def user_inputs(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "placeholder"]


def batch_inputs(batch: Any, n_inputs: int, index: int) -> tuple:
    """The model inputs in one calibration batch: a tensor, or the first ``n_inputs``
    elements of a tuple/list (so a DataLoader's (images, labels) works as is)."""
    if isinstance(batch, torch.Tensor):
        return (batch,)
    if isinstance(batch, (tuple, list)) and len(batch) >= n_inputs and all(isinstance(t, torch.Tensor) for t in batch[:n_inputs]):
        return tuple(batch[:n_inputs])
    raise CalibrationError(
        f"calibration batch {index} is a {type(batch).__name__}; give tensors, or tuples/lists whose first "
        f"{n_inputs} element(s) are the model's inputs (a DataLoader of (inputs, labels) works)"
    )


def calibration_batches(gm: fx.GraphModule, ctx: PassContext, max_batches: Optional[int] = None) -> list[tuple]:
    """The calibration data of this run (``ctx.calibration``) as a list of input tuples, at
    most ``max_batches`` of them."""
    data = ctx.calibration
    if data is None:
        raise CalibrationError("this pass needs calibration data: qcompiler.quantize(..., calibration=loader)")
    n_inputs = len(user_inputs(gm))
    specs = input_specs(gm, ctx.example_inputs)
    batches = []
    for i, batch in enumerate(calibration_source(data, specs)):
        if max_batches is not None and i >= max_batches:
            break
        batches.append(check_inputs(specs, batch_inputs(batch, n_inputs, i), "calibration", batch=i, fix=CALIBRATION_FIX))
    if not batches:
        raise CalibrationError("the calibration data yielded no batches")
    return batches


def ptq_problems(gm: fx.GraphModule, ctx: PassContext, pass_name: str, needed: Iterable[str]) -> list[Problem]:
    """What a PTQ pass (bias_correction, adaround) requires, every unmet part at once: the
    float graph (``ctx.float_graph``) holding a counterpart of each node in ``needed`` (the
    layers it compares), calibration data (``ctx.calibration``), and a calibrated
    simulation (no observers left)."""
    problems = []
    via_quantize = f"run it through qcompiler.quantize(..., ptq=['{pass_name}'])"
    if ctx.float_graph is None:
        problems.append(Problem(f"{pass_name} needs the float graph (PassContext.float_graph) to compare the simulation with",
                                f"{via_quantize}, or give PassContext(float_graph=...)"))
    else:
        names = {n.name for n in ctx.float_graph.graph.nodes}
        missing = sorted(set(needed) - names)
        if missing:
            problems.append(Problem(f"{pass_name}: {missing} have no counterpart in the float graph",
                                    "give the float graph the simulation was quantized from (same node names)"))
    if ctx.calibration is None:
        problems.append(Problem(f"{pass_name} needs calibration data (PassContext.calibration)",
                                f"{via_quantize} with calibration=loader, or give PassContext(calibration=...)"))
    left = observer_nodes(gm)
    if left:
        problems.append(Problem(f"{len(left)} observer(s) are still in the graph (e.g. '{left[0].target}'): it is not "
                                "a calibrated simulation yet", f"run calibrate before {pass_name}"))
    return problems


def ptq_data(gm: fx.GraphModule, ctx: PassContext, max_batches: Optional[int]) -> tuple[fx.GraphModule, list[tuple], tuple]:
    """What a PTQ pass works on, once ``ptq_problems`` found nothing missing: the float graph
    (``ctx.float_graph``), the calibration batches, and all of them concatenated into one
    batch."""
    batches = calibration_batches(gm, ctx, max_batches)
    return ctx.float_graph, batches, tuple(torch.cat(parts) for parts in zip(*batches))


def observer_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    """The call_module nodes of the observers and shared quantizers insert_quantizers placed."""
    return [n for n in gm.graph.nodes if n.op == "call_module" and str(n.target).startswith(meta.OBSERVER_PREFIX)]


def observers(gm: fx.GraphModule) -> dict[str, ActivationObserver]:
    return {name: m for name, m in gm.named_children() if isinstance(m, ActivationObserver)}


CALIBRATION_FIX = ("give batches shaped like the example inputs (N: any batch size): a DataLoader, a list of "
                   "batches, or one tensor of samples along dimension 0")


def run_calibration(gm: fx.GraphModule, data: Iterable, progress: Optional[bool] = None,
                    example_inputs: Optional[tuple] = None) -> int:
    """Run every batch of ``data`` through ``gm`` (observers record), each checked against
    the graph's inputs (qcompiler.inputs.InputError naming the batch); returns the batch
    count."""
    n_inputs = len(user_inputs(gm))
    specs = input_specs(gm, example_inputs)
    batches = 0
    with torch.no_grad():
        for i, batch in enumerate(bar(data, desc="calibrating", unit="batch", progress=progress)):
            gm(*check_inputs(specs, batch_inputs(batch, n_inputs, i), "calibration", batch=i, fix=CALIBRATION_FIX))
            batches += 1
    if batches == 0:
        raise CalibrationError(f"the calibration data ({type(data).__name__}) yielded no batches; give at least one batch of inputs")
    return batches


@register_pass(after=["insert_quantizers"])
class Calibrate(Pass):
    """Run the calibration data through the graph's observers, then replace each observer by
    ``quantize_per_tensor`` → ``dequantize_per_tensor`` with the parameters it chose (values
    re-quantized with another point's parameters reuse them), and give each quantized
    conv/linear an int32 bias. After this pass the graph is the simulation.

    Requires: observers in the graph (insert_quantizers ran) and calibration data (this
    pass's ``data``, else ``ctx.calibration``).
    Ensures: no observer is left; every activation quantizer has a positive finite scale and
    a zero point within its range (recorded in ``gm.meta[meta.QPARAMS]``); every quantized
    conv/linear with a constant bias has an int32 bias.
    Preserves nothing (it quantizes the activations).
    """

    preserves = "nothing"

    def __init__(self, data: Optional[Iterable] = None, progress: Optional[bool] = None):
        self.data = data
        self.progress = progress

    def requires(self, gm: fx.GraphModule, ctx: PassContext) -> list[Problem]:
        problems = []
        if not observers(gm):
            problems.append(Problem("calibrate: the graph has no observers", "run insert_quantizers first"))
        if self.data is None and ctx.calibration is None:
            problems.append(Problem("calibrate needs calibration data",
                                    "quantize(..., calibration=loader), Calibrate(data) or PassContext(calibration=...)"))
        return problems

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        data = self.data if self.data is not None else ctx.calibration
        progress = self.progress if self.progress is not None else ctx.progress
        batches = run_calibration(gm, calibration_source(data, input_specs(gm, ctx.example_inputs)), progress,
                                  ctx.example_inputs)
        qparams = convert_observers(gm)
        return PassResult(gm, True, f"{batches} batch(es); {len(qparams)} activations quantized",
                          counts={"batches": batches, "activations": len(qparams)})

    def ensures(self, gm: fx.GraphModule, ctx: PassContext) -> list[Problem]:
        problems = []
        left = [n.name for n in observer_nodes(gm)] + list(observers(gm))
        if left:
            problems.append(Problem(f"observers left in the graph: {left}", "report this as a bug in calibrate"))
        if meta.QPARAMS not in gm.meta:
            problems.append(Problem(f"gm.meta['{meta.QPARAMS}'] is not set", "report this as a bug in calibrate"))
        for node in gm.graph.nodes:
            if not is_quantize(node):
                continue
            p = read_qparams(gm, node)
            scale, zp = p.scale.double(), p.zero_point
            if not (bool(torch.isfinite(scale).all()) and bool((scale > 0).all())
                    and bool(((p.qmin <= zp) & (zp <= p.qmax)).all())):
                problems.append(Problem(f"quantizer '{node.name}' has scale {scale.tolist()}, zero point {zp.tolist()} "
                                        f"outside a valid range for [{p.qmin}, {p.qmax}]",
                                        "check the calibration data for inf/nan values"))
        for layer in quant_layers(gm):
            bias = layer.node.args[2] if len(layer.node.args) > 2 else None
            if is_constant(bias) and _per_tensor_input(gm, layer):
                problems.append(Problem(f"layer '{layer.name}' keeps a float bias", "report this as a bug in calibrate"))
        return problems


def convert_observers(gm: fx.GraphModule) -> dict[str, QuantParams]:
    """Replace observer/shared-quantizer call_module nodes by Q→DQ pairs whose parameters
    are buffers of ``gm`` (``qcompiler.qparams``; a shared quantizer reads its source's
    buffers). Returns {quantized value's node name: QuantParams}, also kept in
    gm.meta[meta.QPARAMS]."""
    mods = dict(gm.named_children())
    for m in mods.values():
        if isinstance(m, ActivationObserver) and not m.observed:
            raise CalibrationError(f"calibration: node '{m.node_name}' saw no data (is it on a path the inputs reach?)")
    quantizer_of: dict[str, fx.Node] = {}  # observer module -> the first quantize node reading its parameters
    result = {}
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not node.target.startswith(meta.OBSERVER_PREFIX):
            continue
        value = node.args[0]
        root = node.target  # the observer whose parameters this quantizer uses (shared quantizers chain to it)
        while not isinstance(mods[root], ActivationObserver):
            root = mods[root].source
        observer, shared = mods[root], quantizer_of.get(root)
        params = observer.quant_params(_rank(value)) if shared is None else result[shared.args[0].name]
        q, dq = insert_quantizer(gm, value, params, f"{value.name}_act", before=node, shared=shared)
        quantizer_of.setdefault(root, q)
        dq.meta[meta.VAL] = node.meta.get(meta.VAL)
        q.meta[meta.SPEC] = observer.spec
        node.replace_all_uses_with(dq)
        gm.graph.erase_node(node)
        result[value.name] = params
    for name in [n for n in mods if n.startswith(meta.OBSERVER_PREFIX)]:  # observers and shared quantizers
        if hasattr(gm, name):
            delattr(gm, name)
    gm.meta[meta.QPARAMS] = result
    quantize_biases(gm)
    return result


def _rank(value: fx.Node) -> Optional[int]:
    val = value.meta.get(meta.VAL)
    return val.dim() if isinstance(val, torch.Tensor) else None


def _per_tensor_input(gm: fx.GraphModule, layer) -> bool:
    return read_qparams(gm, layer.input_dq).per_tensor


def quantize_biases(gm: fx.GraphModule) -> int:
    """Give every conv/linear whose input (per tensor) and weight are quantized an int32
    bias with scale s_x·s_w (per output channel), as
    ``dequantize_per_channel(bias_int32, s_x·s_w, 0)``: the simulation then adds exactly the
    bias the integer program adds. A layer whose input is quantized per channel or group
    keeps its float bias (an int32 bias needs one input scale). Returns how many."""
    count = 0
    for layer in list(quant_layers(gm)):
        node, x, w = layer.node, layer.input_dq, layer.weight_dq
        channels = get_tensor(gm, w.args[0]).shape[0]
        w_scales = layer.weight_scales(gm)
        bias_node = node.args[2] if len(node.args) > 2 else None
        if bias_node is None or layer.bias_dq is not None or bias_node.op != "get_attr" or not _per_tensor_input(gm, layer):
            continue
        b = get_tensor(gm, bias_node).double()
        x_scale = layer.input_scale(gm)
        scales = x_scale * w_scales
        b_int = torch.from_numpy(quantize_bias(b.numpy(), x_scale, w_scales.numpy())).to(torch.int32)
        q_node = add_constant(gm, f"{node.name}_bias_int", b_int, before=node)
        s_node = add_constant(gm, f"{node.name}_bias_scale", scales, before=node)
        z_node = add_constant(gm, f"{node.name}_bias_zp", torch.zeros(channels, dtype=torch.int64), before=node)
        with gm.graph.inserting_before(node):
            dq = gm.graph.call_function(qd.dequantize_per_channel.default,
                                        (q_node, s_node, z_node, 0, -(2**31), 2**31 - 1, torch.int32))
        dq.meta[meta.VAL] = bias_node.meta.get(meta.VAL)
        node.meta[meta.FLOAT_BIAS] = b.float()
        node.replace_input_with(bias_node, dq)
        if not bias_node.users:
            gm.graph.erase_node(bias_node)
        count += 1
    return count
