"""Exact int8 kernels (conv2d GEMM, depthwise, dense, each fused with its requantize) as
TIR PrimFuncs: the scaffolding every ISA shares (contract, geometry, requant, padded_copy,
tiling, relax_call) and, per ISA, its kernel bodies and requantize epilogue (``x86*``,
``arm*``; entry points ``x86.py`` and ``arm.py``). Instruction steps come from
``targets/intrinsics``; a kernel never imports a target module."""
