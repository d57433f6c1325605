"""Small TIR vector helpers the kernels share."""
from __future__ import annotations

import tvm


def concat_vectors(parts: list):
    """Concatenate TIR vectors (a Shuffle of all their lanes in order)."""
    if len(parts) == 1:
        return parts[0]
    idx, off = [], 0
    for p in parts:
        lanes = p.ty.dtype.lanes
        idx += list(range(off, off + lanes))
        off += lanes
    return tvm.tirx.Shuffle(parts, idx)
