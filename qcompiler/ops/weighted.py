"""What conv2d and linear share in the conversion: the int8 weights, the int32 bias and the
per-channel requantize epilogue of ``Q(act…(op(DQ(x), DQ(w), b)))`` (Jacob et al. 2018,
"Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference", §2.2–2.4), and the report's byte count of their data."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
import torch.fx as fx

from ..fixed_point import quantize_bias, quantize_multipliers
from ..graph import node_label
from ..qparams import DEQUANTIZE_OPS, QuantParamsError, read_qparams
from .convert import ConversionError, IntValue, Match

qd = torch.ops.quantized_decomposed
WEIGHT_DQ_OPS = DEQUANTIZE_OPS
DATA_ARGS = ((1, None), (2, 4))  # weights in their own dtype, the bias as int32


@dataclass
class WeightedOperands:
    """The integer operands of a weighted op: input ``x``, weight ``w`` (int64 tensor, [O, ...]),
    and the program nodes of (w, bias, x_zp) and (mult, shift, out_zp, lo, hi, out_dtype)."""

    x: IntValue
    w: torch.Tensor
    common: tuple
    epilogue: tuple


def weighted_operands(cv, m: Match, weight_layout: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> WeightedOperands:
    """Weights as int8 (int16 if they do not fit), the bias quantized with scale s_x·s_w
    (the simulation's int32 bias if it has one), multipliers s_x·s_w/s_y per output channel,
    and the fused activations' bounds. ``weight_layout``: the program's weight from the
    simulation's (e.g. a conv1d's [O, C, k] as [O, C, 1, k]); ``w`` stays the simulation's."""
    op, out = m.node, m.out
    x = cv.int_of(op.args[0], op)
    wdq = op.args[1]
    if not (isinstance(wdq, fx.Node) and wdq.target in WEIGHT_DQ_OPS):
        raise ConversionError(f"{node_label(op)}: its weight is not quantized (kept in float by an override?)")
    w = cv.tensor(wdq.args[0]).to(torch.int64)
    params = read_qparams(cv.sim, wdq)
    try:
        w_scales = params.output_channel_scales(w.shape[0], node_label(op)).numpy()
    except QuantParamsError as e:
        raise ConversionError(str(e)) from None
    channels = w.shape[0]
    bias = op.args[2] if len(op.args) > 2 else None
    if isinstance(bias, fx.Node) and bias.target == qd.dequantize_per_channel.default:  # the int32 bias of the simulation
        b_q = cv.tensor(bias.args[0]).to(torch.int64).numpy()
    else:  # a float bias (e.g. a PT2E graph): quantized here with scale s_x·s_w
        b = cv.tensor(bias).double().numpy() if isinstance(bias, fx.Node) else np.zeros(channels)
        b_q = quantize_bias(b, x.scale, w_scales)
    mult, shift = quantize_multipliers(x.scale * w_scales / out.scale)
    lo, hi = cv.bounds(m.acts, out, channels)
    name = op.name
    w_program = (weight_layout or (lambda t: t))(w.to(torch.int8 if w.abs().max() <= 127 else torch.int16))
    common = (cv.const(w_program, f"{name}_w"), cv.const(b_q, f"{name}_bias"), x.zp)
    epilogue = (cv.const(mult, f"{name}_mult"), cv.const(shift, f"{name}_shift"), out.zp,
                cv.const(lo, f"{name}_lo"), cv.const(hi, f"{name}_hi"), out.dtype)
    return WeightedOperands(x, w, common, epilogue)


def bounded_accumulator(ctx, x, x_zp: int, w: np.ndarray, k: int) -> str:
    """int32 when |Σ (x − z)·w| over ``k`` terms provably fits, else int64."""
    return ctx.acc_dtype(ctx.max_abs(x, x_zp) * int(np.abs(w.astype(np.int64)).max(initial=0)) * k)
