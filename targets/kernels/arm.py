"""Exact int8 kernels for aarch64 with the dot-product extension (``sdot``, Armv8.2-A
+dotprod: Cortex-A55/A76 and later; ``smmla`` GEMMs with i8mm): conv2d (pointwise,
im2col), depthwise conv2d and linear, each fused with the fixed-point requantize of
``qcompiler/fixed_point.py``, as TVM 0.27 TIR PrimFuncs for ``relax.call_tir``. Bit-exact
with the op references ``qcompiler.ops.conv2d`` / ``linear`` (tests/test_arm_int8.py runs them under qemu).

API: the same as ``kernels/x86.py``'s, so that a target lowers with either. Activations
stay NCHW between ops; each kernel packs what it reads. ``ExactnessError`` means "keep the
generic lowering". Activations are multiplied as int8: uint8 activations are flipped to
int8 by x − 128 (one ``eor`` with 0x80 per 16 bytes, where they are packed) and the zero
point moves with them (Σ (x − z)·w = Σ (x − 128)·w − (z − 128)·Σw).

Kernels (``kernel_info(func)["kind"]``): "pointwise" and "im2col" (``arm_gemm_conv.py``),
"depthwise" (``arm_depthwise.py``), "dense" (the shared loop nest of ``dense.py`` with
``DENSE``, this ISA's description: int8 quads, indexed ``sdot``, the epilogue); the
requantize epilogue is ``arm_epilogue.py``, the instruction steps
``targets/intrinsics/arm_neon.py``'s.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import tvm
from tvm.script import tirx as T

from ..intrinsics.arm_neon import SDOT, activation_zero_point, as_bytes, quad_lane, signed_bytes
from .arm_depthwise import depthwise_kernel, pack_depthwise_weights
from .arm_epilogue import encode_requant_rows, requant_vectors
from .arm_gemm_conv import gemm_conv_kernel, pack_gemm_weights
from .contract import ExactnessError, conv_operands, dtype_range, linear_operands, prepare_channels, scratch_scope
from .dense import DenseIsa, dense_primfunc
from .geometry import conv_geometry
from .relax_call import emit_call_tir, kernel_info, with_info
from .requant import RequantColumn as Col, RequantRows, group_rows, requant_params

__all__ = ["conv2d_requant_primfunc", "linear_requant_primfunc", "emit_call_tir", "kernel_info", "ExactnessError",
           "check_target", "GEMM_TILES", "KERNEL_NAMES"]

GEMM_TILES = {"sdot": (4, 4), "smmla": (8, 2)}  # default register tile (output channels, vectors of 4 pixels)
NEEDS = {"sdot": "+dotprod", "smmla": "+i8mm"}

# what each kind is called in the kernel choices of a build (targets/kernel_lowering.py)
KERNEL_NAMES = {"pointwise": "arm {instruction} gemm-conv (pointwise)", "im2col": "arm {instruction} gemm-conv (im2col)",
                "depthwise": "arm sdot depthwise", "dense": "arm sdot dense"}


def check_target(target, instruction: str = "sdot") -> tvm.target.Target:
    """``target`` (a tvm Target or its JSON dict), checked to be an aarch64 LLVM target with
    dotprod (and i8mm for ``instruction="smmla"``); ValueError otherwise."""
    if target is None:
        raise ValueError("the arm kernels need the tvm target they are built for (e.g. targets.arm_cpu.arm_target())")
    if isinstance(target, dict):
        target = tvm.target.Target(target)
    attrs = [str(a) for a in target.attrs.get("mattr", [])]
    needs = ["+dotprod", NEEDS[instruction]]
    if target.kind.name != "llvm" or "aarch64" not in str(target.attrs.get("mtriple", "")) \
            or not all(a in attrs for a in needs):
        raise ValueError(f"the arm {instruction} kernels need an aarch64 LLVM target with "
                         f"{' and '.join(dict.fromkeys(needs))}, got {target}")
    return target


def conv2d_requant_primfunc(x_shape: Sequence[int], x_dtype: str, w: np.ndarray, bias, x_zp: int, stride=(1, 1),
                            padding=(0, 0), dilation=(1, 1), groups: int = 1, mult=None, shift=None, out_zp: int = 0,
                            lo=0, hi=255, out_dtype: str = "uint8", target: Optional[tvm.target.Target] = None,
                            name: str = "conv2d_requant", mo: Optional[int] = None, nv: Optional[int] = None,
                            threads: Optional[int] = None, instruction: str = "sdot"):
    """A fused conv2d + requantize PrimFunc for aarch64 + dotprod, exact
    (``kernels.conv2d``), and its constants; arguments as ``kernels/x86.py``'s (``padding``
    may be (top, bottom, left, right)). ``mo`` × ``nv``: the GEMM's register tile (output
    channels × vectors of 4 pixels; default 4 × 4 for sdot, 8 × 2 for smmla).
    ``instruction``: "sdot", or "smmla" (the GEMM kernels multiply 2×8 by 8×2 blocks; the
    target needs +i8mm; depthwise stays on sdot). ``threads`` is accepted for the common
    API; the kernels run on one thread. Returns ``(func, consts)``: ``func(x, *consts,
    out)``; consts are the packed weights (GEMM: int32 [G, O/G/mo, ⌈K/16⌉, mo, 4];
    depthwise: int32 [O, ⌈kh·⌈kw/4⌉/4⌉, 4]) and the requantize rows int32 [rows, 8].
    Raises ``ExactnessError`` when exactness cannot be guaranteed."""
    if instruction not in GEMM_TILES:
        raise ValueError(f"instruction={instruction!r}: use one of {', '.join(GEMM_TILES)}")
    check_target(target, instruction)
    mm = instruction == "smmla"
    mo, nv = mo or GEMM_TILES[instruction][0], nv or GEMM_TILES[instruction][1]
    if mm and mo % 2:
        raise ValueError(f"smmla tiles take output channels in pairs: mo={mo}")
    x_dtype, out_dtype, w = conv_operands(x_dtype, w, mult, shift, out_dtype)
    geom = conv_geometry(x_shape, w.shape, stride, padding, dilation, groups)
    o, zp8, out_zp = geom.out_channels, activation_zero_point(x_dtype, x_zp), int(out_zp)
    ch = prepare_channels(w.reshape(o, -1), bias, "int8", zp8, mult, shift, out_zp, lo, hi)
    params = requant_params(ch, mult, shift, out_zp, out_dtype)
    if geom.is_depthwise:
        rq = encode_requant_rows(params)
        func, info = depthwise_kernel(geom, x_dtype, zp8, rq, out_zp, out_dtype, name)
        return with_info(func, info), [pack_depthwise_weights(ch.weights.reshape(w.shape)), rq.table]
    rq = encode_requant_rows(params, group_rows(geom.groups, geom.out_per_group, mo))
    func, info = gemm_conv_kernel(geom, x_dtype, zp8, rq, out_zp, out_dtype, name, mo=mo, nv=nv, mm=mm)
    return with_info(func, info), [pack_gemm_weights(ch.weights, geom.groups, mo, mm), rq.table]


def linear_requant_primfunc(x_shape: Sequence[int], x_dtype: str, w: np.ndarray, bias, x_zp: int, mult, shift,
                            out_zp: int = 0, lo=0, hi=255, out_dtype: str = "uint8",
                            target: Optional[tvm.target.Target] = None, name: str = "linear_requant", vo: int = 4,
                            threads: Optional[int] = None):
    """A fused linear + requantize PrimFunc (x [..., K] · w[O, K]ᵀ + bias, requantized per
    output channel) for aarch64 + dotprod, and its constants: weights int32
    [⌈O/4vo⌉, 4⌈K/16⌉, 4·vo] (per quad of k, 4·vo outputs, each int32 the 4 bytes) and the
    requantize columns int32 [8, O padded] (the rows, transposed)."""
    check_target(target)
    x_shape, x_dtype, out_dtype, w = linear_operands(x_shape, x_dtype, w, out_dtype)
    o = w.shape[0]
    zp8, out_zp = activation_zero_point(x_dtype, x_zp), int(out_zp)
    ch = prepare_channels(w, bias, "int8", zp8, mult, shift, out_zp, lo, hi)
    rq = encode_requant_rows(requant_params(ch, mult, shift, out_zp, out_dtype))
    func, info, consts = dense_primfunc(DENSE, x_shape, x_dtype, ch.weights, rq, out_zp, out_dtype, name, vo=vo)
    return with_info(func, info), consts


# ----------------------------------------------------------------- what arm supplies to the shared loops


def _signed_byte(x, row, column, m: int, k: int, x_dtype: str):
    """Packed activation element: x[row, column] as int8 (uint8 flipped by −128; 0 past M
    and K)."""
    return T.if_then_else(tvm.tirx.And(row < m, column < k),
                          signed_bytes(x[T.min(row, m - 1), T.min(column, k - 1)], x_dtype), T.int8(0))


def _sdot_step(acc, weights, words, tile, step, substep, vector, row):
    """``sdot`` into acc (int32x4): the 4 channels × 4 int8 weights of weight row
    4·step + substep by quad ``substep`` of the 16 activations of ``row`` loaded at ``step``
    (the indexed operand)."""
    return SDOT(acc, as_bytes(weights[tile, step * 4 + substep, T.ramp(vector * 4, 1, 4)]),
                quad_lane(words[row, T.ramp(step * 4, 1, 4)], substep))


def _requantize_4(acc, column, rq: RequantRows, out_zp: int, out_dtype: str):
    """``out_dtype`` x4 of an int32x4 accumulator (``arm_epilogue``)."""
    return requant_vectors([acc], column(Col.MULTIPLIER), column(Col.SHIFT), T.Cast(f"{out_dtype}x4", column(Col.LO)),
                           T.Cast(f"{out_dtype}x4", column(Col.HI)), rq, out_zp, out_dtype)


# dense: 4 channels per int32x4, 16 int8 activations per load (4 indexed sdots), 4 rows × 4
# vectors per task, one thread; the padding channels clamp to the output dtype's range
DENSE = DenseIsa(lanes=4, group=4, substeps=4, rows=4, weight_dtype="int32", packed_dtype="int8", k_per_element=1,
                 parallel=False, vectors_outer=False, scratch_scope=scratch_scope, pack_element=_signed_byte,
                 multiply_accumulate=_sdot_step, requantize=_requantize_4,
                 padding_columns=lambda out_dtype: dict(zip((Col.LO, Col.HI), dtype_range(out_dtype))))
