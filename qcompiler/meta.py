"""Every metadata key qcompiler reads or writes in torch.fx ``node.meta`` and
``GraphModule.meta``, declared once, with what it holds.

Write ``node.meta[meta.FLOAT_WEIGHT]``, never the string itself: a key spelled here is
one grep away from every pass that reads or writes it. The values are the strings the
graphs have always carried, so graphs made before this module existed read the same.
"""
from __future__ import annotations

# --------------------------------------------------------------- keys torch.export sets
VAL = "val"  # node: the FakeTensor (shape, dtype) of the node's output, set by torch.export; passes keep it on new nodes
NN_MODULE_STACK = "nn_module_stack"  # node: {key: (module path, module class)} of the modules the node was traced in

# --------------------------------------------------------------- node keys qcompiler sets
BN_STATS = "bn_stats"  # conv/linear node: {"mean", "std"} float64 per channel of its output, from the BatchNorm fold_bn folded into it
FLOAT_WEIGHT = "qc_float_weight"  # conv/linear node: its float weight tensor as it was before insert_quantizers quantized it
WEIGHT_SPEC = "qc_weight_spec"  # conv/linear node: the QuantSpec its weight was quantized with (insert_quantizers)
FLOAT_BIAS = "qc_float_bias"  # conv/linear node: its float bias before calibrate replaced it by an int32 bias
SPEC = "qc_spec"  # activation quantize node: the QuantSpec of the activation it quantizes (calibrate)
SIM_NODE = "qc_sim_node"  # integer-program node: the name of the simulation node it was converted from
KEPT_FLOAT = "qc_kept_float"  # simulation node: why it runs in float ("override" or "fallback_ops"), set by insert_quantizers
FLOAT_FALLBACK = "qc_float_fallback"  # integer-program node: True when it runs in float (an op kept in float)

# --------------------------------------------------------------- graph keys (GraphModule.meta)
EXAMPLE_INPUTS = "example_inputs"  # captured graph: the example inputs (a tuple) qcompiler.capture traced it with
MODEL_CLASS = "model_class"  # captured graph: the class name of the nn.Module it was captured from
SCHEME = "qc_scheme"  # quantized graph: the QuantScheme insert_quantizers applied
OVERRIDES = "qc_overrides"  # quantized graph: {node name: NodeOverride} the overrides resolved to nodes
QPARAMS = "qc_qparams"  # simulation: {quantized value's node name: QuantParams} as calibrate chose them (the graph's buffers are the live values)
INPUTS = "qc_inputs"  # integer program: {input name: (scale, zero point, qmin, qmax, dtype)} of its edge quantizers

# --------------------------------------------------------------- names (not meta keys)
OBSERVER_PREFIX = "qc_obs_"  # submodule name prefix of the observers insert_quantizers adds (calibrate turns them into Q/DQ)
