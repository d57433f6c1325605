"""Helpers for tests of targets/kernels/arm.py: operands, references from qcompiler.ops, and
one aarch64 build for many kernel cases (one cross-build and one qemu run for them all)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tvm import relax

from qcompiler.ops import conv2d as conv2d_op, linear as linear_op
from qcompiler.targets.arm_cpu import arm_target
from qcompiler.targets.kernels import arm as A

from kernel_operands import dtype_range, operands


@dataclass
class Case:
    """One kernel, the inputs it runs on and the reference outputs."""

    name: str
    func: object
    consts: list
    inputs: list
    refs: list
    info: dict = field(default_factory=dict)


def _inputs(rng, shape, dtype, extremes=True):
    lo, hi = dtype_range(dtype)
    xs = [rng.integers(lo, hi + 1, shape).astype(dtype)]
    if extremes:
        xs += [np.full(shape, hi, dtype), np.full(shape, lo, dtype)]
    return xs


def conv_case(name, x_shape, w_shape, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1, x_dtype="uint8",
              out_dtype="uint8", shift_kind="fast", full_range=False, seed=0, weights=None, bias=None, **options) -> Case:
    rng = np.random.default_rng(seed)
    o, k = w_shape[0], int(np.prod(w_shape[1:]))
    w = rng.integers(-127, 128, w_shape).astype(np.int8) if weights is None else weights
    p = operands(rng, o, k, x_dtype, out_dtype, shift_kind, full_range)
    if bias is not None:
        p["bias"] = bias
    options.setdefault("target", arm_target())
    func, consts = A.conv2d_requant_primfunc(x_shape, x_dtype, w, p["bias"], p["x_zp"], stride, padding, dilation, groups,
                                             p["mult"], p["shift"], p["out_zp"], p["lo"], p["hi"], out_dtype, **options)
    xs = _inputs(rng, x_shape, x_dtype)
    refs = []
    for x in xs:
        ref_x, ref_padding = x, padding
        if len(padding) == 4:  # (top, bottom, left, right): an explicit zero-point pad before the conv
            top, bottom, left, right = padding
            ref_x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=p["x_zp"])
            ref_padding = (0, 0)
        refs.append(conv2d_op.reference(ref_x, w, p["bias"], p["x_zp"], stride, ref_padding, dilation, groups, p["mult"],
                                   p["shift"], p["out_zp"], p["lo"], p["hi"]).astype(out_dtype))
    return Case(name, func, consts, xs, refs, A.kernel_info(func))


def linear_case(name, x_shape, o, x_dtype="uint8", out_dtype="uint8", shift_kind="fast", full_range=False, seed=0,
                **options) -> Case:
    rng = np.random.default_rng(seed)
    k = x_shape[-1]
    w = rng.integers(-127, 128, (o, k)).astype(np.int8)
    p = operands(rng, o, k, x_dtype, out_dtype, shift_kind, full_range)
    options.setdefault("target", arm_target())
    func, consts = A.linear_requant_primfunc(x_shape, x_dtype, w, p["bias"], p["x_zp"], p["mult"], p["shift"],
                                             p["out_zp"], p["lo"], p["hi"], out_dtype, **options)
    xs = _inputs(rng, x_shape, x_dtype)
    refs = [linear_op.reference(x, w, p["bias"], p["x_zp"], p["mult"], p["shift"], p["out_zp"], p["lo"], p["hi"]).astype(out_dtype)
            for x in xs]
    return Case(name, func, consts, xs, refs, A.kernel_info(func))


def build_cases(cases: list[Case]) -> tuple[relax.Function, list[np.ndarray]]:
    """A Relax module whose main runs every case's kernel on each of its inputs (outputs in
    order), and the flat list of inputs."""
    bb = relax.BlockBuilder()
    params, inputs = [], []
    for ci, case in enumerate(cases):
        for xi, x in enumerate(case.inputs):
            params.append(relax.Var(f"x{ci}_{xi}", relax.TensorType(list(x.shape), str(x.dtype))))
            inputs.append(x)
    with bb.function("main", params):
        with bb.dataflow():
            outs, pi = [], 0
            for ci, case in enumerate(cases):
                for _ in case.inputs:
                    outs.append(A.emit_call_tir(bb, case.func, case.consts, params[pi], name_hint=f"k{ci}"))
                    pi += 1
            result = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(result)
    return bb.get(), inputs


def mismatches(cases: list[Case], outputs: list[np.ndarray]) -> list[str]:
    """One line per case input whose output differs from the reference."""
    problems, i = [], 0
    for case in cases:
        for xi, ref in enumerate(case.refs):
            got = outputs[i]
            i += 1
            bad = got != ref
            if got.shape != ref.shape:
                problems.append(f"{case.name} input {xi}: shape {got.shape}, expected {ref.shape}")
            elif bad.any():
                first = tuple(np.argwhere(bad)[0])
                problems.append(f"{case.name} ({case.info}) input {xi}: {int(bad.sum())} of {bad.size} differ, first at "
                                f"{first}: {got[first]} instead of {ref[first]}")
    return problems
