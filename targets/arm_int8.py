"""Exact int8 kernels for aarch64 with the dot-product extension (``sdot``, Armv8.2-A
+dotprod: Cortex-A55/A76 and later): conv2d (pointwise, im2col), depthwise conv2d and
linear, each fused with the fixed-point requantize of ``qcompiler/fixed_point.py``, as TVM
0.27 TIR PrimFuncs (TVMScript) for ``relax.call_tir``. Bit-exact with
``qcompiler.kernels.conv2d`` / ``linear`` (tests/test_arm_int8.py runs them under qemu).

API (the same as ``x86_int8``'s, so that a target lowers with either)
    func, consts = conv2d_requant_primfunc(x_shape, x_dtype, w, bias, x_zp, stride, padding,
                                           dilation, groups, mult, shift, out_zp, lo, hi,
                                           out_dtype, target)
    func, consts = linear_requant_primfunc(x_shape, x_dtype, w, bias, x_zp, mult, shift,
                                           out_zp, lo, hi, out_dtype, target)
    y = emit_call_tir(bb, func, consts, x)

Activations stay NCHW between ops, as the integer program holds them; each kernel packs
what it reads. ``ExactnessError`` means "keep the generic lowering" (an accumulator that
could leave int32 with a non-constant output, a shape no kernel here covers).

The one instruction: ``sdot vd.4s, vn.16b, vm.4b[i]`` adds to each int32 lane l of vd the
four products vn[4l + j]·vm[4i + j] (j = 0..3) of int8 operands: 16 multiply-adds, exact
(the products and their sums fit in int32; nothing saturates). Activations are int8: the
arm_cpu scheme's activations are int8 already; uint8 activations are flipped to int8 by
x − 128 (one ``eor`` with 0x80 per 16 bytes, where they are packed) and 128·Σw moves into
the bias, as the zero point does: Σ (x − z)·w = Σ (x − 128)·w − (z − 128)·Σw.

Kernels (``kernel_info(func)["kind"]``)
- "pointwise" (1×1, stride 1, no padding) and "im2col" (any other conv with more than one
  input channel per group): a GEMM out[o, p] = Σ_k w[o, k]·x[k, p]. Per (batch, group,
  chunk of output pixels), the chunk's activations are packed once as quads of
  consecutive reduction indices, xq[k/4, p] (4 bytes per pixel: 4 rows interleaved by one
  ``st4``; im2col reads a zero-point padded int8 copy of x, stride 2 through ``ld2``), and
  reused by every output channel. The register tile is ``mo`` output channels × ``nv``
  vectors of 4 pixels (4 × 4 by default: 16 accumulators); per 4 quads of k it loads one
  16-byte weight vector per output channel (4 quads) and 4·nv pixel vectors, and issues
  4·mo·nv indexed ``sdot``s: 64 sdot to 10 ``ldp`` loads.
- "depthwise": one plane per output channel, copied as int8 with zero-point padding. Each
  kernel row's taps go in groups of 4 (``tbl`` gathers, from a 32-byte window of the
  input row, the 4 taps of each of 4 output pixels: a sliding window for stride 1, every
  other byte for stride 2), and one indexed ``sdot`` multiplies them by that tap group's
  weights, held in registers: a 3×3 kernel takes 3 ``tbl`` + 3 ``sdot`` per 4 outputs.
- "dense" (linear): output channels in the lanes; weights packed [o-tile][k/4][4·vo
  outputs][4] (16 bytes = 4 outputs × 4 k), activations broadcast a quad at a time by the
  indexed ``sdot`` from one 16-byte load.

Requantize clamp(z + ((acc·m + 2^(S−1)) >> S), lo, hi), four lanes at a time:
- S ≥ 32 (always so in EfficientNet-Lite0): h = ``sqdmulh``(acc, m) = ⌊acc·m / 2^31⌋ (it
  saturates only for acc = m = −2^31, and m ≥ 0), then ``srshl`` by −(S − 31), the
  rounding shift ⌊(h + 2^(S−32)) / 2^(S−31)⌋. Nested floors compose:
  ⌊(⌊a/2^31⌋ + 2^(S−32)) / 2^(S−31)⌋ = ⌊(a + 2^(S−1)) / 2^S⌋, the int64 formula.
- any S: ``smull``/``smull2`` to int64 lanes, ``srshl`` by −S, saturating narrow.
Then saturating narrows to int16 (``sqxtn``), the output zero point added with int16
saturation (``sqadd``), a saturating narrow to the output dtype (``sqxtn``/``sqxtun``)
and the clamp to [lo, hi] on the 8-bit lanes. Saturation is monotone and every bound it
can hit lies outside [lo, hi], so the clamp sees what the int64 formula would give.
Channels whose accumulator could leave int32 but whose output is provably constant (see
``int8_common._prepare_channels``) get m = 0 and lo = hi = that constant.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import tvm
from tvm.script import tirx as T

from .int8_common import ExactnessError, _cdiv, _drange, _pad4, _per_channel, _prepare_channels, _scope, \
    concat_vectors, emit_call_tir, kernel_info

__all__ = ["conv2d_requant_primfunc", "linear_requant_primfunc", "emit_call_tir", "kernel_info", "ExactnessError",
           "check_target", "SDOT", "SMMLA", "GEMM_TILES"]

SDOT = "llvm.aarch64.neon.sdot.v4i32.v16i8"
SMMLA = "llvm.aarch64.neon.smmla.v4i32.v16i8"
PACK_BYTES = 32768  # packed activations of one GEMM chunk: about half of a Cortex-A76's L1D


# The GEMM's register tile per instruction: (output channels, vectors of 4 pixels).
GEMM_TILES = {"sdot": (4, 4), "smmla": (8, 2)}
NEEDS = {"sdot": "+dotprod", "smmla": "+i8mm"}


def check_target(target: Optional[tvm.target.Target], instruction: str = "sdot") -> tvm.target.Target:
    """The target (default: arm_cpu's), checked to be an aarch64 LLVM target with dotprod
    (and i8mm for ``instruction="smmla"``)."""
    if target is None:
        from .arm_cpu import arm_target

        target = arm_target()
    if isinstance(target, dict):
        target = tvm.target.Target(target)
    attrs = [str(a) for a in target.attrs.get("mattr", [])]
    needs = ["+dotprod", NEEDS[instruction]]
    if target.kind.name != "llvm" or "aarch64" not in str(target.attrs.get("mtriple", "")) \
            or not all(a in attrs for a in needs):
        raise ValueError(f"targets/arm_int8 {instruction} kernels need an aarch64 LLVM target with "
                         f"{' and '.join(dict.fromkeys(needs))}, got {target}")
    return target


# ----------------------------------------------------------------- requantize


@dataclass
class ArmRequant:
    """Per-channel requantize rows, int32 [rows, 8]: [bias', m, −shift', 0, lo, hi, 0, 0]
    where bias' holds the folded zero points and shift' = S − 31 ("fast": sqdmulh then a
    rounding shift) or S ("int64"). Constant channels: m = 0, lo = hi = the constant."""

    rq: np.ndarray
    mode: str
    clamp: bool  # False when every [lo, hi] is the output dtype's range (the narrows saturate)


def requant_rows(bias, mult, shift, lo, hi, const, n: int, out_dtype: str, rows: Optional[np.ndarray] = None) -> ArmRequant:
    """Rows for ``n`` output channels; ``rows[i]`` is the channel of row i (−1: padding)."""
    b, m, s, l, h = (_per_channel(a, n, nm) for a, nm in ((bias, "bias"), (mult, "mult"), (shift, "shift"),
                                                         (lo, "lo"), (hi, "hi")))
    const = np.asarray(const, bool)
    live = ~const
    if np.any(m < 0) or np.any(m > 2**31 - 1) or np.any(s < 0) or np.any(s > 62):
        raise ExactnessError("mult must be in [0, 2^31) and shift in [0, 62]")
    if np.any(np.abs(b) > 2**31 - 1):
        raise ExactnessError("bias with the zero point folded in does not fit in int32")
    dmin, dmax = _drange(out_dtype)
    if np.any(l < dmin) or np.any(h > dmax):
        raise ExactnessError(f"requantize bounds [lo, hi] outside the range of {out_dtype}")
    mode = "fast" if np.all(s[live] >= 32) else "int64"
    rows = np.arange(n) if rows is None else rows
    rq = np.zeros((len(rows), 8), np.int64)
    rq[:, 5] = dmax
    rq[:, 4] = dmin
    for i, o in enumerate(rows):
        if o < 0:
            continue
        rq[i, 4], rq[i, 5] = l[o], h[o]
        if const[o]:
            continue  # m = 0: the clamp to lo = hi gives the constant
        rq[i, 0], rq[i, 1] = b[o], m[o]
        rq[i, 2] = -(s[o] - 31) if mode == "fast" else -s[o]
    clamp = bool(const.any()) or not (np.all(l == dmin) and np.all(h == dmax))
    return ArmRequant(rq.astype(np.int32), mode, clamp)


def _intrin(dtype: str, name: str, *args):
    return T.call_llvm_pure_intrin(dtype, name, *args)


def _half(v, hi: bool):
    return tvm.tirx.Shuffle([v], [2, 3] if hi else [0, 1])


def _scaled(acc, m, nsh, mode: str):
    """The int32x4 rounding-shifted product of ``acc`` by the multipliers ``m`` (int32x4)
    with shifts ``nsh`` (= −shift', int32x4), saturated to int32."""
    if mode == "fast":
        h = _intrin("int32x4", "llvm.aarch64.neon.sqdmulh.v4i32", acc, m)
        return _intrin("int32x4", "llvm.aarch64.neon.srshl.v4i32", h, nsh)
    halves = []
    for hi in (False, True):
        p = _intrin("int64x2", "llvm.aarch64.neon.smull.v2i64", _half(acc, hi), _half(m, hi))
        r = _intrin("int64x2", "llvm.aarch64.neon.srshl.v2i64", p, tvm.tirx.Cast("int64x2", _half(nsh, hi)))
        halves.append(_intrin("int32x2", "llvm.aarch64.neon.sqxtn.v2i32", r))
    return concat_vectors(halves)


def _requant_vectors(accs: list, m, nsh, lo, hi, mode: str, out_zp: int, odt: str, clamp: bool):
    """The ``odt`` vector (4·len(accs) lanes) of requantized int32x4 accumulators; ``m`` and
    ``nsh`` are int32x4 (a broadcast scalar or 4 channels' values), ``lo``/``hi`` the
    clamp bounds as ``odt`` vectors of the result's lanes (or None without ``clamp``)."""
    vals = [_scaled(a, m, nsh, mode) for a in accs]
    n = len(vals)
    while len(vals) % 2:
        vals.append(vals[-1])
    zp16 = tvm.tirx.Broadcast(tvm.tirx.const(out_zp, "int16"), 8)
    bytes8 = []
    for i in range(0, len(vals), 2):
        w16 = concat_vectors([_intrin("int16x4", "llvm.aarch64.neon.sqxtn.v4i16", vals[i]),
                    _intrin("int16x4", "llvm.aarch64.neon.sqxtn.v4i16", vals[i + 1])])
        if out_zp:
            w16 = _intrin("int16x8", "llvm.aarch64.neon.sqadd.v8i16", w16, zp16)
        narrow = "llvm.aarch64.neon.sqxtun.v8i8" if odt == "uint8" else "llvm.aarch64.neon.sqxtn.v8i8"
        bytes8.append(_intrin(f"{odt}x8", narrow, w16))
    v = concat_vectors(bytes8)
    if v.ty.dtype.lanes != 4 * n:
        v = tvm.tirx.Shuffle([v], list(range(4 * n)))
    if clamp:
        v = tvm.tirx.max(tvm.tirx.min(v, hi), lo)
    return v


def _i8(v):
    return T.reinterpret("int8x16", v)


def _lane(wvec_i32x4, i: int):
    """The int8x16 broadcast of quad ``i`` of a 4-quad vector (sdot's indexed operand)."""
    return T.reinterpret("int8x16", tvm.tirx.Shuffle([wvec_i32x4], [i, i, i, i]))


def _signed(v, x_dtype: str):
    """An int8 vector of loaded activations: uint8 flipped by x − 128 (xor 0x80)."""
    lanes = v.ty.dtype.lanes
    if x_dtype == "uint8":
        return T.reinterpret(f"int8x{lanes}", v ^ tvm.tirx.Broadcast(tvm.tirx.const(128, "uint8"), lanes))
    return v


def _signed1(v, x_dtype: str):
    if x_dtype == "uint8":
        return T.reinterpret("int8", v ^ T.uint8(128))
    return v


def interleave(rows: int, lanes: range = range(16)) -> list[int]:
    """Shuffle indices that interleave ``rows`` 16-byte vectors: byte l of rows 0..rows−1,
    then byte l + 1, ... for l in ``lanes`` (``st4`` for 4 rows and all 16 lanes)."""
    return [16 * r + l for l in lanes for r in range(rows)]


# ----------------------------------------------------------------- conv2d as a GEMM


def _gemm_conv(n: int, c: int, h: int, wd: int, x_dtype: str, w_shape, stride, padding, dilation, groups: int,
               zp8: int, rq: ArmRequant, out_zp: int, odt: str, name: str, mo: int = 4, nv: int = 4,
               mm: bool = False):
    o, cg, kh, kw = w_shape
    g = groups
    og = o // g
    (sh, sw), (pt, pbm, pl, pr), (dh, dw) = stride, padding, dilation
    ho = (h + pt + pbm - dh * (kh - 1) - 1) // sh + 1
    wo = (wd + pl + pr - dw * (kw - 1) - 1) // sw + 1
    P, K = ho * wo, cg * kh * kw
    QB = 8 if mm else 4  # reduction indices per packed pixel group: smmla takes 8, sdot 4
    K4 = _cdiv(K, QB)  # packed rows of the chunk
    KQ = K4 if mm else _cdiv(K4, 4)  # steps of the register tile: one k-octet (smmla), four k-quads (sdot)
    K4P = K4 if mm else KQ * 4
    # one 64-byte store per 16 pixels for 4 rows (st4), two for 8 rows (LLVM miscompiles
    # a 128-byte shuffle store for aarch64: the library crashes)
    PARTS = QB // 4
    INTERLEAVES = [interleave(QB, range(16 // PARTS * i, 16 // PARTS * (i + 1))) for i in range(PARTS)]
    MO, NV = mo, nv
    TW = 4 * NV
    OB = _cdiv(og, MO)
    OPG = OB * MO
    pointwise = kh == 1 and kw == 1 and sh == 1 and sw == 1 and pt == pbm == pl == pr == 0
    PB = max(TW, (PACK_BYTES // (QB * K4P)) // TW * TW)
    PB = min(PB, _cdiv(P, TW) * TW)
    NCH = _cdiv(P, PB)
    WM = MO // 2 if mm else MO  # 16-byte weight vectors per tile step
    NT = PB // TW
    RL = P - (NCH - 1) * PB
    NVL = _cdiv(RL, 4)
    NTL, NPR = NVL // NV, NVL % NV
    XPW = PB + 16  # im2col writes up to 15 pixels past a chunk
    XQ_SHAPE, XQ_DTYPE = ((K4P * XPW * QB,), "int8") if mm else ((K4P, XPW), "int32")
    HP, WP = h + pt + pbm, wd + pl + pr
    KS = kh * kw
    SLACK = 32 * max(sw, 1) + 64
    mode, clamp = rq.mode, rq.clamp

    def row16(xb, nn, cc, yy, xx0):
        """16 int8 of the padded copy: x[n, c, yy, xx0 + l·sw], l = 0..15."""
        base = ((nn * c + cc) * HP + yy) * WP + xx0
        if sw == 1:
            return xb[T.ramp(base, 1, 16)]
        if sw == 2:
            return tvm.tirx.Shuffle([xb[T.ramp(base, 1, 32)]], list(range(0, 32, 2)))
        return xb[T.ramp(base, sw, 16)]

    @T.macro
    def requant_store(nv, vectors, row, ch, pp, rqb, out, nn):
        # the nv int32x4 accumulator ``vectors`` of output channel ch (requantize row ``row``),
        # requantized and stored at pixels [pp, pp + 4·nv), those below P
        res = T.meta_var(_requant_vectors(
            vectors, T.broadcast(rqb[row, 1], 4), T.broadcast(rqb[row, 2], 4),
            T.broadcast(T.Cast(odt, rqb[row, 4]), nv * 4), T.broadcast(T.Cast(odt, rqb[row, 5]), nv * 4), mode, out_zp,
            odt, clamp))
        if pp + nv * 4 <= P:
            out[nn, ch, T.ramp(pp, 1, nv * 4)] = res
        else:
            tmp = T.alloc_buffer((nv * 4,), odt, scope="global")
            tmp[T.ramp(0, 1, nv * 4)] = res
            for l in range(nv * 4):
                if pp + l < P:
                    out[nn, ch, pp + l] = tmp[l]

    @T.macro
    def store_rows_mm(nv, tp, ob, acc, m2, hf, rqb, out, nn, gg, p0):
        # channel 2·m2 + hf: lanes (2hf, 2hf + 1) of each pixel pair's 2×2 accumulator, plus its bias
        if ob * MO + m2 * 2 + hf < og:
            requant_store(nv, [tvm.tirx.Shuffle([acc[T.ramp((m2 * 2 * nv + 2 * v) * 4, 1, 4)],
                                                 acc[T.ramp((m2 * 2 * nv + 2 * v + 1) * 4, 1, 4)]],
                                                [2 * hf, 2 * hf + 1, 4 + 2 * hf, 5 + 2 * hf])
                               + T.broadcast(rqb[gg * OPG + ob * MO + m2 * 2 + hf, 0], 4) for v in range(nv)],
                          gg * OPG + ob * MO + m2 * 2 + hf, gg * og + ob * MO + m2 * 2 + hf, p0 + tp, rqb, out, nn)

    @T.macro
    def tile_mm(nv, tp, ob, xq, xq8, wp, rqb, out, nn, gg, p0):
        # acc[m2, q]: channels 2·m2, 2·m2 + 1 × pixels 2q, 2q + 1, as smmla's 2×2 [o0p0 o0p1 o1p0 o1p1]
        acc = T.alloc_buffer((MO * nv * 4,), "int32", scope="global")
        for a in T.unroll(MO * nv):
            acc[T.ramp(a * 4, 1, 4)] = T.broadcast(T.int32(0), 4)
        for kq in range(KQ):
            for m2 in T.unroll(MO // 2):
                for q in T.unroll(2 * nv):
                    acc[T.ramp((m2 * 2 * nv + q) * 4, 1, 4)] = T.call_llvm_pure_intrin(
                        "int32x4", SMMLA, acc[T.ramp((m2 * 2 * nv + q) * 4, 1, 4)],
                        _i8(wp[gg, ob, kq, m2, T.ramp(0, 1, 4)]), xq8[T.ramp((kq * XPW + tp + q * 2) * 8, 1, 16)])
        for m2 in T.unroll(MO // 2):
            store_rows_mm(nv, tp, ob, acc, m2, 0, rqb, out, nn, gg, p0)
            store_rows_mm(nv, tp, ob, acc, m2, 1, rqb, out, nn, gg, p0)

    @T.macro
    def tile_dot(nv, tp, ob, xq, xq8, wp, rqb, out, nn, gg, p0):
        acc = T.alloc_buffer((MO * nv * 4,), "int32", scope="global")
        for m in T.unroll(MO):
            for v in T.unroll(nv):
                acc[T.ramp((m * nv + v) * 4, 1, 4)] = T.broadcast(rqb[gg * OPG + ob * MO + m, 0], 4)
        for kq in range(KQ):
            for i in T.unroll(4):
                for m in T.unroll(MO):
                    for v in T.unroll(nv):
                        acc[T.ramp((m * nv + v) * 4, 1, 4)] = T.call_llvm_pure_intrin(
                            "int32x4", SDOT, acc[T.ramp((m * nv + v) * 4, 1, 4)],
                            _i8(xq[kq * 4 + i, T.ramp(tp + v * 4, 1, 4)]), _lane(wp[gg, ob, kq, m, T.ramp(0, 1, 4)], i))
        for m in T.unroll(MO):
            if ob * MO + m < og:
                requant_store(nv, [acc[T.ramp((m * nv + v) * 4, 1, 4)] for v in range(nv)], gg * OPG + ob * MO + m,
                              gg * og + ob * MO + m, p0 + tp, rqb, out, nn)

    tile = tile_mm if mm else tile_dot

    @T.macro
    def pack_pointwise(x, xq8, nn, gg, k4, p0, v, part):
        xq8[T.ramp((k4 * XPW + v * 16) * QB + part * 64, 1, 64)] = tvm.tirx.Shuffle(
            [_signed(x[nn, gg * cg + T.min(k4 * QB + r, cg - 1), T.ramp(p0 + v * 16, 1, 16)], x_dtype)
             for r in range(QB)], INTERLEAVES[part])

    @T.macro
    def pack_im2col(xpad, xq8, nn, gg, k4, p0, y, xx, part):
        xq8[T.ramp((k4 * XPW + y * wo + xx - p0) * QB + part * 64, 1, 64)] = tvm.tirx.Shuffle(
            [row16(xpad, nn, gg * cg + T.min(k4 * QB + r, K - 1) // KS, y * sh + T.min(k4 * QB + r, K - 1) % KS // kw * dh,
                   xx * sw + T.min(k4 * QB + r, K - 1) % kw * dw) for r in range(QB)], INTERLEAVES[part])

    @T.prim_func
    def conv(x4: T.Buffer((n, c, h, wd), x_dtype), wp: T.Buffer((g, OB, KQ, WM, 4), "int32"),
             rqb: T.Buffer((g * OPG, 8), "int32"), out4: T.Buffer((n, o, ho, wo), odt)):
        T.func_attr({"global_symbol": name, "tir.noalias": True})
        x = T.decl_buffer((n, c, h * wd), x_dtype, data=x4.data)
        out = T.decl_buffer((n, o, P), odt, data=out4.data)
        xpad = T.alloc_buffer((n * c * HP * WP + SLACK if not pointwise else 1,), "int8", scope="local")
        if not pointwise:
            # int8 copy of x padded with the (int8) zero point, and slack for stride-2 loads
            for nc_ in range(n * c):
                for yy in range(HP):
                    if yy < pt or yy >= pt + h:
                        for xx in range(WP):
                            xpad[(nc_ * HP + yy) * WP + xx] = T.int8(zp8)
                    else:
                        for xx in range(pl):
                            xpad[(nc_ * HP + yy) * WP + xx] = T.int8(zp8)
                        for xx in range(pr):
                            xpad[(nc_ * HP + yy) * WP + pl + wd + xx] = T.int8(zp8)
                        for v in range(wd // 16):
                            xpad[T.ramp((nc_ * HP + yy) * WP + pl + v * 16, 1, 16)] = _signed(
                                x[nc_ // c, nc_ % c, T.ramp((yy - pt) * wd + v * 16, 1, 16)], x_dtype)
                        for l in range(wd % 16):
                            xpad[(nc_ * HP + yy) * WP + pl + wd // 16 * 16 + l] = _signed1(
                                x[nc_ // c, nc_ % c, (yy - pt) * wd + wd // 16 * 16 + l], x_dtype)
            for sl in range(SLACK):
                xpad[n * c * HP * WP + sl] = T.int8(zp8)
        # the packed chunk; smmla's is allocated as bytes (allocated as int32 and only read as
        # bytes, it got a stack slot too small for it from LLVM: the library crashed)
        xqa = T.alloc_buffer(XQ_SHAPE, XQ_DTYPE, scope=_scope(K4P * XPW * QB))
        xq = T.decl_buffer((K4P, XPW * QB // 4), "int32", data=xqa.data)
        xq8 = T.decl_buffer((K4P * XPW * QB,), "int8", data=xqa.data)
        for task in range(n * g * NCH):
            nn = T.meta_var(task // (g * NCH))
            gg = T.meta_var(task // NCH % g)
            ch = T.meta_var(task % NCH)
            p0 = T.meta_var(ch * PB)
            # ---- pack the chunk: xq[k4, p] = x[QB·k4 .. QB·k4 + QB − 1, p] (rows past K repeat the last: zero weights)
            if pointwise:
                for k4 in range(K4):
                    for v in range((PB + 15) // 16):
                        if p0 + v * 16 + 16 <= P:
                            pack_pointwise(x, xq8, nn, gg, k4, p0, v, 0)
                            if PARTS == 2:
                                pack_pointwise(x, xq8, nn, gg, k4, p0, v, 1)
                        else:
                            for l in range(16):
                                if p0 + v * 16 + l < P:
                                    for r in T.unroll(QB):
                                        xq8[(k4 * XPW + v * 16 + l) * QB + r] = _signed1(
                                            x[nn, gg * cg + T.min(k4 * QB + r, cg - 1), p0 + v * 16 + l], x_dtype)
            else:
                for k4 in range(K4):
                    for y in range(p0 // wo, T.min((p0 + PB + wo - 1) // wo, ho)):
                        xs = T.meta_var(T.max(p0 - y * wo, 0))
                        xe = T.meta_var(T.min(p0 + PB - y * wo, wo))
                        for xv in range((xe - xs + 15) // 16):
                            xx = T.meta_var(xs + xv * 16)
                            pack_im2col(xpad, xq8, nn, gg, k4, p0, y, xx, 0)
                            if PARTS == 2:
                                pack_im2col(xpad, xq8, nn, gg, k4, p0, y, xx, 1)
            # ---- register tiles
            for ob in range(OB):
                if NCH == 1:
                    for t in range(NTL):
                        tile(NV, t * TW, ob, xq, xq8, wp, rqb, out, nn, gg, p0)
                else:
                    if ch < NCH - 1:
                        for t in range(NT):
                            tile(NV, t * TW, ob, xq, xq8, wp, rqb, out, nn, gg, p0)
                    else:
                        for t in range(NTL):
                            tile(NV, t * TW, ob, xq, xq8, wp, rqb, out, nn, gg, p0)
                if NPR > 0:
                    if ch == NCH - 1:
                        tile(NPR, NTL * TW, ob, xq, xq8, wp, rqb, out, nn, gg, p0)

    info = dict(kind="pointwise" if pointwise else "im2col", instruction="smmla" if mm else "sdot", mo=MO, nv=NV, pb=PB, chunks=NCH, epilogue=mode, clamp=clamp,
                macs=n * o * P * K)
    return conv, info


def _pack_gemm_weights(w2: np.ndarray, groups: int, mo: int, mm: bool = False) -> np.ndarray:
    """[O, K] int8 → int32 [G, OB, KQ, mo, 4]: per output channel, 16-byte vectors of 4
    quads of consecutive reduction indices (zero past K and past the group's channels).
    ``mm`` (smmla): int32 [G, OB, ⌈K/8⌉, mo/2, 4]: per pair of output channels and
    k-octet, 16 bytes = the pair's two rows of 8 (smmla's 2×8 operand)."""
    o, k = w2.shape
    if mm:
        og = o // groups
        ob = _cdiv(og, mo)
        k8 = _cdiv(k, 8)
        wb = np.zeros((groups, ob * mo, k8 * 8), np.int8)
        wb[:, :og, :k] = w2.reshape(groups, og, k)
        wb = wb.reshape(groups, ob, mo // 2, 2, k8, 8).transpose(0, 1, 4, 2, 3, 5)
        return np.ascontiguousarray(wb).reshape(groups, ob, k8, mo // 2, 16).view(np.int32)
    og = o // groups
    ob = _cdiv(og, mo)
    kq = _cdiv(_cdiv(k, 4), 4)
    wb = np.zeros((groups, ob * mo, kq * 16), np.int8)
    wb[:, :og, :k] = w2.reshape(groups, og, k)
    wb = wb.reshape(groups, ob, mo, kq, 16).transpose(0, 1, 3, 2, 4)
    return np.ascontiguousarray(wb).view(np.int32)


# ----------------------------------------------------------------- depthwise conv2d


def _depthwise_plan(kw: int, sw: int, dw: int) -> tuple[int, int]:
    """(tap groups per kernel row, output vectors per 32-byte window): the window must hold
    every tap of 4·V outputs: (4V − 1)·sw + (4·NQ − 1)·dw < 32."""
    nq = _cdiv(kw, 4)
    for v in (4, 3, 2, 1):
        if (4 * v - 1) * sw + (4 * nq - 1) * dw < 32:
            return nq, v
    raise ExactnessError(f"depthwise stride {sw} / dilation {dw} with {kw} taps: no sdot window covers it")


def _depthwise(n: int, c: int, h: int, wd: int, x_dtype: str, w_shape, stride, padding, dilation, zp8: int,
               rq: ArmRequant, out_zp: int, odt: str, name: str):
    o, _, kh, kw = w_shape
    og = o // c
    (sh, sw), (pt, pbm, pl, pr), (dh, dw) = stride, padding, dilation
    ho = (h + pt + pbm - dh * (kh - 1) - 1) // sh + 1
    wo = (wd + pl + pr - dw * (kw - 1) - 1) // sw + 1
    HP, WP = h + pt + pbm, wd + pl + pr
    NQ, V = _depthwise_plan(kw, sw, dw)
    NW = _cdiv(kh * NQ, 4)  # weight vectors (4 tap groups each)
    NXB = _cdiv(wo, 4 * V)
    PLANE = HP * WP + 64
    mode, clamp = rq.mode, rq.clamp
    # tbl indices: lane l of vector v, tap j of group q -> window byte (4v + l)·sw + (4q + j)·dw

    def taps(row, base, v, q):
        """The 4 taps of group q for each of the 4 outputs of vector v, gathered by ``tbl``
        from the 32-byte window at row[base] (v, q: unrolled loops, constants once
        unrolled): window byte (4v + l)·sw + (4q + j)·dw for output l, tap j."""
        pos = [(4 * v + l) * sw + (4 * q + j) * dw for l in range(4) for j in range(4)]
        index = tvm.tirx.Shuffle([tvm.tirx.Ramp(tvm.tirx.const(0, "int8"), tvm.tirx.const(1, "int8"), 32)], pos)
        return T.call_llvm_pure_intrin("int8x16", "llvm.aarch64.neon.tbl2.v16i8", row[T.ramp(base, 1, 16)],
                                       row[T.ramp(base + 16, 1, 16)], index)

    @T.prim_func
    def dwconv(x: T.Buffer((n, c, h, wd), x_dtype), wv: T.Buffer((o, NW, 4), "int32"), rqb: T.Buffer((o, 8), "int32"),
               out: T.Buffer((n, o, ho, wo), odt)):
        T.func_attr({"global_symbol": name, "tir.noalias": True})
        xf = T.decl_buffer((n * c * h * wd,), x_dtype, data=x.data)
        src = T.alloc_buffer((PLANE,), "int8", scope=_scope(PLANE))
        for task in range(n * o):
            nn = T.meta_var(task // o)
            oo = T.meta_var(task % o)
            base = T.meta_var((nn * c + oo // og) * (h * wd))
            # the input plane as int8, padded with the zero point (the slack is never read by a kept output)
            for yy in range(HP):
                if yy < pt or yy >= pt + h:
                    for xx in range(WP):
                        src[yy * WP + xx] = T.int8(zp8)
                else:
                    for xx in range(pl):
                        src[yy * WP + xx] = T.int8(zp8)
                    for xx in range(pr):
                        src[yy * WP + pl + wd + xx] = T.int8(zp8)
                    for v in range(wd // 16):
                        src[T.ramp(yy * WP + pl + v * 16, 1, 16)] = _signed(
                            xf[T.ramp(base + (yy - pt) * wd + v * 16, 1, 16)], x_dtype)
                    for l in range(wd % 16):
                        src[yy * WP + pl + wd // 16 * 16 + l] = _signed1(xf[base + (yy - pt) * wd + wd // 16 * 16 + l],
                                                                         x_dtype)
            cst = T.alloc_buffer((8,), "int32", scope="global")  # the plane's requantize row, in registers
            for j in range(8):
                cst[j] = rqb[oo, j]
            m4 = T.meta_var(T.broadcast(cst[1], 4))
            s4 = T.meta_var(T.broadcast(cst[2], 4))
            lo = T.meta_var(T.broadcast(T.Cast(odt, cst[4]), 4 * V))
            hi = T.meta_var(T.broadcast(T.Cast(odt, cst[5]), 4 * V))
            for y in range(ho):
                for xb in range(NXB):
                    acc = T.alloc_buffer((4 * V,), "int32", scope="global")
                    for v in T.unroll(V):
                        acc[T.ramp(v * 4, 1, 4)] = T.broadcast(cst[0], 4)
                    for i in T.unroll(kh):
                        for q in T.unroll(NQ):
                            for v in T.unroll(V):
                                acc[T.ramp(v * 4, 1, 4)] = T.call_llvm_pure_intrin(
                                    "int32x4", SDOT, acc[T.ramp(v * 4, 1, 4)],
                                    taps(src, (y * sh + i * dh) * WP + xb * 4 * V * sw, v, q),
                                    _lane(wv[oo, (i * NQ + q) // 4, T.ramp(0, 1, 4)], (i * NQ + q) % 4))
                    res = T.meta_var(_requant_vectors([acc[T.ramp(v * 4, 1, 4)] for v in range(V)], m4, s4, lo, hi, mode,
                                                      out_zp, odt, clamp))
                    if xb * 4 * V + 4 * V <= wo:
                        out[nn, oo, y, T.ramp(xb * 4 * V, 1, 4 * V)] = res
                    else:
                        tmp = T.alloc_buffer((4 * V,), odt, scope="global")
                        tmp[T.ramp(0, 1, 4 * V)] = res
                        for l in range(4 * V):
                            if xb * 4 * V + l < wo:
                                out[nn, oo, y, xb * 4 * V + l] = tmp[l]

    info = dict(kind="depthwise", tap_groups=NQ, vectors=V, epilogue=mode, clamp=clamp, macs=n * o * ho * wo * kh * kw)
    return dwconv, info


def _pack_depthwise_weights(w: np.ndarray) -> np.ndarray:
    """[O, 1, kh, kw] int8 → int32 [O, NW, 4]: the taps of kernel row i in groups of 4
    (zero past kw), group (i, q) at quad i·NQ + q."""
    o, _, kh, kw = w.shape
    nq = _cdiv(kw, 4)
    nw = _cdiv(kh * nq, 4)
    wb = np.zeros((o, nw * 4, 4), np.int8)
    for i in range(kh):
        for q in range(nq):
            taps = w[:, 0, i, 4 * q:4 * q + 4]
            wb[:, i * nq + q, :taps.shape[1]] = taps
    return np.ascontiguousarray(wb.reshape(o, nw * 16)).view(np.int32).reshape(o, nw, 4)


# ----------------------------------------------------------------- linear (dense)


def _dense(m: int, k: int, o: int, x_dtype: str, rq: ArmRequant, out_zp: int, odt: str, name: str, x_shape: tuple,
           vo: int = 4, mr: int = 0):
    """out[m, o] = requantize(Σ_k x[m, k]·w[o, k] + bias'[o]), output channels in lanes."""
    KQ = _cdiv(_cdiv(k, 4), 4)
    KP = KQ * 16
    VO = vo
    OT = _cdiv(o, 4 * VO)
    OP = OT * 4 * VO
    MR = mr or min(m, 4)
    NMB = _cdiv(m, MR)
    mode, clamp = rq.mode, rq.clamp
    os_ = tuple(x_shape[:-1]) + (o,)

    @T.prim_func
    def dense(xnd: T.Buffer(x_shape, x_dtype), wq: T.Buffer((OT, KQ * 4, VO * 4), "int32"),
              rqt: T.Buffer((8, OP), "int32"), outnd: T.Buffer(os_, odt)):
        T.func_attr({"global_symbol": name, "tir.noalias": True})
        x = T.decl_buffer((m, k), x_dtype, data=xnd.data)
        out = T.decl_buffer((m, o), odt, data=outnd.data)
        xp = T.alloc_buffer((NMB * MR, KP), "int8", scope=_scope(NMB * MR * KP))
        xp32 = T.decl_buffer((NMB * MR, KP // 4), "int32", data=xp.data)
        for r in range(NMB * MR):
            for kk in range(KP):
                xp[r, kk] = T.if_then_else(r < m and kk < k, _signed1(x[T.min(r, m - 1), T.min(kk, k - 1)], x_dtype),
                                           T.int8(0))
        for task in range(OT * NMB):
            ot = T.meta_var(task // NMB)
            mb = T.meta_var(task % NMB)
            acc = T.alloc_buffer((MR * VO * 4,), "int32", scope="global")
            for r in T.unroll(MR):
                for v in T.unroll(VO):
                    acc[T.ramp((r * VO + v) * 4, 1, 4)] = rqt[0, T.ramp((ot * VO + v) * 4, 1, 4)]
            for kq in range(KQ):
                for i in T.unroll(4):
                    for r in T.unroll(MR):
                        for v in T.unroll(VO):
                            acc[T.ramp((r * VO + v) * 4, 1, 4)] = T.call_llvm_pure_intrin(
                                "int32x4", SDOT, acc[T.ramp((r * VO + v) * 4, 1, 4)],
                                _i8(wq[ot, kq * 4 + i, T.ramp(v * 4, 1, 4)]),
                                _lane(xp32[mb * MR + r, T.ramp(kq * 4, 1, 4)], i))
            for r in T.unroll(MR):
                if mb * MR + r < m:
                    for v in T.unroll(VO):
                        o0 = T.meta_var((ot * VO + v) * 4)
                        res = T.meta_var(_requant_vectors(
                            [acc[T.ramp((r * VO + v) * 4, 1, 4)]], rqt[1, T.ramp(o0, 1, 4)], rqt[2, T.ramp(o0, 1, 4)],
                            T.Cast(f"{odt}x4", rqt[4, T.ramp(o0, 1, 4)]), T.Cast(f"{odt}x4", rqt[5, T.ramp(o0, 1, 4)]),
                            mode, out_zp, odt, clamp))
                        if o0 + 4 <= o:
                            out[mb * MR + r, T.ramp(o0, 1, 4)] = res
                        else:
                            if o0 < o:
                                tmp = T.alloc_buffer((4,), odt, scope="global")
                                tmp[T.ramp(0, 1, 4)] = res
                                for l in range(4):
                                    if o0 + l < o:
                                        out[mb * MR + r, o0 + l] = tmp[l]

    info = dict(kind="dense", vo=VO, mr=MR, epilogue=mode, clamp=clamp, macs=m * o * k)
    return dense, info


# ----------------------------------------------------------------- public API


def _activation_zero_point(x_dtype: str, x_zp: int) -> int:
    """The zero point of the int8 activations the kernels multiply (uint8 is flipped by −128)."""
    return int(x_zp) - 128 if x_dtype == "uint8" else int(x_zp)


def _check_dtypes(x_dtype: str, out_dtype: str) -> None:
    if x_dtype not in ("uint8", "int8") or out_dtype not in ("uint8", "int8"):
        raise ExactnessError(f"x dtype {x_dtype} / out dtype {out_dtype}: only uint8/int8 are supported")


def _int8_weights(w) -> np.ndarray:
    w = np.asarray(w)
    if w.dtype != np.int8 and (w.min(initial=0) < -128 or w.max(initial=0) > 127):
        raise ExactnessError("weights must be int8")
    return w.astype(np.int8)


def conv2d_requant_primfunc(x_shape: Sequence[int], x_dtype: str, w: np.ndarray, bias, x_zp: int, stride=(1, 1),
                            padding=(0, 0), dilation=(1, 1), groups: int = 1, mult=None, shift=None, out_zp: int = 0,
                            lo=0, hi=255, out_dtype: str = "uint8", target: Optional[tvm.target.Target] = None,
                            name: str = "conv2d_requant", mo: Optional[int] = None, nv: Optional[int] = None,
                            threads: Optional[int] = None, instruction: str = "sdot"):
    """A fused conv2d + requantize PrimFunc for aarch64 + dotprod, exact
    (``kernels.conv2d``), and its constants; arguments as ``x86_int8``'s (``padding`` may be
    (top, bottom, left, right)). ``mo`` × ``nv``: the GEMM's register tile (output channels ×
    vectors of 4 pixels; default 4 × 4 for sdot, 8 × 2 for smmla). ``instruction``: "sdot", or
    "smmla" (Armv8.6 i8mm: the GEMM kernels multiply 2×8 by 8×2 blocks; the target needs
    +i8mm; depthwise stays on sdot). ``threads`` is accepted for the common API; the kernels
    run on one thread. Returns ``(func, consts)``: ``func(x, *consts, out)``; consts are the packed
    weights (GEMM: int32 [G, O/G/mo, ⌈K/16⌉, mo, 4]; depthwise: int32 [O, ⌈kh·⌈kw/4⌉/4⌉, 4])
    and the requantize rows int32 [rows, 8] (``requant_rows``)."""
    if instruction not in GEMM_TILES:
        raise ValueError(f"instruction={instruction!r}: use one of {', '.join(GEMM_TILES)}")
    check_target(target, instruction)
    mm = instruction == "smmla"
    mo, nv = mo or GEMM_TILES[instruction][0], nv or GEMM_TILES[instruction][1]
    if mm and mo % 2:
        raise ValueError(f"smmla tiles take output channels in pairs: mo={mo}")
    if mult is None or shift is None:
        raise ValueError("mult and shift (the requantize multiplier) are required")
    x_dtype, out_dtype = str(x_dtype), str(out_dtype)
    _check_dtypes(x_dtype, out_dtype)
    n, c, h, wd = (int(s) for s in x_shape)
    w = _int8_weights(w)
    o, cg, kh, kw = w.shape
    groups = int(groups)
    if c != cg * groups or o % groups:
        raise ValueError(f"conv2d shapes: x {tuple(x_shape)}, w {w.shape}, groups {groups}")
    stride, dilation = (tuple(int(v) for v in a) for a in (stride, dilation))
    padding = _pad4(padding)
    zp8 = _activation_zero_point(x_dtype, x_zp)
    ch = _prepare_channels(w.reshape(o, -1), bias, "int8", zp8, mult, shift, int(out_zp), lo, hi)
    w2 = ch.w2
    (sh, sw), (pt, pbm, pl, pr), (dh, dw) = stride, padding, dilation
    if (h + pt + pbm - dh * (kh - 1) - 1) // sh + 1 <= 0 or (wd + pl + pr - dw * (kw - 1) - 1) // sw + 1 <= 0:
        raise ValueError("empty conv2d output")
    if cg == 1 and groups == c:
        rq = requant_rows(ch.bias, mult, shift, ch.lo, ch.hi, ch.const, o, out_dtype)
        func, info = _depthwise(n, c, h, wd, x_dtype, w.shape, stride, padding, dilation, zp8, rq, int(out_zp),
                                out_dtype, name)
        return func.with_attr("qcompiler.kernel", info), [_pack_depthwise_weights(w2.reshape(w.shape)), rq.rq]
    og = o // groups
    ob = _cdiv(og, mo)
    rows = np.array([gg * og + r if r < og else -1 for gg in range(groups) for r in range(ob * mo)])
    rq = requant_rows(ch.bias, mult, shift, ch.lo, ch.hi, ch.const, o, out_dtype, rows=rows)
    func, info = _gemm_conv(n, c, h, wd, x_dtype, w.shape, stride, padding, dilation, groups, zp8, rq, int(out_zp),
                            out_dtype, name, mo=mo, nv=nv, mm=mm)
    return func.with_attr("qcompiler.kernel", info), [_pack_gemm_weights(w2, groups, mo, mm), rq.rq]


def linear_requant_primfunc(x_shape: Sequence[int], x_dtype: str, w: np.ndarray, bias, x_zp: int, mult, shift,
                            out_zp: int = 0, lo=0, hi=255, out_dtype: str = "uint8",
                            target: Optional[tvm.target.Target] = None, name: str = "linear_requant", vo: int = 4,
                            threads: Optional[int] = None):
    """A fused linear + requantize PrimFunc (x [..., K] · w[O, K]ᵀ + bias, requantized per
    output channel) for aarch64 + dotprod, and its constants: weights int32
    [⌈O/4vo⌉, 4⌈K/16⌉, 4·vo] (per quad of k, 4·vo outputs, each int32 the 4 bytes) and the
    requantize columns int32 [8, O padded] (``requant_rows`` transposed)."""
    check_target(target)
    x_dtype, out_dtype = str(x_dtype), str(out_dtype)
    _check_dtypes(x_dtype, out_dtype)
    x_shape = tuple(int(v) for v in x_shape)
    w = _int8_weights(w)
    o, k = w.shape
    if x_shape[-1] != k:
        raise ValueError(f"linear shapes: x {x_shape}, w {w.shape}")
    m = int(np.prod(x_shape[:-1], dtype=np.int64))
    zp8 = _activation_zero_point(x_dtype, x_zp)
    ch = _prepare_channels(w, bias, "int8", zp8, mult, shift, int(out_zp), lo, hi)
    rq = requant_rows(ch.bias, mult, shift, ch.lo, ch.hi, ch.const, o, out_dtype)
    kq = _cdiv(_cdiv(k, 4), 4)
    ot = _cdiv(o, 4 * vo)
    wb = np.zeros((ot * vo * 4, kq * 16), np.int8)
    wb[:o, :k] = ch.w2
    # [OT][K4][4·vo outputs][4 taps]
    wq = np.ascontiguousarray(wb.reshape(ot, vo * 4, kq * 4, 4).transpose(0, 2, 1, 3)).view(np.int32)[..., 0]
    rqt = np.zeros((8, ot * vo * 4), np.int32)
    rqt[:, :o] = rq.rq.T
    rqt[5, o:] = _drange(out_dtype)[1]
    rqt[4, o:] = _drange(out_dtype)[0]
    func, info = _dense(m, k, o, x_dtype, rq, int(out_zp), out_dtype, name, x_shape, vo=vo)
    return func.with_attr("qcompiler.kernel", info), [wq, rqt]
