"""targets/kernels/arm.py: the sdot kernels against the op references (qcompiler.ops), bit for bit, executed
under qemu-aarch64 (one aarch64 build for all the cases).

Covered: pointwise and im2col GEMMs (3×3 stride 1/2, asymmetric padding, dilation, groups,
sizes that are not multiples of any tile, K not a multiple of 16, several pixel chunks),
depthwise (3×3 / 5×5, stride 1/2/3, dilation, channel multiplier, planes narrower than a
vector), dense (batch 1 and 3, odd K and O); both requantize epilogues (sqdmulh and
int64), clamped and full-range outputs, uint8 and int8 on both sides, extreme inputs, a
channel whose accumulator can leave int32 (made constant), and sdot in the disassembly.
"""
import re
import subprocess

import numpy as np
import pytest

pytest.importorskip("tvm")

from arm_kernel_cases import build_cases, conv_case, linear_case, mismatches  # noqa: E402

from qcompiler.targets.arm_cpu import ArmToolsError, arm_target, build_arm  # noqa: E402
from qcompiler.targets.kernels import arm as A  # noqa: E402


def _cases():
    dead = np.zeros((8, 16, 1, 1), np.int8)
    dead[:, :, 0, 0] = 100  # Σ w·(x − z) up to 16·100·255: with a bias of −2^31 + 1 it leaves int32
    dead_bias = np.full(8, 1000)
    dead_bias[3] = -(2**31) + 1
    return [
        conv_case("pointwise", (1, 16, 12, 13), (96, 16, 1, 1)),
        conv_case("pointwise int8 odd mixed", (2, 5, 3, 7), (7, 5, 1, 1), x_dtype="int8", out_dtype="int8",
                  shift_kind="mixed"),
        conv_case("pointwise chunks K=601", (1, 601, 7, 7), (37, 601, 1, 1), full_range=True),
        conv_case("pointwise tile 2x3", (1, 20, 9, 9), (11, 20, 1, 1), mo=2, nv=3, shift_kind="large"),
        conv_case("pointwise constant channel", (1, 16, 4, 5), (8, 16, 1, 1), weights=dead, bias=dead_bias),
        conv_case("pointwise bias -2^31", (1, 16, 4, 5), (8, 16, 1, 1), weights=int32_floor_weights(),
                  bias=int32_floor_bias()),
        conv_case("stem 3x3 s2 pad1", (1, 3, 17, 19), (8, 3, 3, 3), stride=(2, 2), padding=(1, 1)),
        conv_case("3x3 s2 same int8", (1, 3, 16, 16), (8, 3, 3, 3), stride=(2, 2), padding=(0, 1, 0, 1), x_dtype="int8"),
        conv_case("3x3 groups 2 mixed", (1, 8, 10, 10), (16, 4, 3, 3), padding=(1, 1), groups=2, shift_kind="mixed",
                  full_range=True),
        conv_case("3x3 dilation 2", (1, 6, 11, 12), (5, 6, 3, 3), padding=(2, 2), dilation=(2, 2), out_dtype="int8"),
        conv_case("5x1 stride 3", (1, 4, 20, 9), (6, 4, 5, 1), stride=(3, 1), padding=(2, 0)),
        conv_case("depthwise 3x3", (1, 24, 9, 11), (24, 1, 3, 3), padding=(1, 1), groups=24),
        conv_case("depthwise 5x5 s2 same int8", (1, 24, 16, 15), (24, 1, 5, 5), stride=(2, 2), padding=(1, 2, 1, 2),
                  groups=24, x_dtype="int8", out_dtype="int8"),
        conv_case("depthwise 3x3 s3 mixed", (1, 4, 13, 29), (4, 1, 3, 3), stride=(3, 3), padding=(1, 1), groups=4,
                  shift_kind="mixed"),
        conv_case("depthwise dilation 2 multiplier 2", (1, 3, 12, 12), (6, 1, 3, 3), padding=(2, 2), dilation=(2, 2),
                  groups=3, full_range=True),
        conv_case("depthwise 3x3 on 2x3 planes", (2, 5, 2, 3), (5, 1, 3, 3), padding=(1, 1), groups=5, out_dtype="int8"),
        conv_case("depthwise 7x7 wide", (1, 2, 9, 40), (2, 1, 7, 7), padding=(3, 3), groups=2),
        linear_case("dense batch 1", (1, 100), 37),
        linear_case("dense batch 3 int8 mixed", (3, 33), 18, x_dtype="int8", out_dtype="int8", shift_kind="mixed"),
        linear_case("dense 3-d input", (2, 3, 20), 9, full_range=True),
    ]


def int32_floor_weights():
    """A channel (2) with zero weights, whose folded bias is then exactly −2^31."""
    w = np.random.default_rng(7).integers(-127, 128, (8, 16, 1, 1)).astype(np.int8)
    w[2] = 0
    return w


def int32_floor_bias():
    """−2^31 is an int32: accepted on arm as on x86 (the arm check once refused it)."""
    bias = np.full(8, 1000)
    bias[2] = -(2**31)
    return bias


@pytest.fixture(scope="module")
def built():
    cases = _cases()
    mod, inputs = build_cases(cases)
    try:
        runtime = build_arm(mod)
    except ArmToolsError as exc:
        pytest.skip(str(exc))
    return cases, runtime, inputs


def test_every_kernel_case_is_bit_exact_under_qemu(built):
    cases, runtime, inputs = built
    problems = mismatches(cases, runtime.run(*inputs))
    assert not problems, "\n".join(problems)


def test_the_cases_cover_every_kernel_and_epilogue(built):
    cases = built[0]
    kinds = {(c.info["kind"], c.info["epilogue"]) for c in cases}
    assert kinds >= {(k, e) for k in ("pointwise", "im2col", "depthwise", "dense") for e in ("fast", "int64")}, kinds


def test_hot_loops_hold_sdot(built):
    """objdump: indexed sdot (GEMM, dense, depthwise) and tbl (depthwise's tap gather)."""
    listing = subprocess.run(["aarch64-linux-gnu-objdump", "-d", "--no-show-raw-insn", str(built[1].library)],
                             capture_output=True, text=True, check=True).stdout
    assert re.search(r"\bsdot\s+v\d+\.4s, v\d+\.16b, v\d+\.4b\[[0-3]\]", listing)
    assert re.search(r"\btbl\s+v\d+\.16b", listing)
    assert re.search(r"\bsqdmulh\s+v\d+\.4s", listing)


def test_unsupported_operands_fall_back_with_exactness_error():
    with pytest.raises(A.ExactnessError):
        A.conv2d_requant_primfunc((1, 4, 8, 8), "int16", np.ones((4, 4, 1, 1), np.int8), np.zeros(4), 0,
                                  mult=[2**30] * 4, shift=[40] * 4, target=arm_target())
    with pytest.raises(A.ExactnessError, match="no sdot window"):
        A.conv2d_requant_primfunc((1, 2, 40, 40), "uint8", np.ones((2, 1, 3, 3), np.int8), np.zeros(2), 0,
                                  stride=(1, 11), groups=2, mult=[2**30] * 2, shift=[40] * 2, target=arm_target())


def test_kernels_refuse_a_target_without_dotprod():
    import tvm

    a53 = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a53", "mattr": ["+neon"]})
    with pytest.raises(ValueError, match="dotprod"):
        A.conv2d_requant_primfunc((1, 4, 8, 8), "uint8", np.ones((4, 4, 1, 1), np.int8), np.zeros(4), 0,
                                  mult=[2**30] * 4, shift=[40] * 4, target=a53)


# ---------------------------------------------------------------- smmla (the i8mm variant)


def _smmla_cases():
    from qcompiler.targets.arm_cpu import arm_target

    mm = dict(instruction="smmla", target=arm_target("arm_cpu_i8mm"))
    return [
        conv_case("smmla pointwise", (1, 16, 12, 13), (96, 16, 1, 1), **mm),
        conv_case("smmla pointwise int8 odd mixed", (2, 5, 3, 7), (7, 5, 1, 1), x_dtype="int8", out_dtype="int8",
                  shift_kind="mixed", **mm),
        conv_case("smmla pointwise chunks K=601", (1, 601, 7, 7), (37, 601, 1, 1), full_range=True, **mm),
        conv_case("smmla tile 2x3", (1, 20, 9, 9), (11, 20, 1, 1), mo=2, nv=3, shift_kind="large", **mm),
        conv_case("smmla stem 3x3 s2 pad1", (1, 3, 17, 19), (8, 3, 3, 3), stride=(2, 2), padding=(1, 1), **mm),
        conv_case("smmla 3x3 groups 2 same", (1, 8, 10, 10), (16, 4, 3, 3), padding=(0, 1, 0, 1), groups=2,
                  shift_kind="mixed", **mm),
        conv_case("smmla 3x3 dilation 2", (1, 6, 11, 12), (5, 6, 3, 3), padding=(2, 2), dilation=(2, 2), out_dtype="int8",
                  **mm),
        conv_case("smmla depthwise stays sdot", (1, 24, 9, 11), (24, 1, 3, 3), padding=(1, 1), groups=24, **mm),
    ]


def test_smmla_kernels_are_bit_exact_on_a_cpu_with_i8mm():
    """The i8mm variant's GEMMs (smmla: 2×8 by 8×2 blocks, pixels packed by k-octets) under
    qemu -cpu max: exact on the cases that stress tiles, chunks, padding and epilogues;
    smmla in the disassembly, and counted by the plugin."""
    cases = _smmla_cases()
    assert {c.info["instruction"] for c in cases if c.info["kind"] != "depthwise"} == {"smmla"}
    mod, inputs = build_cases(cases)
    runtime = build_arm(mod, "arm_cpu_i8mm")
    problems = mismatches(cases, runtime.run(*inputs))
    assert not problems, "\n".join(problems)
    listing = subprocess.run(["aarch64-linux-gnu-objdump", "-d", "--no-show-raw-insn", str(runtime.library)],
                             capture_output=True, text=True, check=True).stdout
    assert re.search(r"\bsmmla\s+v\d+\.4s, v\d+\.16b, v\d+\.16b", listing)
    assert runtime.count(*inputs)["smmla"] > 0


def test_smmla_needs_a_target_with_i8mm():
    from qcompiler.targets.arm_cpu import arm_target

    with pytest.raises(ValueError, match=r"smmla kernels need .*\+i8mm"):
        A.conv2d_requant_primfunc((1, 4, 8, 8), "uint8", np.ones((4, 4, 1, 1), np.int8), np.zeros(4), 0,
                                  mult=[2**30] * 4, shift=[40] * 4, target=arm_target("arm_cpu"), instruction="smmla")
