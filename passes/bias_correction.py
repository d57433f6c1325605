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


class _Correcting(fx.Interpreter):
    """Runs the simulation once over all calibration inputs (one batch); at each layer it
    corrects the bias from the output it just computed, then hands on the corrected output,
    so every later layer is corrected against the already-corrected ones before it."""

    def __init__(self, gm: fx.GraphModule, layers: dict[str, QuantLayer], reference: dict[str, torch.Tensor],
                 progress: Any = None):
        super().__init__(gm)
        self.layers = layers
        self.reference = reference
        self.shifts: list[float] = []
        self.progress = progress

    def run_node(self, n):
        out = super().run_node(n)
        layer = self.layers.get(n.name)
        if layer is None:
            return out
        cdim = channel_dim(n) % out.dim()
        delta = self.reference[n.name] - channel_mean(out, cdim)
        scales = layer.bias_scales(self.module)
        step = torch.round(delta / scales).to(torch.int64)
        layer.set_bias_int(self.module, layer.bias_int(self.module).to(torch.int64) + step)
        self.shifts.append(float(delta.abs().mean()))
        if self.progress is not None:
            self.progress.update(1)
        shape = [1] * out.dim()
        shape[cdim] = -1
        return out + (step.double() * scales).reshape(shape).to(out.dtype)


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
        float_graph, batches, everything = ptq_data(gm, ctx, self.max_batches)
        reference = channel_means(float_graph, batches, {name: channel_dim(l.node) for name, l in layers.items()})
        with bar(total=len(layers), desc="bias correction", unit="layer", progress=ctx.progress) as layer_bar, \
                torch.no_grad():
            correcting = _Correcting(gm, layers, reference, layer_bar)
            correcting.run(*everything)
        mean_shift = sum(correcting.shifts) / max(len(correcting.shifts), 1)
        return PassResult(gm, bool(layers), f"corrected {len(layers)} biases on {len(batches)} batch(es); mean |shift| {mean_shift:.3g}",
                          counts={"biases": len(layers), "batches": len(batches)})
