"""bias_correction: empirical bias correction (Nagel et al. 2019, 2021 §3.2)."""
from __future__ import annotations

import torch
import torch.fx as fx

from qcompiler.activations import record
from qcompiler.layers import quant_layers
from qcompiler.observers import CalibrationError
from qcompiler.pass_manager import Pass, PassContext, PassResult, register_pass
from qcompiler.passes.calibrate import calibration_batches


@register_pass(after=["calibrate", "adaround"])
class BiasCorrection(Pass):
    """For each quantized conv/linear in order, add to its int32 bias the mean difference,
    per output channel over the calibration data, between the float model's output of that
    layer (before its activation) and the simulation's (with the layers before it already
    corrected). Needs the float graph (``ctx.state['float_graph']``, set by ``quantize``).

    Preserves nothing exactly: it moves the simulation towards the float model in
    expectation; the integer program follows the new int32 biases.
    """

    preserves = "nothing"

    def __init__(self, max_batches: int = 16):
        self.max_batches = max_batches

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        float_graph = ctx.state.get("float_graph")
        if float_graph is None:
            raise CalibrationError("bias_correction needs the float graph: run it through qcompiler.quantize(..., ptq=['bias_correction'])")
        batches = calibration_batches(gm, ctx, self.max_batches)
        layers = [l for l in quant_layers(gm) if l.bias_dq is not None]
        reference = record(float_graph, batches, [l.name for l in layers])
        shifts = []
        for layer in layers:
            quantized = record(gm, batches, [layer.name])[layer.name]
            cdim = 1 if layer.node.target == torch.ops.aten.convolution.default else -1
            delta = sum(_channel_sum(r - q, cdim) for r, q in zip(reference[layer.name], quantized))
            count = sum(q.numel() // q.shape[cdim] for q in quantized)
            delta = delta / count
            step = torch.round(delta / layer.bias_scales(gm)).to(torch.int64)
            layer.set_bias_int(gm, layer.bias_int(gm).to(torch.int64) + step)
            shifts.append(float(delta.abs().mean()))
        mean_shift = sum(shifts) / max(len(shifts), 1)
        return PassResult(gm, bool(layers), f"corrected {len(layers)} biases on {len(batches)} batch(es); mean |shift| {mean_shift:.3g}")


def _channel_sum(t: torch.Tensor, cdim: int) -> torch.Tensor:
    cdim = cdim % t.dim()
    return t.double().transpose(0, cdim).reshape(t.shape[cdim], -1).sum(dim=1)
