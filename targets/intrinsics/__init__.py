"""The instruction steps of the int8 kernels, one module per ISA (``x86_avx2``,
``arm_neon``), each step registered by name with what it computes (``registry``)."""
