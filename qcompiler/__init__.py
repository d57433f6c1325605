"""qcompiler: a quantization compiler for PyTorch models.

    gm = qcompiler.capture(model, example_inputs)
    result = qcompiler.PassManager(["fold_bn", "equalize"], verify=True).run(gm)
    print(result.report)
"""
from .capture import capture
from .errors import CaptureError, GraphError, PassError, PassOrderError, QCompilerError
from .pass_manager import (ContractError, Pass, PassContext, PassManager, PassReport, PassResult, Problem, get_pass,
                           order_passes, register_pass, run_passes)
from .verify import count_ops, verify_graph
from .scheme import QuantScheme, QuantSpec, SchemeError, activation_spec, arm_scheme, host_scheme, weight_spec
from .quantize import QuantizedModel, from_pt2e, qcompile, quantize  # imports qcompiler.passes: registers the built-in passes
from .compiled import CompiledModel, LoadedModel, load
from .inputs import InputError
from . import meta

FLOAT_PASSES = ["fold_bn", "equalize"]

__all__ = [
    "capture", "Pass", "PassContext", "PassManager", "PassReport", "PassResult", "Problem", "ContractError", "register_pass", "run_passes",
    "get_pass", "order_passes", "verify_graph", "count_ops", "FLOAT_PASSES",
    "quantize", "qcompile", "CompiledModel", "load", "LoadedModel", "InputError", "from_pt2e", "QuantizedModel", "QuantScheme", "QuantSpec", "SchemeError", "host_scheme", "arm_scheme", "weight_spec", "activation_spec",
    "QCompilerError", "CaptureError", "PassError", "PassOrderError", "GraphError",
]
