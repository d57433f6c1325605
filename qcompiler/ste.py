"""The simulation made differentiable with the straight-through estimator (for QAT and
any gradient-based tuning): each activation quantize→dequantize pair becomes
``torch.fake_quantize_per_tensor_affine`` and each quantized weight becomes a trainable float
parameter behind ``torch.fake_quantize_per_channel_affine``; both pass gradients straight
through inside the clipping range. Forward values equal the simulation's, up to float32
rounding at exact ties."""
from __future__ import annotations

import torch
import torch.fx as fx

from . import meta
from .graph import add_constant, clone_graph, get_tensor
from .layers import quant_layers
from .qparams import is_qdq_pair, read_qparams



def _fq_tensor(x, scale: float, zp: int, qmin: int, qmax: int):
    return torch.fake_quantize_per_tensor_affine(x, scale, zp, qmin, qmax)


def _fq_channel(w, scales, zps, axis: int, qmin: int, qmax: int):
    return torch.fake_quantize_per_channel_affine(w, scales.float(), zps.to(torch.int32), axis, qmin, qmax)


torch.fx.wrap("_fq_tensor")
torch.fx.wrap("_fq_channel")


def differentiable_simulation(sim: fx.GraphModule) -> fx.GraphModule:
    """A copy of the simulation whose weights are float parameters (initialised to their
    dequantized integer values) and whose quantizers pass gradients straight through."""
    gm = clone_graph(sim)
    for layer in list(quant_layers(gm)):
        dq = layer.weight_dq
        q = layer.weight_int(gm)
        scales = layer.weight_scales(gm)
        shape = [-1] + [1] * (q.dim() - 1)
        w = torch.nn.Parameter((q.double() * scales.reshape(shape)).float())
        name = f"{layer.name}_weight_trainable"
        gm.register_parameter(name, w)
        with gm.graph.inserting_before(dq):
            w_node = gm.graph.get_attr(name)
            s_node = add_constant(gm, f"{layer.name}_weight_fq_scale", scales.float(), before=dq)
            z_node = add_constant(gm, f"{layer.name}_weight_fq_zp", torch.zeros(len(scales), dtype=torch.int32), before=dq)
        with gm.graph.inserting_before(dq):
            params = layer.weight_params(gm)
            fq = gm.graph.call_function(_fq_channel, (w_node, s_node, z_node, 0, params.qmin, params.qmax))
        dq.replace_all_uses_with(fq)
        gm.graph.erase_node(dq)
    for node in list(gm.graph.nodes):
        if is_qdq_pair(node):
            q = node.args[0]
            params = read_qparams(gm, q)
            with gm.graph.inserting_before(node):
                if params.per_tensor:
                    scale, zp = params.scalar()
                    fq_args = (q.args[0], scale, zp, params.qmin, params.qmax)
                    fq = gm.graph.call_function(_fq_tensor, fq_args)
                else:
                    channels = node.meta[meta.VAL].shape[params.axis]
                    scales, zps = params.channel_scales(channels)
                    s_node = add_constant(gm, f"{q.name}_fq_scale", scales.float(), before=node)
                    z_node = add_constant(gm, f"{q.name}_fq_zp", zps.to(torch.int32), before=node)
                    with gm.graph.inserting_before(node):
                        fq = gm.graph.call_function(_fq_channel, (q.args[0], s_node, z_node, params.axis, params.qmin, params.qmax))
            node.replace_all_uses_with(fq)
            gm.graph.erase_node(node)
            if not q.users:
                gm.graph.erase_node(q)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    return gm
