"""calibrate: run calibration data through the observed graph, set every activation's range,
and turn the observers into quantize→dequantize pairs (the simulation)."""
from __future__ import annotations

from typing import Any, Iterable, Optional

import torch
import torch.fx as fx

from qcompiler.graph import node_label
from qcompiler.inputs import calibration_source, check_inputs, input_specs
from qcompiler.observers import ActivationObserver, CalibrationError
from qcompiler.pass_manager import Pass, PassContext, PassResult, register_pass
from qcompiler.scheme import QuantSpec

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
    """The calibration data of this run (``ctx.state['calibration']``) as a list of input
    tuples, at most ``max_batches`` of them."""
    data = ctx.state.get("calibration")
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


def ptq_data(gm: fx.GraphModule, ctx: PassContext, pass_name: str, max_batches: Optional[int],
             needed: Iterable[str]) -> tuple[fx.GraphModule, list[tuple], tuple]:
    """What a PTQ pass needs: the float graph (``ctx.state['float_graph']``), the calibration
    batches, and all of them concatenated into one batch. ``needed`` are node names the
    float graph must have (the layers the pass compares)."""
    float_graph = ctx.state.get("float_graph")
    if float_graph is None:
        raise CalibrationError(f"{pass_name} needs the float graph: run it through qcompiler.quantize(..., ptq=['{pass_name}'])")
    names = {n.name for n in float_graph.graph.nodes}
    missing = sorted(set(needed) - names)
    if missing:
        raise CalibrationError(f"{pass_name}: {missing} have no counterpart in the float graph")
    batches = calibration_batches(gm, ctx, max_batches)
    return float_graph, batches, tuple(torch.cat(parts) for parts in zip(*batches))


def observers(gm: fx.GraphModule) -> dict[str, ActivationObserver]:
    return {name: m for name, m in gm.named_children() if isinstance(m, ActivationObserver)}


CALIBRATION_FIX = ("give batches shaped like the example inputs (N: any batch size): a DataLoader, a list of "
                   "batches, or one tensor of samples along dimension 0")


def run_calibration(gm: fx.GraphModule, data: Iterable, progress: Optional[bool] = None,
                    example_inputs: Optional[tuple] = None) -> int:
    """Run every batch of ``data`` through ``gm`` (observers record), each checked against
    the graph's inputs (qcompiler.inputs.InputError naming the batch); returns the batch
    count."""
    from qcompiler.progress import bar

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
    re-quantized with another point's parameters reuse them). After this pass the graph is
    the simulation. Calibration data: this pass's ``data``, else ``ctx.state['calibration']``.
    """

    preserves = "nothing"

    def __init__(self, data: Optional[Iterable] = None, progress: Optional[bool] = None):
        self.data = data
        self.progress = progress

    def requires(self, gm: fx.GraphModule, ctx: PassContext) -> None:
        if not observers(gm):
            raise CalibrationError("calibrate: the graph has no observers; run insert_quantizers first")

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        data = self.data if self.data is not None else ctx.state.get("calibration")
        if data is None:
            raise CalibrationError("calibrate needs calibration data: quantize(..., calibration=loader) or Calibrate(data)")
        progress = self.progress if self.progress is not None else ctx.progress
        batches = run_calibration(gm, calibration_source(data, input_specs(gm, ctx.example_inputs)), progress,
                                  ctx.example_inputs)
        qparams = convert_observers(gm)
        return PassResult(gm, True, f"{batches} batch(es); {len(qparams)} activations quantized")


def convert_observers(gm: fx.GraphModule) -> dict[str, tuple[float, int, QuantSpec]]:
    """Replace observer/shared-quantizer call_module nodes by Q→DQ pairs. Returns
    {quantized value's node name: (scale, zero point, spec)}, also kept in gm.meta['qc_qparams']."""
    mods = dict(gm.named_children())
    by_module: dict[str, tuple[float, int, QuantSpec]] = {}
    for name, m in mods.items():
        if isinstance(m, ActivationObserver):
            if not m.observed:
                raise CalibrationError(f"calibration: node '{m.node_name}' saw no data (is it on a path the inputs reach?)")
            by_module[name] = (*m.qparams(), m.spec)
    result = {}
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not node.target.startswith("qc_obs_"):
            continue
        m = mods[node.target]
        params = by_module[node.target] if isinstance(m, ActivationObserver) else by_module[m.source]
        by_module[node.target] = params
        scale, zp, spec = params
        value = node.args[0]
        with gm.graph.inserting_after(node):
            q = gm.graph.call_function(qd.quantize_per_tensor.default, (value, scale, zp, spec.qmin, spec.qmax, spec.dtype))
        with gm.graph.inserting_after(q):
            dq = gm.graph.call_function(qd.dequantize_per_tensor.default, (q, scale, zp, spec.qmin, spec.qmax, spec.dtype))
        dq.meta["val"] = node.meta.get("val")
        q.meta["qc_spec"] = spec
        node.replace_all_uses_with(dq)
        gm.graph.erase_node(node)
        result[value.name] = params
    for name in by_module:
        if hasattr(gm, name):
            delattr(gm, name)
    gm.meta["qc_qparams"] = result
    quantize_biases(gm)
    return result


def quantize_biases(gm: fx.GraphModule) -> int:
    """Give every conv/linear whose input and weight are quantized an int32 bias with scale
    s_x·s_w (per output channel), as ``dequantize_per_channel(bias_int32, s_x·s_w, 0)``: the
    simulation then adds exactly the bias the integer program adds. Returns how many."""
    from qcompiler.fixed_point import quantize_bias
    from qcompiler.graph import add_constant, get_tensor
    from qcompiler.layers import quant_layers

    count = 0
    for layer in list(quant_layers(gm)):
        node, x, w = layer.node, layer.input_dq, layer.weight_dq
        channels = get_tensor(gm, w.args[0]).shape[0]
        w_scales = layer.weight_scales(gm)
        bias_node = node.args[2] if len(node.args) > 2 else None
        if bias_node is None or layer.bias_dq is not None or bias_node.op != "get_attr":
            continue
        b = get_tensor(gm, bias_node).double()
        scales = float(x.args[1]) * w_scales
        b_int = torch.from_numpy(quantize_bias(b.numpy(), float(x.args[1]), w_scales.numpy())).to(torch.int32)
        q_node = add_constant(gm, f"{node.name}_bias_int", b_int, before=node)
        s_node = add_constant(gm, f"{node.name}_bias_scale", scales, before=node)
        z_node = add_constant(gm, f"{node.name}_bias_zp", torch.zeros(channels, dtype=torch.int64), before=node)
        with gm.graph.inserting_before(node):
            dq = gm.graph.call_function(qd.dequantize_per_channel.default,
                                        (q_node, s_node, z_node, 0, -(2**31), 2**31 - 1, torch.int32))
        dq.meta["val"] = bias_node.meta.get("val")
        node.meta["qc_float_bias"] = b.float()
        node.replace_input_with(bias_node, dq)
        if not bias_node.users:
            gm.graph.erase_node(bias_node)
        count += 1
    return count
