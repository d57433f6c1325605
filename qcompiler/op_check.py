"""``check_op``: the checks an op of the registry owes (docs/custom-op.md), run on a model that
uses it: the op is in the integer program (not a float fallback), every integer op is within
one quantization step of the simulation, and the build for each target equals the
interpreter bit for bit.

    from qcompiler.testing import check_op
    check_op(model, (x,), "upsample_nearest2d", targets=("host",))
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch.utils._pytree import tree_leaves

from . import meta
from .compiled import compile_model
from .ops import op_for_target
from .quantize import QuantizedModel, quantize


@dataclass
class OpCheck:
    """What ``check_op`` found: the quantized model, the worst step difference of any integer
    op against the simulation, and the targets built bit-exact."""

    qm: QuantizedModel
    uses: int
    max_steps: int
    exact_targets: list[str] = field(default_factory=list)


def _probes(inputs: tuple, count: int) -> list[tuple]:
    gen = torch.Generator().manual_seed(0)
    probes = [inputs]
    for scale in (0.5, 3.0, 100.0)[:count]:  # around and far outside the calibration range: clipping too
        probes.append(tuple(torch.randn(t.shape, generator=gen) * scale if t.is_floating_point() else t for t in inputs))
    return probes


def _row_name(node) -> Optional[str]:
    row = op_for_target(node.target) if node.op == "call_function" else None
    return row.name if row is not None else None


def check_op(model: torch.nn.Module, inputs: Any, op: str, targets: Sequence[str] = ("host",),
             calibration: Optional[list] = None, max_steps: int = 1, **quantize_kwargs: Any) -> OpCheck:
    """Quantize ``model`` on ``inputs`` and check the op ``op`` (its registry name: "conv2d",
    or "aten.flip.default" for a layout op):

    - the program holds at least one ``op`` node and no float fallback;
    - run as a torch module (through the ops' schemas) it equals the interpreter;
    - every integer op is within ``max_steps`` quantization steps of the simulation (each
      fed the simulation's own inputs: ``qm.compare_ops``), on ``inputs`` and on random
      probes (0 for an op that copies codes, e.g. a layout op);
    - for each of ``targets``, the build's outputs equal the interpreter's bit for bit.

    Raises AssertionError saying which check failed, with the node and numbers."""
    inputs = tuple(inputs) if isinstance(inputs, (list, tuple)) else (inputs,)
    qm = quantize(model, inputs, calibration=calibration or [inputs], **quantize_kwargs)
    nodes = qm.program.graph.nodes
    uses = sum(1 for n in nodes if _row_name(n) == op)
    fallbacks = [n.name for n in nodes if n.meta.get(meta.FLOAT_FALLBACK)]
    assert uses, (f"the integer program has no {op!r} node; its ops: {sorted({_row_name(n) for n in nodes} - {None})} "
                  f"(is {op!r} a source op's name after capture's decompositions? qcompiler.capture(model, inputs).graph "
                  f"shows the ops the model captures to)")
    assert not fallbacks, f"the integer program keeps float fallback node(s) {fallbacks}"
    for i, (a, b) in enumerate(zip(tree_leaves(qm.program(*inputs)), tree_leaves(qm.interpret(*inputs)))):
        assert torch.equal(a, b), f"output {i}: the program run in torch (the ops' schemas) differs from the interpreter"
    worst = 0
    for probe in _probes(inputs, 2):
        rows = qm.compare_ops(*probe)
        bad = max(rows, key=lambda r: r.max_diff)
        assert bad.max_diff <= max_steps, (f"{bad.node} ({bad.op}) is {bad.max_diff} steps from the simulation "
                                           f"(at most {max_steps} allowed)")
        worst = max(worst, bad.max_diff)
    result = OpCheck(qm, uses, worst)
    for target in targets:
        cm = compile_model(qm, target, progress=False)
        for probe in _probes(inputs, 3):
            want = [t.numpy() for t in tree_leaves(qm.interpret(*probe))]
            got = [t.numpy() for t in tree_leaves(cm(*probe))]
            for i, (w, g) in enumerate(zip(want, got)):
                assert w.dtype == g.dtype and w.shape == g.shape, f"{target} output {i}: {g.dtype}{g.shape} vs {w.dtype}{w.shape}"
                assert np.array_equal(w, g), (f"{target} output {i}: {int((w != g).sum())} of {w.size} elements differ "
                                              f"from the interpreter: an op's lowering computes something else than "
                                              f"its numpy reference")
        result.exact_targets.append(target)
    return result
