"""bias_correction: empirical bias correction (Nagel et al. 2019, 2021 §3.2)."""
from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

from qcompiler.activations import channel_dim, channel_mean, channel_means
from qcompiler.layers import QuantLayer, quant_layers
from qcompiler.progress import bar
from qcompiler.pass_manager import Pass, PassContext, PassResult, Problem, register_pass
from qcompiler.passes.calibrate import ptq_data, ptq_problems


def correct_in_lockstep(gm: fx.GraphModule, batches: list[tuple], layers: dict[str, QuantLayer],
                        reference: dict[str, torch.Tensor], progress: Any = None) -> list[float]:
    """Run the simulation on every calibration batch in lockstep, node by node (batches are
    never concatenated: a model may fix its batch size); at each layer correct the bias from
    the mean of its outputs over all batches, then hand on the corrected outputs, so every
    later layer is corrected against the already-corrected ones before it. Returns the mean
    |shift| of each layer."""
    runners = [fx.Interpreter(gm) for _ in batches]
    for runner, batch in zip(runners, batches):
        runner.env, runner.args_iter = {}, iter(batch)
    shifts = []
    for node in gm.graph.nodes:
        outs = [runner.run_node(node) for runner in runners]
        if node.op == "output":
            break
        layer = layers.get(node.name)
        if layer is not None:
            cdim = channel_dim(node) % outs[0].dim()
            counts = [o.numel() // o.shape[cdim] for o in outs]
            observed = sum(channel_mean(o, cdim) * n for o, n in zip(outs, counts)) / sum(counts)
            delta = reference[node.name] - observed
            scales = layer.bias_scales(gm)
            step = torch.round(delta / scales).to(torch.int64)
            layer.set_bias_int(gm, layer.bias_int(gm).to(torch.int64) + step)
            shifts.append(float(delta.abs().mean()))
            shape = [1] * outs[0].dim()
            shape[cdim] = -1
            outs = [o + (step.double() * scales).reshape(shape).to(o.dtype) for o in outs]
            if progress is not None:
                progress.update(1)
        for runner, out in zip(runners, outs):
            runner.env[node] = out
    return shifts


@register_pass(after=["calibrate", "adaround"])
class BiasCorrection(Pass):
    """For each quantized conv/linear in order, add to its int32 bias the mean difference,
    per output channel over the calibration data, between the float model's output of that
    layer (before its activation) and the simulation's (with the layers before it already
    corrected). Two passes over the data in all: the float graph's per-channel means, then
    one run of the simulation that corrects each layer as it reaches it.

    Requires: a calibrated simulation, the float graph (``ctx.float_graph``, set by
    ``quantize``) with a counterpart of every layer, and ``ctx.calibration``
    (qcompiler.passes.calibrate.ptq_problems).
    Ensures: every layer with an int32 bias still has one (the corrected biases are clamped
    to the int32 range).
    Preserves nothing exactly: it moves the simulation towards the float model in
    expectation; the integer program follows the new int32 biases.
    """

    preserves = "nothing"

    def __init__(self, max_batches: int = 16):
        self.max_batches = max_batches

    def requires(self, gm: fx.GraphModule, ctx: PassContext) -> list[Problem]:
        return ptq_problems(gm, ctx, "bias_correction", [l.name for l in quant_layers(gm) if l.bias_dq is not None])

    def ensures(self, gm: fx.GraphModule, ctx: PassContext) -> list[Problem]:
        return [Problem(f"layer '{l.name}': its bias is {l.bias_int(gm).dtype}, not int32", "report this as a bug in bias_correction")
                for l in quant_layers(gm) if l.bias_dq is not None and l.bias_int(gm).dtype != torch.int32]

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        layers = {l.name: l for l in quant_layers(gm) if l.bias_dq is not None}
        float_graph, batches, _ = ptq_data(gm, ctx, self.max_batches)
        reference = channel_means(float_graph, batches, {name: channel_dim(l.node) for name, l in layers.items()})
        with bar(total=len(layers), desc="bias correction", unit="layer", progress=ctx.progress) as layer_bar, \
                torch.no_grad():
            shifts = correct_in_lockstep(gm, batches, layers, reference, layer_bar)
        mean_shift = sum(shifts) / max(len(shifts), 1)
        return PassResult(gm, bool(layers), f"corrected {len(layers)} biases on {len(batches)} batch(es); mean |shift| {mean_shift:.3g}",
                          counts={"biases": len(layers), "batches": len(batches)})
