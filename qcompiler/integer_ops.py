"""qcompiler's integer ops, registered with torch.library (namespace ``qcompiler``) so an
integer program is an ordinary fx GraphModule that runs in torch. Each op carries all its
integer parameters explicitly; its CPU implementation is the numpy reference kernel in
``kernels.py``, the same one ``interpreter.py`` runs. The table below is the op set."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from . import kernels

TORCH_TO_NUMPY = {torch.uint8: np.uint8, torch.int8: np.int8, torch.int16: np.int16, torch.uint16: np.uint16,
                  torch.int32: np.int32, torch.int64: np.int64, torch.float32: np.float32}

# name -> (schema, numpy kernel, index of the out_dtype argument or None)
OPS: dict[str, tuple[str, Callable, object]] = {
    "quantize": ("(Tensor x, float scale, int zp, int qmin, int qmax, ScalarType dtype) -> Tensor", kernels.quantize, 5),
    "dequantize": ("(Tensor q, float scale, int zp) -> Tensor", kernels.dequantize, None),
    "conv2d": ("(Tensor x, Tensor w, Tensor bias, int x_zp, int[] stride, int[] padding, int[] dilation, int groups, "
               "Tensor mult, Tensor shift, int out_zp, Tensor lo, Tensor hi, ScalarType out_dtype) -> Tensor", kernels.conv2d, 13),
    "linear": ("(Tensor x, Tensor w, Tensor bias, int x_zp, Tensor mult, Tensor shift, int out_zp, Tensor lo, Tensor hi, "
               "ScalarType out_dtype) -> Tensor", kernels.linear, 9),
    "add": ("(Tensor a, Tensor b, int a_zp, int b_zp, int a_mult, int b_mult, int shift, int out_zp, int lo, int hi, "
            "ScalarType out_dtype) -> Tensor", kernels.add, 10),
    "mul": ("(Tensor a, Tensor b, int a_zp, int b_zp, int mult, int shift, int out_zp, int lo, int hi, ScalarType out_dtype) -> Tensor",
            kernels.mul, 9),
    "matmul": ("(Tensor a, Tensor b, int a_zp, int b_zp, int mult, int shift, int out_zp, int lo, int hi, ScalarType out_dtype) -> Tensor",
               kernels.matmul, 9),
    "concat": ("(Tensor[] xs, int dim, int[] zps, int[] mults, int[] shifts, int out_zp, int lo, int hi, ScalarType out_dtype) -> Tensor",
               kernels.concat, 8),
    "mean": ("(Tensor x, int[] dims, bool keepdim, int in_zp, int mult, int shift, int out_zp, int lo, int hi, ScalarType out_dtype) -> Tensor",
             kernels.mean, 9),
    "avg_pool2d": ("(Tensor x, int[] kernel, int[] stride, int[] padding, int in_zp, int mult, int shift, int out_zp, int lo, int hi, "
                   "ScalarType out_dtype) -> Tensor", kernels.avg_pool2d, 10),
    "max_pool2d": ("(Tensor x, int[] kernel, int[] stride, int[] padding, int[] dilation, int qmin) -> Tensor", kernels.max_pool2d, "input"),
    "clamp": ("(Tensor x, Tensor lo, Tensor hi, int axis) -> Tensor", kernels.clamp, "input"),
    "requantize": ("(Tensor x, int in_zp, int mult, int shift, int out_zp, int lo, int hi, ScalarType out_dtype) -> Tensor",
                   kernels.requant, 7),
    "lut": ("(Tensor x, Tensor table, int qmin) -> Tensor", kernels.lut, "table"),
}


def to_numpy(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
        return [to_numpy(v) for v in value]
    return value


def output_dtype(name: str, args: tuple):
    """The numpy dtype op ``name`` stores its result in, given its (numpy) arguments."""
    where = OPS[name][2]
    if where is None:
        return np.float32
    if where == "input":
        return np.asarray(args[0]).dtype
    if where == "table":
        return np.asarray(args[1]).dtype
    return TORCH_TO_NUMPY[args[where]]


def run_numpy(name: str, args: tuple) -> np.ndarray:
    """Run op ``name`` on numpy arguments; the result in the op's storage dtype."""
    kernel = OPS[name][1]
    dtype_index = OPS[name][2]
    kernel_args = [a for i, a in enumerate(args) if not (isinstance(dtype_index, int) and i == dtype_index)]
    return np.asarray(kernel(*kernel_args)).astype(output_dtype(name, args))


def _torch_impl(name: str):
    def impl(*args):
        return torch.from_numpy(np.ascontiguousarray(run_numpy(name, tuple(to_numpy(a) for a in args))))
    return impl


_LIB = torch.library.Library("qcompiler", "DEF")
for _name, (_schema, _kernel, _dtype) in OPS.items():
    _LIB.define(f"{_name}{_schema}")
    _LIB.impl(_name, _torch_impl(_name), "CPU")

qc = torch.ops.qcompiler


def op_of(target) -> str | None:
    """The qcompiler op name of an fx target, or None."""
    if isinstance(target, torch._ops.OpOverload) and target.namespace == "qcompiler":
        return target._schema.name.split("::")[1]
    return None
