"""The arm_cpu target (targets/arm_cpu.py): aarch64 code, run under qemu-aarch64 by the
project's runner, equal to the interpreter bit for bit; instruction counts reproducible.
Needs the set-up's tools (scripts/setup-arm.sh, run by `make test`)."""
import os
import re
import subprocess

import numpy as np
import pytest
import torch

import tvm
from hypothesis import given, settings
from hypothesis import strategies as st

import qcompiler
from qcompiler.scheme import arm_scheme, host_scheme
from qcompiler.targets.arm_cpu import ArmToolsError, arm_lowerings, build_arm, compile_arm, run_calls
from qcompiler.targets.lower import lower
from qcompiler.testing import float_models

from test_integer_program import ALL_INTEGER_OPS, EveryOp
from test_lower_host import assert_bit_exact, assert_equals_interpreter, integer_ops


@pytest.fixture(scope="module")
def every_op_arm():
    model = EveryOp().eval()
    x = torch.randn(2, 3, 16, 16)
    qm = qcompiler.quantize(model, x, ptq="minmax", calibration=[x, torch.randn(4, 3, 16, 16)])
    assert ALL_INTEGER_OPS <= integer_ops(qm.program)
    return qm, x, compile_arm(qm.program, (x,))


def test_every_integer_op_is_bit_exact_under_qemu(every_op_arm):
    qm, x, runtime = every_op_arm
    gen = torch.Generator().manual_seed(5)
    for i, probe in enumerate([x, torch.randn(x.shape, generator=gen) * 10, torch.full(x.shape, 1e6), torch.zeros(x.shape)]):
        assert_bit_exact(qm, runtime, (probe,), f"probe {i}")


def test_instruction_counts_are_exactly_reproducible(every_op_arm):
    _, x, runtime = every_op_arm
    first, second = runtime.count(x), runtime.count(x)
    assert first == second
    assert first["total"] == sum(first[k] for k in ("sdot", "smmla", "simd", "loadstore", "scalar")) > 10_000
    assert first["sdot"] > 0  # the sdot kernels ran


def test_qcompile_for_arm_cpu_runs_aarch64_code(every_op_arm):
    qm, x, _ = every_op_arm
    cm = qm.compile("arm_cpu")
    assert all(torch.equal(a, b) for a, b in zip(cm(x), qm.interpret(x)))
    with pytest.raises(qcompiler.QCompilerError, match="expected float32"):
        cm(x.double())


def test_missing_tools_are_named_with_the_fix(every_op_arm, tmp_path, monkeypatch):
    qm, x, _ = every_op_arm
    monkeypatch.setenv("QCOMPILER_ARM_TOOLS", str(tmp_path))
    with pytest.raises(ArmToolsError, match=r"runner.*scripts/setup-arm\.sh"):
        compile_arm(qm.program, (x,))


def _sdot_module(pixels: int):
    """out[p] = Σ_j x[4p + j]·w[j] with one sdot per 4 pixels (int8 × int8 → int32)."""
    import tvm
    from tvm import relax
    from tvm.script import tirx as T

    @T.prim_func
    def dot(x: T.Buffer((pixels * 4,), "int8"), w: T.Buffer((4,), "int8"), out: T.Buffer((pixels,), "int32")):
        T.func_attr({"tir.noalias": True})
        wv = T.reinterpret("int8x16", T.broadcast(T.reinterpret("int32", w[T.ramp(0, 1, 4)]), 4))
        for v in range(pixels // 4):
            out[T.ramp(v * 4, 1, 4)] = T.call_llvm_pure_intrin(
                "int32x4", "llvm.aarch64.neon.sdot.v4i32.v16i8", T.broadcast(T.int32(0), 4), x[T.ramp(v * 16, 1, 16)], wv)

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((pixels * 4,), "int8"))
    w = relax.Var("w", relax.TensorType((4,), "int8"))
    with bb.function("main", [x, w]):
        with bb.dataflow():
            y = bb.emit(relax.call_tir(bb.add_func(dot, "dot"), [x, w], relax.TensorType((pixels,), "int32")))
            out = bb.emit_output(relax.Tuple([y]))
        bb.emit_func_output(out)
    return bb.get()


def test_sdot_is_counted_exact_and_refused_by_a_cpu_without_dotprod():
    """The counter's sdot class on real sdot code: exactly one executed sdot per 4 pixels
    (and sdot in the library's disassembly);
    int8 extremes are exact (sdot accumulates in int32, no saturation). A variant asking
    for dotprod on a Cortex-A53 is refused when it is made; run there anyway, the library
    stops with SIGILL, reported as an ArmToolsError naming the signal and the feature."""
    import dataclasses

    from qcompiler.targets.arm_cpu import ARM_VARIANTS, ArmTargetError, ArmVariant, build_arm

    pixels = 64
    runtime = build_arm(_sdot_module(pixels))
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, pixels * 4).astype(np.int8)
    x[:16] = -128
    w = np.array([-128, -128, 127, -128], np.int8)
    (got,) = runtime.run(x, w)
    assert np.array_equal(got, (x.reshape(pixels, 4).astype(np.int64) * w).sum(1))
    counts = runtime.count(x, w)
    assert counts["sdot"] == pixels // 4
    listing = subprocess.run(["aarch64-linux-gnu-objdump", "-d", str(runtime.library)], capture_output=True, text=True,
                             check=True).stdout
    assert re.search(r"\bsdot\s+v\d+\.4s", listing)
    with pytest.raises(ArmTargetError, match=r"cortex-a53 has no dotprod.*SIGILL.*'arm_cpu_a53'"):
        ArmVariant("a53", "cortex-a53", ARM_VARIANTS["arm_cpu"].mattr, "cortex-a53")
    on_a53 = dataclasses.replace(ARM_VARIANTS["arm_cpu"])
    object.__setattr__(on_a53, "qemu_cpu", "cortex-a53")  # what checking at construction prevents
    runtime.variant = on_a53
    with pytest.raises(ArmToolsError, match=r"signal 4.*illegal instruction.*dotprod"):
        runtime.run(x, w)


# ---------------------------------------------------------------- generated models


# 25 models to one aarch64 library (one tvm.compile, one qemu process for all their
# calls). QCOMPILER_ARM_MODELS sets how many in all (default 100: two tests of two libraries).
ARM_MODELS_PER_BUILD = 25
ARM_MODELS = int(os.environ.get("QCOMPILER_ARM_MODELS", "100"))


def check_generated_models_on_arm(cases) -> None:
    """Every model, quantized with int8 activations (arm_scheme) or uint8 ones (host_scheme,
    alternately), built into one library; each run on its calibration input and on random
    inputs at 1× and 4× its scale (clipping too), all equal to the interpreter."""
    schemes = (arm_scheme(), host_scheme())
    qms = [qcompiler.quantize(c.model, c.inputs, ptq="minmax", calibration=[c.inputs], scheme=schemes[k % 2]) for k, c in enumerate(cases)]
    mod = tvm.IRModule()
    for k, (qm, case) in enumerate(zip(qms, cases)):
        mod = lower(qm.program, case.inputs, name=f"m{k}", target_lowerings=arm_lowerings("arm_cpu"), into=mod)
    library = build_arm(mod)
    gen = torch.Generator().manual_seed(0)
    calls, checks = [], []
    for k, (case, qm) in enumerate(zip(cases, qms)):
        runtime = library.for_function(f"m{k}")
        probes = [case.inputs] + [tuple(torch.randn(t.shape, generator=gen) * s * t.std().clamp_min(1.0) for t in case.inputs)
                                  for s in (1.0, 4.0)]
        for p, probe in enumerate(probes):
            calls.append((runtime, probe))
            checks.append((qm, probe, f"model {k} ({qm.scheme.activations.describe()}), probe {p}"))
    outputs, _ = run_calls(calls)
    for (qm, probe, what), built in zip(checks, outputs):
        assert_equals_interpreter(qm, built, probe, what)


def generated_arm_models(test):
    models = st.lists(float_models(), min_size=ARM_MODELS_PER_BUILD, max_size=ARM_MODELS_PER_BUILD)
    builds = max(1, -(-ARM_MODELS // (2 * ARM_MODELS_PER_BUILD)))  # rounded up: at least ARM_MODELS in all
    return settings(max_examples=builds, deadline=None)(given(models)(test))


@generated_arm_models
def test_generated_models_are_bit_exact_on_arm(cases):
    check_generated_models_on_arm(cases)


@generated_arm_models
def test_more_generated_models_are_bit_exact_on_arm(cases):
    check_generated_models_on_arm(cases)


def test_the_runtime_records_which_kernel_each_conv_and_linear_got(every_op_arm):
    qm, _, runtime = every_op_arm
    weighted = {n.name for n in qm.program.graph.nodes
                if str(n.target) in ("qcompiler.conv2d.default", "qcompiler.linear.default")}
    choices = runtime.kernel_choices
    assert set(choices) == weighted
    assert all(c.kernel.startswith("arm ") and c.reason is None or c.kernel == "generic" and c.reason
               for c in choices.values()), choices
    assert {"arm sdot depthwise", "arm sdot dense"} <= {c.kernel for c in choices.values()}, choices


def test_the_a53_variant_runs_on_a_cpu_without_dotprod(every_op_arm):
    """target="arm_cpu_a53": built for a Cortex-A53 (NEON only), run under qemu -cpu
    cortex-a53, equal to the interpreter; no dotprod instruction anywhere in the library."""
    qm, x, _ = every_op_arm
    cm = qm.compile("arm_cpu_a53")
    assert cm.runtime.variant.qemu_cpu == "cortex-a53" and "dotprod" not in cm.runtime.variant.features
    assert_bit_exact(qm, cm.runtime, (x,), "a53")
    assert {c.kernel for c in cm.runtime.kernel_choices.values()} == {"generic"}
    listing = subprocess.run(["aarch64-linux-gnu-objdump", "-d", str(cm.runtime.library)], capture_output=True,
                             text=True, check=True).stdout
    assert "\tsdot\t" not in listing and "\tudot\t" not in listing and "\tsmmla\t" not in listing


# ---------------------------------------------------------------- real models


def test_efficientnet_lite0_is_bit_exact_on_arm():
    """EfficientNet-Lite0 with the arm_cpu scheme (W8, int8 activations), batch 1, as
    qcompile builds it for arm_cpu: real images and noise, in one qemu process."""
    from qcompiler.models import efficientnet_lite0, imagenet_calibration_set, imagenet_samples

    data = imagenet_samples()
    calibration = list(imagenet_calibration_set(crops_per_image=1)[:8].split(4))
    x = data.images[:1]
    qm = qcompiler.quantize(efficientnet_lite0(), x, ptq="minmax", calibration=calibration, scheme=arm_scheme(), progress=False)
    runtime = compile_arm(qm.program, (x,))
    probes = [(data.images[i:i + 1],) for i in range(3)] + [(torch.randn(x.shape, generator=torch.Generator().manual_seed(0)) * 2,)]
    outputs, _ = run_calls([(runtime, p) for p in probes])
    for i, (probe, built) in enumerate(zip(probes, outputs)):
        assert_equals_interpreter(qm, built, probe, f"probe {i}")


def test_fashion_mnist_model_is_bit_exact_on_arm():
    """The bundled Fashion-MNIST model at W8A8 and W4A8 (int8 activations), one library,
    on 128 test images each."""
    from qcompiler.models import fashion_mnist, fashion_mobilenet

    x_train, _ = fashion_mnist("train")
    x_test, _ = fashion_mnist("test")
    calibration = [x_train[i:i + 64] for i in range(0, 256, 64)]
    qms = {bits: qcompiler.quantize(fashion_mobilenet(), x_test[:64], bits=bits, ptq="minmax", calibration=calibration,
                                    scheme=arm_scheme(), progress=False) for bits in (8, 4)}
    mod = tvm.IRModule()
    for bits, qm in qms.items():
        mod = lower(qm.program, (x_test[:64],), name=f"w{bits}", target_lowerings=arm_lowerings("arm_cpu"), into=mod)
    library = build_arm(mod)
    calls = [(library.for_function(f"w{bits}"), (x_test[i:i + 64],)) for bits in qms for i in (0, 64)]
    outputs, _ = run_calls(calls)
    for (runtime, probe), built in zip(calls, outputs):
        assert_equals_interpreter(qms[int(runtime.function[1:])], built, probe, runtime.function)
