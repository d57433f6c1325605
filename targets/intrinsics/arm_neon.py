"""aarch64 NEON with the dot-product extension (and i8mm's ``smmla``): the instruction
steps of the int8 kernels in ``targets/kernels``
(arm GEMM-conv, depthwise, dense).

``sdot vd.4s, vn.16b, vm.4b[i]`` adds to each int32 lane l of vd the four products
vn[4l + j]·vm[4i + j] of int8 operands: 16 multiply-adds, exact. ``smmla`` (Armv8.6 i8mm)
adds the 2×2 int32 product of a 2×8 by an 8×2 int8 block: 32 multiply-adds, exact.
The requantize epilogue built from them is ``kernels/arm_epilogue.py``.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm.script import tirx as T

from .registry import register_intrinsic


def _sdot_reference(acc, a, b):
    return acc + (a.astype(np.int64).reshape(4, 4) * b.reshape(4, 4)).sum(1).astype(np.int32)


SDOT = register_intrinsic(
    "arm_neon.sdot", "llvm.aarch64.neon.sdot.v4i32.v16i8", "int32x4",
    "acc[l] += Σ_j a[4l+j]·b[4l+j] (j < 4) for int32x4 acc, int8x16 a, b: exact", _sdot_reference)
SMMLA = register_intrinsic(
    "arm_neon.smmla", "llvm.aarch64.neon.smmla.v4i32.v16i8", "int32x4",
    "acc[2i+j] += Σ_k a[8i+k]·b[8j+k] (k < 8): the 2×2 block of a 2×8 by (8×2) int8 product: exact")
TBL2 = register_intrinsic(
    "arm_neon.tbl2", "llvm.aarch64.neon.tbl2.v16i8", "int8x16",
    "r[l] = (t0 ++ t1)[index[l]] for int8x16 t0, t1, index (32-byte table lookup)")
SQDMULH = register_intrinsic(
    "arm_neon.sqdmulh", "llvm.aarch64.neon.sqdmulh.v4i32", "int32x4", "r = sat32(⌊2·a·b / 2^32⌋) = ⌊a·b / 2^31⌋")
SRSHL_32 = register_intrinsic(
    "arm_neon.srshl.v4i32", "llvm.aarch64.neon.srshl.v4i32", "int32x4", "r = a << s, rounding right shift when s < 0")
SRSHL_64 = register_intrinsic(
    "arm_neon.srshl.v2i64", "llvm.aarch64.neon.srshl.v2i64", "int64x2", "r = a << s, rounding right shift when s < 0")
SMULL = register_intrinsic(
    "arm_neon.smull", "llvm.aarch64.neon.smull.v2i64", "int64x2", "int32x2 a, b → int64x2 a·b")
SQXTN_64 = register_intrinsic(
    "arm_neon.sqxtn.v2i32", "llvm.aarch64.neon.sqxtn.v2i32", "int32x2", "int64x2 → int32x2, saturating")
SQXTN_32 = register_intrinsic(
    "arm_neon.sqxtn.v4i16", "llvm.aarch64.neon.sqxtn.v4i16", "int16x4", "int32x4 → int16x4, saturating")
SQADD_16 = register_intrinsic(
    "arm_neon.sqadd.v8i16", "llvm.aarch64.neon.sqadd.v8i16", "int16x8", "int16x8 a + b, saturating")
NARROW_BYTES = {
    "uint8": register_intrinsic("arm_neon.sqxtun.v8i8", "llvm.aarch64.neon.sqxtun.v8i8", "uint8x8",
                                "int16x8 → uint8x8, saturating"),
    "int8": register_intrinsic("arm_neon.sqxtn.v8i8", "llvm.aarch64.neon.sqxtn.v8i8", "int8x8",
                               "int16x8 → int8x8, saturating"),
}




def as_bytes(v):
    """An int32x4 vector as int8x16."""
    return T.reinterpret("int8x16", v)


def quad_lane(quads_i32x4, i: int):
    """The int8x16 broadcast of quad ``i`` of a 4-quad vector (sdot's indexed operand)."""
    return T.reinterpret("int8x16", tvm.tirx.Shuffle([quads_i32x4], [i, i, i, i]))


def signed_bytes(v, x_dtype: str):
    """Loaded activations as int8 (a vector or a scalar): uint8 flipped by x − 128 (xor
    0x80); the zero point moves by −128 with them (``activation_zero_point``)."""
    if x_dtype != "uint8":
        return v
    lanes = v.ty.dtype.lanes
    if lanes == 1:
        return T.reinterpret("int8", v ^ T.uint8(128))
    return T.reinterpret(f"int8x{lanes}", v ^ tvm.tirx.Broadcast(tvm.tirx.const(128, "uint8"), lanes))


def activation_zero_point(x_dtype: str, x_zp: int) -> int:
    """The zero point of the int8 activations the kernels multiply (uint8 is flipped by −128)."""
    return int(x_zp) - 128 if x_dtype == "uint8" else int(x_zp)


def interleave(rows: int, lanes: range = range(16)) -> list[int]:
    """Shuffle indices that interleave ``rows`` 16-byte vectors: byte l of rows 0..rows−1,
    then byte l + 1, ... for l in ``lanes`` (``st4`` for 4 rows and all 16 lanes)."""
    return [16 * r + l for l in lanes for r in range(rows)]
