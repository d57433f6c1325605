"""adaround: learn whether each weight rounds up or down (Nagel et al. 2020, "Up or Down?
Adaptive Rounding for Post-Training Quantization")."""
from __future__ import annotations

import math

import torch
import torch.fx as fx
import torch.nn.functional as F

from qcompiler.activations import Stepper
from qcompiler.layers import QuantLayer, apply_activations, quant_layers
from qcompiler.pass_manager import Pass, PassContext, PassResult, Problem, register_pass
from qcompiler.passes.calibrate import ptq_data, ptq_problems
from qcompiler.progress import bar as progress_bar

ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch


CONV_BY_RANK = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}
"""The convolution of a weight of each rank (conv1d's weight is [O, C/g, k])."""


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
    and the target come from the float graph (``ctx.float_graph``). Only one layer's
    inputs are held at a time (memory bounded by the largest layer's activations over
    ``max_batches`` calibration batches).

    Requires: a calibrated simulation, ``ctx.float_graph`` with every layer's output node,
    and ``ctx.calibration`` (qcompiler.passes.calibrate.ptq_problems).
    Ensures: every integer weight is ⌊W/s⌋ or ⌊W/s⌋ + 1, clamped to the weight's
    [qmin, qmax].
    Preserves nothing exactly: it changes integer weights (each by at most one step from
    rounding to nearest, by construction).
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

    def requires(self, gm: fx.GraphModule, ctx: PassContext) -> list[Problem]:
        return ptq_problems(gm, ctx, "adaround", [l.output.name for l in quant_layers(gm)])

    def ensures(self, gm: fx.GraphModule, ctx: PassContext) -> list[Problem]:
        problems = []
        for layer in quant_layers(gm):
            spec = layer.weight_spec()
            w = layer.float_weight().double()
            scales = layer.weight_scales(gm).reshape(-1, *([1] * (w.dim() - 1)))
            q = layer.weight_int(gm).double()
            floor = torch.floor(w / scales)
            down, up = torch.clamp(floor, spec.qmin, spec.qmax), torch.clamp(floor + 1, spec.qmin, spec.qmax)
            off = int(((q != down) & (q != up)).sum())
            if off:
                problems.append(Problem(f"layer '{layer.name}': {off} integer weight(s) are neither ⌊W/s⌋ nor ⌊W/s⌋ + 1",
                                        "report this as a bug in adaround"))
        return problems

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        layers = {l.name: l for l in quant_layers(gm)}
        float_graph, _, everything = ptq_data(gm, ctx, self.max_batches)
        # The simulation and the float graph advance together over all calibration inputs: the
        # simulation pauses before each layer (its input then reflects the layers already
        # rounded), the float graph runs on until that layer's output (the target).
        sim = Stepper(gm)
        ref = Stepper(float_graph)  # each target is read as soon as it is computed, before it can be freed
        ref_steps = ref.steps(*everything)
        flipped, total = 0, 0
        gen = torch.Generator().manual_seed(self.seed)
        bar = progress_bar(total=len(layers), desc="adaround", unit="layer",
                           progress=self.progress if self.progress is not None else ctx.progress)
        with torch.no_grad():
            for node in sim.steps(*everything):
                layer = layers.get(node.name)
                if layer is None:
                    continue
                while layer.output.name not in ref.names:
                    next(ref_steps)
                x_q = sim.env[node.args[0]]
                target = ref.value(layer.output.name)
                before = layer.weight_int(gm).to(torch.int64)
                with torch.enable_grad():
                    after = self._optimize(gm, layer, x_q, target, gen)
                layer.set_weight_int(gm, after)
                # the stepper dequantized this layer's weight before pausing here: hand the layer
                # the new one, so later layers learn from the inputs they will really see
                sim.env[layer.weight_dq] = layer.dequantized_weight(gm)
                flipped += int((after != before).sum())
                total += before.numel()
                bar.update(1)
        bar.close()
        return PassResult(gm, True, f"{len(layers)} layers; {flipped} of {total} weights ({flipped / max(total, 1):.1%}) "
                                    f"rounded the other way than nearest",
                          counts={"layers": len(layers), "weights": total, "flipped": flipped})

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
            y = CONV_BY_RANK[w_soft.dim()](x_q[idx], w_soft, bias, **conv) if conv else F.linear(x_q[idx], w_soft, bias)
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
