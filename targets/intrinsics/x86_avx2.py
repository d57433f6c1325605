"""x86 AVX2 (no AVX-512, no VNNI): the instruction steps of the int8 kernels in
``targets/kernels`` (x86 GEMM-conv, depthwise, dense, u8s8), registered by name.

Multiply-accumulate: activations and weights widened to int16, ``vpmaddwd`` (16 int16
products summed in pairs into 8 int32, |pair sum| ≤ 2·255·128 < 2^31: exact).
``vpmaddubsw`` saturates its int16 pair sums and is only used where the weights prove it
cannot (``kernels/x86_u8s8.py``). Narrowing: the saturating packs. ``mulhi_*``: (a·m) >> 32
in 32-bit lanes by two ``vpmuldq``, for the requantize epilogue (``kernels/x86_epilogue.py``).
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm.script import tirx as T

from .registry import register_intrinsic

PMADDWD = register_intrinsic(
    "x86_avx2.pmaddwd", "llvm.x86.avx2.pmadd.wd", "int32x8",
    "r[i] = a[2i]·b[2i] + a[2i+1]·b[2i+1] for int16x16 a, b: int32x8, exact",
    lambda a, b: (a.astype(np.int64).reshape(-1, 2) * b.reshape(-1, 2)).sum(1).astype(np.int32))
PMADDUBSW = register_intrinsic(
    "x86_avx2.pmaddubsw", "llvm.x86.avx2.pmadd.ub.sw", "int16x16",
    "r[i] = sat16(a[2i]·b[2i] + a[2i+1]·b[2i+1]) for uint8x32 a, int8x32 b: saturating",
    lambda a, b: np.clip((a.astype(np.int64).reshape(-1, 2) * b.reshape(-1, 2)).sum(1), -32768, 32767).astype(np.int16))
PACKSSDW_256 = register_intrinsic(
    "x86_avx2.packssdw", "llvm.x86.avx2.packssdw", "int16x16",
    "int32x8 a, b → int16x16 [sat(a0-3) sat(b0-3) | sat(a4-7) sat(b4-7)] (per 128-bit lane)")
PACKSSDW_128 = register_intrinsic(
    "x86_sse2.packssdw", "llvm.x86.sse2.packssdw.128", "int16x8", "int32x4 a, b → int16x8 [sat(a) sat(b)]")
PACKUSWB_128 = register_intrinsic(
    "x86_sse2.packuswb", "llvm.x86.sse2.packuswb.128", "uint8x16", "int16x8 a, b → uint8x16 [usat(a) usat(b)]")
PACKSSWB_128 = register_intrinsic(
    "x86_sse2.packsswb", "llvm.x86.sse2.packsswb.128", "int8x16", "int16x8 a, b → int8x16 [sat(a) sat(b)]")
PACK_BYTES = {"uint8": PACKUSWB_128, "int8": PACKSSWB_128}  # int16x8 pairs → the output dtype, saturating



# ----------------------------------------------------------------- (a·m) >> 32


def _mulhi_i32x8(a, m_even_odd):
    """(a·m) >> 32 for int32x8 ``a``; ``m_even_odd(odd)`` gives m for the even or the odd
    lanes as int64x4: ``vpmuldq`` on both halves (int64 multiplies of sign-extended low
    halves, which LLVM selects as vpmuldq), then a blend of the high halves."""
    c32 = tvm.tirx.Broadcast(tvm.tirx.const(32, "int64"), 4)
    u32 = tvm.tirx.Broadcast(tvm.tirx.const(32, "uint64"), 4)

    def sext_lo(v64):
        return (v64 << c32) >> c32

    even = sext_lo(T.reinterpret("int64x4", a)) * m_even_odd(False)
    odd = sext_lo(T.reinterpret("int64x4", T.reinterpret("uint64x4", a) >> u32)) * m_even_odd(True)
    even_hi = T.reinterpret("int32x8", T.reinterpret("uint64x4", even) >> u32)
    return tvm.tirx.Shuffle([even_hi, T.reinterpret("int32x8", odd)], [0, 9, 2, 11, 4, 13, 6, 15])


def mulhi_scalar(a, m):
    """(a·m) >> 32 for int32x8 ``a`` and a broadcast int32 ``m``."""
    mv = tvm.tirx.Broadcast(tvm.tirx.Cast("int64", m), 4)
    return _mulhi_i32x8(a, lambda odd: mv)


def mulhi_lanes(a, mv):
    """(a·m) >> 32 lane by lane for int32x8 ``a`` and ``mv``."""
    c32 = tvm.tirx.Broadcast(tvm.tirx.const(32, "int64"), 4)
    u32 = tvm.tirx.Broadcast(tvm.tirx.const(32, "uint64"), 4)

    def m_half(odd):
        v64 = T.reinterpret("int64x4", T.reinterpret("uint64x4", mv) >> u32) if odd else T.reinterpret("int64x4", mv)
        return (v64 << c32) >> c32

    return _mulhi_i32x8(a, m_half)
