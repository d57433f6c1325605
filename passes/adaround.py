"""adaround: learn whether each weight rounds up or down (Nagel et al. 2020, "Up or Down?
Adaptive Rounding for Post-Training Quantization")."""
from __future__ import annotations

import math

import torch
import torch.fx as fx
import torch.nn.functional as F

from qcompiler.activations import record
from qcompiler.layers import QuantLayer, apply_activations, quant_layers
from qcompiler.observers import CalibrationError
from qcompiler.pass_manager import Pass, PassContext, PassResult, register_pass
from qcompiler.passes.calibrate import calibration_batches

ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def initial_v(rest: torch.Tensor) -> torch.Tensor:
    """V with rectified_sigmoid(V) = rest (the fractional part), so training starts at W."""
    p = ((rest - GAMMA) / (ZETA - GAMMA)).clamp(1e-4, 1 - 1e-4)
    return torch.log(p / (1 - p))


@register_pass(after=["calibrate"])
class Adaround(Pass):
    """For each quantized conv/linear in order, choose floor or ceil for every weight by
    minimising ‖act(W̃·x̂ + b) − act_float(W·x + b)‖² + λ·Σ(1 − |2h(V) − 1|^β) with
    W̃ = s·clamp(⌊W/s⌋ + h(V)), h the rectified sigmoid, β annealed from 20 to 2 after a
    warm-up; x̂ is the layer's input in the simulation (earlier layers already rounded), x
    and the target come from the float graph (``ctx.state['float_graph']``). Only one
    layer's inputs are held at a time (memory bounded by the largest layer's activations
    over ``max_batches`` calibration batches).

    Preserves nothing exactly: it changes integer weights (each by at most one step from
    rounding to nearest, by construction: floor or ceil of W/s).
    """

    preserves = "nothing"

    def __init__(self, iterations: int = 1000, lr: float = 1e-2, reg: float = 0.01, beta: tuple = (20.0, 2.0),
                 warmup: float = 0.2, max_batches: int = 16, batch_size: int = 8, seed: int = 0, progress=None):
        self.iterations = iterations
        self.lr = lr
        self.reg = reg
        self.beta = beta
        self.warmup = warmup
        self.max_batches = max_batches
        self.batch_size = batch_size
        self.seed = seed
        self.progress = progress

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        from tqdm.auto import tqdm

        float_graph = ctx.state.get("float_graph")
        if float_graph is None:
            raise CalibrationError("adaround needs the float graph: run it through qcompiler.quantize(..., ptq=['adaround'])")
        batches = calibration_batches(gm, ctx, self.max_batches)
        layers = list(quant_layers(gm))
        flipped, total = 0, 0
        gen = torch.Generator().manual_seed(self.seed)
        float_nodes = {n.name: n for n in float_graph.graph.nodes}
        for layer in tqdm(layers, desc="adaround", unit="layer", disable=None if self.progress is None else not self.progress):
            x_name = layer.node.args[0].name  # the layer's own input (after any zero padding)
            x_q = torch.cat(record(gm, batches, [x_name])[x_name])
            if layer.output.name not in float_nodes:
                raise CalibrationError(f"adaround: layer '{layer.name}' has no counterpart '{layer.output.name}' in the float graph")
            target = torch.cat(record(float_graph, batches, [layer.output.name])[layer.output.name])
            before = layer.weight_int(gm).to(torch.int64)
            after = self._optimize(gm, layer, x_q, target, gen)
            layer.set_weight_int(gm, after)
            flipped += int((after != before).sum())
            total += before.numel()
            del x_q, target
        return PassResult(gm, True, f"{len(layers)} layers; {flipped} of {total} weights ({flipped / max(total, 1):.1%}) "
                                    f"rounded the other way than nearest")

    def _optimize(self, gm: fx.GraphModule, layer: QuantLayer, x_q: torch.Tensor, target: torch.Tensor,
                  gen: torch.Generator) -> torch.Tensor:
        spec = layer.weight_spec()
        w = layer.float_weight().double()
        scales = layer.weight_scales(gm).reshape(-1, *([1] * (w.dim() - 1)))
        w_floor = torch.floor(w / scales)
        v = initial_v((w / scales - w_floor).float()).requires_grad_(True)
        s32, floor32 = scales.float(), w_floor.float()
        bias = (layer.bias_int(gm).double() * layer.bias_scales(gm)).float() if layer.bias_dq is not None else None
        conv = layer.conv_args()
        optimizer = torch.optim.Adam([v], lr=self.lr)
        n = x_q.shape[0]
        start = int(self.warmup * self.iterations)
        for it in range(self.iterations):
            idx = torch.randint(n, (min(self.batch_size, n),), generator=gen)
            w_soft = s32 * torch.clamp(floor32 + rectified_sigmoid(v), spec.qmin, spec.qmax)
            y = F.conv2d(x_q[idx], w_soft, bias, **conv) if conv else F.linear(x_q[idx], w_soft, bias)
            y = apply_activations(gm, layer, y)
            loss = F.mse_loss(y, target[idx], reduction="sum") / len(idx)
            if it >= start:
                progress = (it - start) / max(self.iterations - start, 1)
                beta = self.beta[1] + 0.5 * (self.beta[0] - self.beta[1]) * (1 + math.cos(progress * math.pi))
                h = rectified_sigmoid(v)
                loss = loss + self.reg * (1 - (2 * h - 1).abs().pow(beta)).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            up = (rectified_sigmoid(v) >= 0.5).double()
        return torch.clamp(w_floor + up, spec.qmin, spec.qmax).to(torch.int64)
