"""A schedule for the kernels TVM generates on CPU targets (the fused elementwise chains of
the generic lowering: residual adds with their requantize, the edge quantize, layout
copies), which the default CPU pipeline leaves as scalar loops: inline every block into the
last, fuse its loops, vectorize the innermost ``lanes`` and run large ones in parallel.

Kernels of our own (PrimFuncs with a ``qcompiler.kernel`` attribute) and kernels with a
reduction are left as they are. A schedule only reorders loops, so every value is computed
by the same expression as before (bit for bit the same result).

    pipeline = cpu_pipeline(target)          # Relax's CPU pipeline with this schedule inserted
    executable = tvm.compile(mod, target, relax_pipeline=pipeline)
"""
from __future__ import annotations

from typing import Optional

import tvm
from tvm import relax, s_tir, tirx

__all__ = ["schedule_injective", "ScheduleInjectiveKernels", "cpu_pipeline", "PARALLEL_MIN_ELEMENTS"]

PARALLEL_MIN_ELEMENTS = 1 << 15
"""Below this many output elements a kernel runs on one thread (a parallel launch costs
more than it saves)."""


def schedule_injective(func: tirx.PrimFunc, lanes: int = 16) -> Optional[tirx.PrimFunc]:
    """``func`` with its spatial blocks inlined into one, whose loops are fused, split by
    ``lanes`` and vectorized (outer part parallel when large); None when ``func`` is not a
    plain injective kernel (a reduction, opaque blocks, already scheduled)."""
    from tvm.s_tir.dlight.analysis import normalize_prim_func
    from tvm.s_tir.dlight.base import try_inline

    if func.attrs is not None and "qcompiler.kernel" in func.attrs:
        return None
    try:
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if not infos or any(info.is_reduction() for info in infos):
            return None
        infos = try_inline(sch, infos)
        if len(infos) != 1:
            return None
        loops = sch.get_loops(infos[0].block_rv)
        if not loops:
            return None
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        extent = sch.get(fused).extent
        if not isinstance(extent, tirx.IntImm):
            return None
        extent = int(extent.value)
        if extent >= lanes:
            outer, inner = sch.split(fused, [None, lanes])
            sch.vectorize(inner)
            if extent >= PARALLEL_MIN_ELEMENTS:
                sch.parallel(outer)
        return sch.mod["main"]
    except tvm.TVMError:
        return None


@tvm.transform.module_pass(opt_level=0, name="qcompiler.ScheduleInjectiveKernels")
class ScheduleInjectiveKernels:
    """Apply ``schedule_injective`` to every PrimFunc of the module that it fits."""

    def __init__(self, lanes: int = 16):
        self.lanes = lanes

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        updates = {}
        for gv, func in mod.functions.items():
            if isinstance(func, tirx.PrimFunc):
                scheduled = schedule_injective(func, self.lanes)
                if scheduled is not None:
                    updates[gv] = scheduled
        for gv, func in updates.items():
            mod[gv] = func
        return mod


def cpu_pipeline(target: tvm.target.Target) -> tvm.transform.Pass:
    """Relax's CPU pipeline (``relax.backend.cpu_generic``: legalize, fuse elementwise
    chains into one kernel each, lower to the VM), with ``ScheduleInjectiveKernels`` after
    the fusion. (``tvm.compile``'s own default pipeline neither fuses nor schedules.)"""
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    @tvm.transform.module_pass(opt_level=0, name="qcompiler.cpu_pipeline")
    def pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        with target:
            passes = (cpu.library_dispatch_passes(target) + cpu.legalize_passes(target) + [ScheduleInjectiveKernels()]
                      + cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target))
            return tvm.transform.Sequential(passes)(mod)

    return pipeline
