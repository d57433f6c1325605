"""Linear (dense) + requantize, one loop nest for every ISA: the "dense" kernel of
``kernels/x86.py`` and ``kernels/arm.py``.

out[m, o] = requantize(Σ_k x[m, k]·w[o, k] + bias'[o]) with output channels in the vector
lanes. An ISA supplies a ``DenseIsa``: how many output channels one int32 accumulator
vector holds (``lanes``), how many reduction indices a lane takes from one weight row
(``group``: 2 for x86 ``vpmaddwd``'s int16 pairs, 4 for arm ``sdot``'s quads), how it
packs an activation element, its multiply-accumulate step (a registered intrinsic of
``targets/intrinsics``) and its requantize epilogue. The loop nest here does the rest:

- activations x [..., K] (M rows) are packed once into a scratch [M padded to the row
  tile, K padded to a step] of the ISA's element (zero past M and K), read back as int32
  words by the multiply-accumulate step;
- weights int8 [O, K] are packed [⌈O/(lanes·vo)⌉ tiles, K padded / group, lanes·vo,
  group] (zero past O and K) and viewed as ``weight_dtype``;
- a task is (output tile of ``vo`` vectors, block of ``rows`` activation rows): a
  rows × vo tile of int32 vectors that starts from the bias, takes ``steps`` reduction
  steps of ``substeps`` weight rows each, and stores the requantized lanes (the lanes
  past O are dropped: ``vector_store.py``).

Note: TVMScript parses a function from its source file when it is built; editing this
file while a build is running makes that build fail."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import tvm
from tvm.script import tirx as T

from .contract import ceil_div
from .requant import RequantColumn as Col, RequantRows, transposed_columns
from .vector_store import vector_store_macro


@dataclass(frozen=True)
class DenseIsa:
    """What an ISA supplies to the shared dense loop nest.

    ``multiply_accumulate(acc, weights, words, tile, step, substep, vector, row)``: the new
    int32 x ``lanes`` accumulator after weight row ``step·substeps + substep`` of output
    tile ``tile``, vector ``vector`` (the ``weights`` buffer [tiles, weight rows, ...] of
    ``weight_dtype``) times the packed activations of ``row`` (``words``: int32 [rows,
    words]). ``pack_element(x, row, column, m, k, x_dtype)``: element ``column`` of packed
    row ``row`` read from x [M, K] (zero past M and K). ``requantize(acc, column, rq,
    out_zp, out_dtype)``: the ``out_dtype`` x ``lanes`` output of an int32 x ``lanes``
    accumulator, ``column(c)`` giving ``RequantColumn`` c of its channels.
    ``padding_columns(out_dtype)``: the requantize columns of the padding channels
    ({column: value}, never stored)."""

    lanes: int  # output channels (int32 lanes) per accumulator vector
    group: int  # reduction indices per lane per weight row
    substeps: int  # weight rows per reduction step (one activation load)
    rows: int  # default activation rows per task
    weight_dtype: str  # element of the packed weights: int8, or int32 holding 4 int8
    packed_dtype: str  # element of the packed activations
    k_per_element: int  # reduction indices per packed activation element
    parallel: bool  # tasks (and the packing) as a parallel loop
    vectors_outer: bool  # unrolled tile order: vectors outside rows (else rows outside vectors)
    scratch_scope: Callable[[int], str]  # storage of the packed activations, from their bytes
    pack_element: Callable
    multiply_accumulate: Callable
    requantize: Callable
    padding_columns: Callable[[str], dict]

    @property
    def k_per_step(self) -> int:
        return self.group * self.substeps


def pack_dense_weights(isa: DenseIsa, weights: np.ndarray, vo: int) -> np.ndarray:
    """int8 [O, K] → ``isa.weight_dtype`` [⌈O/(lanes·vo)⌉, weight rows, lanes·vo·group
    bytes as weight_dtype]: per output tile and weight row, lanes·vo outputs × ``group``
    reduction indices (zero past O and K)."""
    o, k = weights.shape
    per_tile = isa.lanes * vo
    tiles, weight_rows = ceil_div(o, per_tile), ceil_div(k, isa.k_per_step) * isa.substeps
    padded = np.zeros((tiles * per_tile, weight_rows * isa.group), np.int8)
    padded[:o, :k] = weights
    packed = padded.reshape(tiles, per_tile, weight_rows, isa.group).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(packed).reshape(tiles, weight_rows, per_tile * isa.group).view(isa.weight_dtype)


def dense_columns(isa: DenseIsa, rq: RequantRows, o: int, vo: int, out_dtype: str) -> np.ndarray:
    """The requantize rows transposed: int32 [8, O padded to lanes·vo] (channels in lanes)."""
    return transposed_columns(rq, o, isa.lanes * vo, isa.padding_columns(out_dtype))


def _itemsize(dtype: str) -> int:
    return np.dtype(dtype).itemsize


def dense_kernel(isa: DenseIsa, x_shape: tuple, x_dtype: str, o: int, rq: RequantRows, out_zp: int,
                 out_dtype: str, name: str, vo: int = 4, mr: int = 0) -> tuple[tvm.tirx.PrimFunc, dict]:
    """The PrimFunc ``dense(x, packed_weights, requant_columns, out)`` for x [..., K]
    (``x_dtype``) → out [..., O] (``out_dtype``), and its info; ``vo`` vectors of output
    channels × ``mr`` rows per task (0: the ISA's default, at most M)."""
    k = x_shape[-1]
    m = int(np.prod(x_shape[:-1], dtype=np.int64))
    lanes, substeps = isa.lanes, isa.substeps
    steps, tiles = ceil_div(k, isa.k_per_step), ceil_div(o, lanes * vo)
    rows_per_task = mr or min(m, isa.rows)
    row_blocks = ceil_div(m, rows_per_task)
    packed_rows = row_blocks * rows_per_task
    columns = steps * isa.k_per_step // isa.k_per_element
    words = columns * _itemsize(isa.packed_dtype) // 4
    weight_row = vo * lanes * isa.group // _itemsize(isa.weight_dtype)
    scope = isa.scratch_scope(packed_rows * columns * _itemsize(isa.packed_dtype))
    loop = T.parallel if isa.parallel else T.serial
    out_shape = tuple(x_shape[:-1]) + (o,)
    pack, mac, vectors_outer = isa.pack_element, isa.multiply_accumulate, isa.vectors_outer
    store = vector_store_macro(o, out_dtype)

    def requantized(acc, rqt, o0):
        return isa.requantize(acc, lambda col: rqt[col, T.ramp(o0, 1, lanes)], rq, out_zp, out_dtype)

    @T.macro
    def accumulate(acc, wq, xw, ot, step, sub, r, v, row):
        acc[T.ramp((r * vo + v) * lanes, 1, lanes)] = mac(acc[T.ramp((r * vo + v) * lanes, 1, lanes)], wq, xw, ot,
                                                          step, sub, v, row)

    @T.prim_func
    def dense(xnd: T.Buffer(x_shape, x_dtype), wq: T.Buffer((tiles, steps * substeps, weight_row), isa.weight_dtype),
              rqt: T.Buffer((8, tiles * lanes * vo), "int32"), outnd: T.Buffer(out_shape, out_dtype)):
        T.func_attr({"global_symbol": name, "tir.noalias": True})
        x = T.decl_buffer((m, k), x_dtype, data=xnd.data)
        out = T.decl_buffer((m, o), out_dtype, data=outnd.data)
        xp = T.alloc_buffer((packed_rows, columns), isa.packed_dtype, scope=scope)
        xw = T.decl_buffer((packed_rows, words), "int32", data=xp.data)
        for r in loop(packed_rows):
            for c in range(columns):
                xp[r, c] = pack(x, r, c, m, k, x_dtype)
        for task in loop(tiles * row_blocks):
            ot = T.meta_var(task // row_blocks)
            mb = T.meta_var(task % row_blocks)
            acc = T.alloc_buffer((rows_per_task * vo * lanes,), "int32", scope="global")
            for r in T.unroll(rows_per_task):
                for v in T.unroll(vo):
                    acc[T.ramp((r * vo + v) * lanes, 1, lanes)] = rqt[Col.BIAS, T.ramp((ot * vo + v) * lanes, 1, lanes)]
            for step in range(steps):
                for sub in T.unroll(substeps):
                    if vectors_outer:
                        for v in T.unroll(vo):
                            for r in T.unroll(rows_per_task):
                                accumulate(acc, wq, xw, ot, step, sub, r, v, mb * rows_per_task + r)
                    else:
                        for r in T.unroll(rows_per_task):
                            for v in T.unroll(vo):
                                accumulate(acc, wq, xw, ot, step, sub, r, v, mb * rows_per_task + r)
            for r in T.unroll(rows_per_task):
                if mb * rows_per_task + r < m:
                    for v in T.unroll(vo):
                        o0 = T.meta_var((ot * vo + v) * lanes)
                        store(out, (mb * rows_per_task + r,), o0, lanes,
                              requantized(acc[T.ramp((r * vo + v) * lanes, 1, lanes)], rqt, o0))

    info = dict(kind="dense", vo=vo, mr=rows_per_task, epilogue=rq.mode, fold_zp=rq.fold_zp, clamp=rq.clamp,
                tasks=tiles * row_blocks, macs=m * o * k)
    return dense, info


def dense_primfunc(isa: DenseIsa, x_shape: tuple, x_dtype: str, weights: np.ndarray, rq: RequantRows, out_zp: int,
                   out_dtype: str, name: str, vo: int = 4) -> tuple[tvm.tirx.PrimFunc, dict, list[np.ndarray]]:
    """The dense kernel of ``isa`` for x [..., K] and int8 ``weights`` [O, K] (zero point
    already folded into ``rq``'s bias), with its constants: ``(func, info, [packed weights,
    requantize columns int32 [8, O padded]])``."""
    o = weights.shape[0]
    func, info = dense_kernel(isa, x_shape, x_dtype, o, rq, out_zp, out_dtype, name, vo=vo)
    return func, info, [pack_dense_weights(isa, weights, vo), dense_columns(isa, rq, o, vo, out_dtype)]
