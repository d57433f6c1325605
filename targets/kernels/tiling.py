"""How the GEMM-shaped kernels split their output pixels: chunks of pixels (one parallel
task each, with its packed activations in L1), register tiles within a chunk, and the
dispatch of tiles over a chunk (``chunk_dispatch``, one TVMScript macro for every ISA);
and the x86 vpmaddwd GEMM's tiling plan (``GemmPlan``, ``choose_plan``)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional

from tvm.script import tirx as T

from .contract import ceil_div, scratch_scope

L1_BLOCK = 16384  # bytes of packed activations per reduction block (x86)


@dataclass(frozen=True)
class PixelChunks:
    """``pixels`` output pixels in chunks of ``chunk`` (a multiple of ``tile_vectors``·
    ``vector``), register tiles of ``tile_vectors`` vectors of ``vector`` pixels."""

    pixels: int
    chunk: int
    tile_vectors: int
    vector: int

    @property
    def tile_width(self) -> int:
        return self.tile_vectors * self.vector

    @property
    def count(self) -> int:
        return ceil_div(self.pixels, self.chunk)

    @property
    def full_tiles(self) -> int:
        """Tiles of a chunk that is not the last."""
        return self.chunk // self.tile_width

    @property
    def last_full_tiles(self) -> int:
        return self._last_vectors // self.tile_vectors

    @property
    def last_remainder(self) -> int:
        """Vectors of the last chunk past its full tiles (one narrower tile)."""
        return self._last_vectors % self.tile_vectors

    @property
    def _last_vectors(self) -> int:
        return ceil_div(self.pixels - (self.count - 1) * self.chunk, self.vector)


def chunk_dispatch(chunks: PixelChunks, tile: Callable):
    """A TVMScript macro ``run(chunk_index, *args)`` that calls the macro
    ``tile(vectors, first_pixel, *args)`` over every register tile of chunk
    ``chunk_index`` (a TIR variable): full tiles, then the last chunk's narrower one."""
    n_chunks, full, last_full = chunks.count, chunks.full_tiles, chunks.last_full_tiles
    remainder, width, vectors = chunks.last_remainder, chunks.tile_width, chunks.tile_vectors

    @T.macro
    def run(chunk_index, *args):
        if n_chunks == 1:
            for t in range(last_full):
                tile(vectors, t * width, *args)
        else:
            if chunk_index < n_chunks - 1:
                for t in range(full):
                    tile(vectors, t * width, *args)
            else:
                for t in range(last_full):
                    tile(vectors, t * width, *args)
        if remainder > 0:
            if chunk_index == n_chunks - 1:
                tile(remainder, last_full * width, *args)
    return run


@dataclass
class GemmPlan:
    """Tiling of the x86 vpmaddwd GEMM: a register tile of ``mo`` output channels ×
    ``np_`` vectors of 8 output pixels; pixels are processed in chunks of ``pb`` (a
    multiple of 8·np_), the reduction in blocks of ``kb`` int16 pairs (packed activations
    of one block: kb·pb·4 bytes, kept in L1); ``osplit`` splits the output channels over
    the parallel loop as well (one split per thread when there are few pixel chunks).
    Zero fields are chosen by ``choose_plan``."""

    mo: int = 1
    np_: int = 8
    pb: int = 0  # 0: auto
    kb: int = 0  # 0: auto
    osplit: int = 0  # 0: auto


def default_threads() -> int:
    """The thread count the kernels are planned for: TVM_NUM_THREADS if set (TVM's runtime
    reads it too), else the CPU count."""
    env = os.environ.get("TVM_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, os.cpu_count() or 1)


def choose_plan(pairs: int, pixels: int, out_per_group: int, n_outer: int, threads: int = 1,
                plan: Optional[GemmPlan] = None) -> GemmPlan:
    """The tiling for a GEMM of ``out_per_group`` output channels × ``pixels`` × ``pairs``
    reduction pairs (``n_outer`` independent such GEMMs: batch × groups); the zero fields
    of ``plan`` are chosen here. Tuned on EfficientNet-Lite0's layers on a Zen 3 core
    (bench/x86_kernels.py --sweep): 1 row × 8 vectors (64 pixels) everywhere, 1 × ⌈p/8⌉
    vectors when p ≤ 64; a reduction block and a pixel chunk keep the packed activations
    of a block within 16 KB (L1). Parallel tasks are (batch, group, chunk) and, with
    several threads and few chunks, also splits of the output channels, one per thread."""
    auto_tile = plan is None
    plan = plan or GemmPlan()
    mo, np_ = plan.mo, plan.np_
    if auto_tile and pixels <= 64:
        np_ = ceil_div(pixels, 8)
        mo = 1 if np_ >= 6 else (2 if np_ >= 4 else (4 if np_ >= 2 else 6))
    width = 8 * np_
    kb = plan.kb or max(8, min(pairs, L1_BLOCK // (4 * width)))
    blocks = ceil_div(pairs, kb)
    kb = ceil_div(pairs, blocks)
    pb = plan.pb or (max(width, (L1_BLOCK // (4 * kb)) // width * width) if blocks == 1 else width)
    pb = min(ceil_div(pb, width) * width, ceil_div(pixels, width) * width)
    tasks = ceil_div(pixels, pb) * n_outer
    row_blocks = ceil_div(out_per_group, mo)
    osplit = plan.osplit
    if not osplit:
        osplit = min(row_blocks, threads) if threads > 1 and tasks < 8 * threads else 1
    return GemmPlan(mo, np_, pb, kb, max(1, osplit))


@dataclass(frozen=True)
class BlockedTasks:
    """The parallel tasks of an x86 GEMM: (output-channel split, batch, group, pixel chunk),
    the split outermost; each task packs its chunk's activations one reduction block of
    ``block`` (of ``total``) rows at a time into a [block, packed_width] int32 scratch and
    keeps ``partial`` int32 partial sums between blocks."""

    batch: int
    groups: int
    chunks: PixelChunks
    block: int
    total: int
    packed_width: int
    partial: int

    @property
    def blocks(self) -> int:
        return ceil_div(self.total, self.block)


def blocked_task_macro(tasks: BlockedTasks, body: Callable):
    """A macro ``run(task, *args)`` for one parallel task: it derives the task's indices,
    allocates the packed block and the partial sums, and calls the macro
    ``body(packed, partial, split, batch, group, chunk, first_pixel, block_index,
    block_rows, *args)`` for every reduction block."""
    n, g, n_chunks, chunk = tasks.batch, tasks.groups, tasks.chunks.count, tasks.chunks.chunk
    block, total, width, partial = tasks.block, tasks.total, tasks.packed_width, tasks.partial

    @T.macro
    def run(task, *args):
        osp = T.meta_var(task // (n * g * n_chunks))  # output-channel split: outermost
        nn = T.meta_var(task // (g * n_chunks) % n)
        gg = T.meta_var(task // n_chunks % g)
        ch = T.meta_var(task % n_chunks)
        p0 = T.meta_var(ch * chunk)
        xp = T.alloc_buffer((block, width), "int32", scope=scratch_scope(block * width * 4))
        part = T.alloc_buffer((partial,), "int32", scope=scratch_scope(partial * 4))
        for kb in range(tasks.blocks):
            rows = T.meta_var(T.min(block, total - kb * block) if total % block != 0 else block)
            body(xp, part, osp, nn, gg, ch, p0, kb, rows, *args)
    return run
