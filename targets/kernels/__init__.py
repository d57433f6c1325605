"""Exact int8 kernels (conv2d GEMM, depthwise, dense, each fused with its requantize) as
TIR PrimFuncs; entry points ``x86.py`` and ``arm.py`` (one API for both).

Written once, for every ISA: the exactness contract and operand checks (``contract``),
conv geometry (``geometry``), the requantize constants and their one validation
(``requant``), zero-point padded plane copies (``padded_copy``), pixel chunks and tile
dispatch (``tiling``), the masked tail store (``vector_store``), the Relax call
(``relax_call``), and the dense loop nest (``dense``: packing, task loop, register tile,
reduction, store).

What an ISA supplies: its instruction steps, registered by name in ``targets/intrinsics``;
its requantize epilogue (``<isa>_epilogue.py``: the row encoding and the TIR that applies
it); a ``DenseIsa`` for the dense loop nest (lanes, reduction group, packed elements, its
multiply-accumulate step, its epilogue call: ``DENSE`` in its entry point); and, for now,
its own GEMM-conv and depthwise loop bodies (``<isa>_gemm_conv.py``,
``<isa>_depthwise.py``; x86 also ``x86_u8s8.py``), whose algorithms differ by ISA. A kernel
never imports a target module."""
