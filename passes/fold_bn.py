"""fold_bn: fold eval-mode BatchNorm into the conv or linear layer that feeds it."""
from __future__ import annotations

import torch
import torch.fx as fx

from qcompiler import meta
from qcompiler.graph import (BN_EVAL_OPS, BN_TRAIN_OPS, getitem_users, is_call, layer_view, node_label,
                             output_shape, remove_unused_constants, replace_all_uses, replace_constant_arg, tensor_arg)
from qcompiler.pass_manager import Pass, PassContext, PassResult, Problem, register_pass


def bn_stats(node: fx.Node) -> dict | None:
    """The per-channel mean and std of the pre-activation output of a conv/linear whose
    BatchNorm was folded into it (recorded by fold_bn; used by equalize's bias absorption)."""
    return node.meta.get(meta.BN_STATS)


@register_pass(before=["equalize"])
class FoldBn(Pass):
    """Fold every eval-mode BatchNorm whose input is a conv (any groups, padding, stride,
    dilation; with or without bias; 1d/2d/3d) or a 2-d linear, and which is that layer's only
    user, into the layer's weight and bias: W' = W·γ/√(σ²+ε), b' = (b−μ)·γ/√(σ²+ε) + β.

    Preserves the function up to float rounding: the folded parameters are computed in
    float64 and rounded once to float32, so the outputs move by a few float32 ulps per layer
    (relative error below 1e-4 of the output's max magnitude; on EfficientNet-Lite0 it is
    ~1e-6). Any other BatchNorm is left alone. A training-mode BatchNorm is an error: folding
    it would change the function. The BN's γ and β are kept on the layer as ``bn_stats``
    (the per-channel std and mean of its output) for equalize's high-bias absorption.
    """

    preserves = "function_up_to_fp"
    tolerance = 1e-4

    def requires(self, gm: fx.GraphModule, ctx: PassContext) -> list[Problem]:
        training = [n for n in gm.graph.nodes if is_call(n, BN_TRAIN_OPS)]
        if not training:
            return []
        return [Problem(
            "fold_bn: BatchNorm in training mode (it normalises with batch statistics, so folding "
            f"would change the function): {', '.join(node_label(n) for n in training)}",
            "capture the model in eval mode (qcompiler.capture does this: call it on the model, "
            "or call model.eval() before torch.export)")]

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        folded, skipped = 0, []
        for bn in [n for n in gm.graph.nodes if is_call(n, BN_EVAL_OPS)]:
            reason = self._fold(gm, bn)
            if reason:
                skipped.append(f"{bn.name}: {reason}")
            else:
                folded += 1
        remove_unused_constants(gm)
        ctx.notes["fold_bn"] = skipped
        summary = f"folded {folded} BatchNorm(s)" + (f"; left {len(skipped)} alone ({'; '.join(skipped[:3])})" if skipped else "")
        return PassResult(gm, modified=folded > 0, summary=summary, counts={"folded": folded, "left_alone": len(skipped)})

    @staticmethod
    def _fold(gm: fx.GraphModule, bn: fx.Node) -> str:
        """Fold ``bn`` into its producer; return '' on success, else why it was left alone."""
        layer = layer_view(gm, bn.args[0])
        if layer is None:
            return "its input is not a conv/linear with constant weights"
        if len(layer.node.users) != 1:
            return f"{layer.node.name} has other users"
        outs = getitem_users(bn)
        if set(outs) - {0} and any(outs[i].users for i in outs if i != 0):
            return "its mean/var outputs are used"
        if layer.kind == "linear":
            shape = output_shape(layer.node)
            if shape is None or len(shape) != 2:
                return "a BatchNorm after a linear folds only when the linear's output is 2-d [N, C]"
        mean, var = tensor_arg(gm, bn, 3), tensor_arg(gm, bn, 4)
        if mean is None or var is None or mean.numel() != layer.out_channels:
            return "no running statistics matching the layer's channels"
        gamma = tensor_arg(gm, bn, 1)
        beta = tensor_arg(gm, bn, 2)
        eps = float(bn.args[6])
        c = layer.out_channels
        gamma = torch.ones(c, dtype=torch.float64) if gamma is None else gamma.double()
        beta = torch.zeros(c, dtype=torch.float64) if beta is None else beta.double()
        scale = gamma / torch.sqrt(var.double() + eps)
        weight = tensor_arg(gm, layer.node, 1).double()
        bias = tensor_arg(gm, layer.node, 2)
        bias = torch.zeros(c, dtype=torch.float64) if bias is None else bias.double()
        new_weight = weight * scale.view(-1, *([1] * (weight.dim() - 1)))
        new_bias = (bias - mean.double()) * scale + beta
        replace_constant_arg(gm, layer.node, 1, new_weight.float(), f"{layer.node.name}_weight_folded")
        replace_constant_arg(gm, layer.node, 2, new_bias.float(), f"{layer.node.name}_bias_folded")
        layer.node.meta[meta.BN_STATS] = {"mean": beta.clone(), "std": gamma.abs().clone()}
        replace_all_uses(outs[0], layer.node) if 0 in outs else None
        for item in outs.values():
            gm.graph.erase_node(item)
        gm.graph.erase_node(bn)
        return ""
