"""The host build (targets/lower.py + targets/host.py) against the interpreter: bit for bit."""
import os

import numpy as np
import pytest
import tvm
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._pytree import tree_leaves

import qcompiler
from qcompiler.scheme import host_scheme
from qcompiler.targets import lower as lowering
from qcompiler.targets.host import HostRuntime, compile_host, host_target, host_target_spec
from qcompiler.targets.lower import LoweringError, lower, register_lowering
from qcompiler.testing import float_models

from test_integer_program import ALL_INTEGER_OPS, EveryOp


def assert_bit_exact(qm, runtime: HostRuntime, inputs: tuple, what: str = ""):
    assert_equals_interpreter(qm, runtime.run(*inputs), inputs, what)


def assert_equals_interpreter(qm, built: list, inputs: tuple, what: str = ""):
    """``built`` (a build's output arrays for ``inputs``) equals the interpreter bit for bit."""
    reference = [t.numpy() for t in tree_leaves(qm.interpret(*inputs))]
    assert len(built) == len(reference)
    for i, (r, b) in enumerate(zip(reference, built)):
        assert r.dtype == b.dtype and r.shape == b.shape, f"{what} output {i}: {b.dtype}{b.shape} vs {r.dtype}{r.shape}"
        diff = r != b
        assert not diff.any(), (f"{what} output {i}: {int(diff.sum())} of {diff.size} elements differ from the interpreter, "
                                f"max |Δ| {np.abs(r.astype(np.float64) - b.astype(np.float64)).max():.3g}")


def integer_ops(program) -> set:
    return {n.target._schema.name.split("::")[1] for n in program.graph.nodes
            if n.op == "call_function" and getattr(n.target, "namespace", "") == "qcompiler"}


# ---------------------------------------------------------------- every integer op


@pytest.fixture(scope="module")
def every_op():
    model = EveryOp().eval()
    x = torch.randn(4, 3, 16, 16)
    qm = qcompiler.quantize(model, x, ptq="minmax", calibration=[x, torch.randn(4, 3, 16, 16)])
    assert ALL_INTEGER_OPS <= integer_ops(qm.program)
    return qm, x, compile_host(qm.program, (x,))


def test_every_integer_op_is_bit_exact_with_the_interpreter(every_op):
    qm, x, runtime = every_op
    gen = torch.Generator().manual_seed(1)
    probes = [x] + [torch.randn(x.shape, generator=gen) * s for s in (0.3, 1.0, 3.0, 10.0, 100.0)]  # far outside calibration: clipping
    probes.append(torch.full(x.shape, 1e6))  # every input saturated
    probes.append(torch.zeros(x.shape))
    for i, p in enumerate(probes):
        assert_bit_exact(qm, runtime, (p,), f"probe {i}")


def test_runtime_keeps_the_output_structure_and_checks_shapes(every_op):
    qm, x, runtime = every_op
    out, ref = runtime(x), qm.interpret(x)
    assert isinstance(out, tuple) and len(out) == 2
    assert all(torch.equal(a, b) for a, b in zip(out, ref))
    assert np.array_equal(runtime.run(x.numpy().astype(np.float64))[0], ref[0].numpy())  # float64 input: cast, as the interpreter does
    with pytest.raises(qcompiler.QCompilerError, match=r"built for \(4, 3, 16, 16\)"):
        runtime.run(torch.randn(2, 3, 16, 16))


def test_host_target_names_the_cpu_not_native():
    spec = host_target_spec()
    assert spec["kind"] == "llvm" and spec.get("mcpu") != "native"


def test_generic_conv_and_its_requantize_fuse_into_one_primfunc(every_op):
    """The generic lowering (scheduled=False, what a target without kernels of its own
    gets): LegalizeOps + FuseOps + FuseTIR make one primfunc per conv2d with its int64
    requantize epilogue."""
    from tvm import relax

    qm, x, _ = every_op
    mod = lower(qm.program, (x,))
    seq = tvm.transform.Sequential([relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                                    relax.transform.FoldConstant(), relax.transform.FuseOps(), relax.transform.FuseTIR()])
    with tvm.target.Target(dict(host_target_spec())):
        fused = seq(mod)
    names = [gv.name_hint for gv, f in fused.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    convs = [n for n in names if "conv2d" in n]
    n_convs = sum(1 for n in qm.program.graph.nodes if "qcompiler.conv2d" in str(n.target))
    assert len(convs) >= n_convs
    assert all("right_shift" in n and "maximum" in n and "minimum" in n for n in convs), convs
    generic = compile_host(qm.program, (x,), scheduled=False)
    assert_bit_exact(qm, generic, (x,), "generic build")


def test_host_build_uses_our_kernels_for_every_conv_and_linear(every_op):
    from qcompiler.targets.kernels.relax_call import kernel_info

    qm, _, runtime = every_op
    kernels = [kernel_info(f) for f in runtime.mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    main = runtime.mod["main"].script()
    weighted = [n for n in qm.program.graph.nodes if str(n.target) in ("qcompiler.conv2d.default", "qcompiler.linear.default")]
    count = lambda op: sum(1 for n in qm.program.graph.nodes if str(n.target) == f"qcompiler.{op}.default")
    # what is left of the generic lowering: avg_pool2d's window sums (a conv) and the matmul op
    assert main.count("R.nn.conv2d(") == count("avg_pool2d") and main.count("R.matmul(") == count("matmul")
    assert main.count("R.call_tir") == len(weighted)  # identical kernels are shared, calls are not
    assert {k["kind"] for k in kernels} >= {"depthwise", "dense"}


class SamePaddedConvs(nn.Module):
    """TensorFlow "same" padding as EfficientNet-Lite0 exports it: an explicit, asymmetric
    pad before stride-2 convs (dense and depthwise), and a symmetric one before a stride-1
    depthwise conv."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2)
        self.dw = nn.Conv2d(8, 8, 5, stride=2, groups=8)
        self.dw1 = nn.Conv2d(8, 8, 3, groups=8)

    def forward(self, x):
        x = torch.relu(self.stem(nn.functional.pad(x, (0, 1, 0, 1))))
        x = torch.relu(self.dw(nn.functional.pad(x, (1, 2, 1, 2))))
        return self.dw1(nn.functional.pad(x, (1, 1, 1, 1)))


def test_zero_point_pads_are_taken_into_the_conv_kernels():
    model = SamePaddedConvs().eval()
    x = torch.randn(2, 3, 23, 21)
    qm = qcompiler.quantize(model, x, ptq="minmax", calibration=[x])
    assert sum("constant_pad_nd" in str(n.target) for n in qm.program.graph.nodes) == 3
    runtime = compile_host(qm.program, (x,))
    main = runtime.mod["main"].script()
    assert "R.nn.pad" not in main and main.count("R.call_tir") == 3, main
    gen = torch.Generator().manual_seed(3)
    for i, probe in enumerate([x, torch.randn(x.shape, generator=gen) * 5, torch.full(x.shape, -1e3)]):
        assert_bit_exact(qm, runtime, (probe,), f"probe {i}")


# ---------------------------------------------------------------- generated models


# Models are built ten to one IRModule (one tvm.compile for ten models: LLVM's fixed cost
# per build dominates small models). QCOMPILER_TARGET_MODELS sets how many (default 300).
MODELS_PER_BUILD = 10
TARGET_MODELS = int(os.environ.get("QCOMPILER_TARGET_MODELS", "300"))


def build_together(programs: list, inputs: list) -> list[HostRuntime]:
    """One host build for several programs; a runtime per program (functions m0, m1, ...)."""
    mod = tvm.IRModule()
    for i, (program, example) in enumerate(zip(programs, inputs)):
        mod.update(lower(program, example, name=f"m{i}"))
    executable = tvm.compile(mod, host_target())
    loaded = executable.jit()  # once: every VirtualMachine(executable) would load it again
    return [HostRuntime(executable, mod, function=f"m{i}", loaded=loaded) for i in range(len(programs))]


def check_generated_models(cases) -> None:
    qms = [qcompiler.quantize(c.model, c.inputs, ptq="minmax", calibration=[c.inputs]) for c in cases]
    runtimes = build_together([qm.program for qm in qms], [c.inputs for c in cases])
    gen = torch.Generator().manual_seed(0)
    for k, (case, qm, runtime) in enumerate(zip(cases, qms, runtimes)):
        assert_bit_exact(qm, runtime, case.inputs, f"model {k}, calibration input")
        for s in (1.0, 4.0):  # other inputs than calibrated on: clipping too
            probe = tuple(torch.randn(t.shape, generator=gen) * s * t.std().clamp_min(1.0) for t in case.inputs)
            assert_bit_exact(qm, runtime, probe, f"model {k}, random input x{s}")


# Three tests with their own names (so their own derandomized examples), which pytest-xdist
# can run side by side; a third of TARGET_MODELS each.
def generated_models(test):
    models = st.lists(float_models(), min_size=MODELS_PER_BUILD, max_size=MODELS_PER_BUILD)
    return settings(max_examples=max(1, TARGET_MODELS // (3 * MODELS_PER_BUILD)))(given(models)(test))


@generated_models
def test_generated_models_are_bit_exact_on_the_host(cases):
    check_generated_models(cases)


@generated_models
def test_more_generated_models_are_bit_exact_on_the_host(cases):
    check_generated_models(cases)


@generated_models
def test_yet_more_generated_models_are_bit_exact_on_the_host(cases):
    check_generated_models(cases)


def test_16_bit_activations_accumulate_exactly():
    """int16 activations: conv sums may pass 2^31, so the lowering accumulates in int64."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 8, 3, padding=1), nn.AvgPool2d(2),
                          nn.Flatten(), nn.Linear(8 * 4 * 4, 5)).eval()
    x = torch.randn(2, 3, 8, 8)
    qm = qcompiler.quantize(model, x, activation_bits=16)
    runtime = compile_host(qm.program, (x,))
    script = runtime.mod["main"].script()
    assert 'groups=1, data_layout="NCHW", kernel_layout="OIHW", out_layout="NCHW", out_dtype="int64"' in script  # 65535·127·288 > 2^31
    assert 'out_dtype="int32"' in script  # the first conv (27 terms) still fits int32
    for p in (x, torch.randn(2, 3, 8, 8) * 5):
        assert_bit_exact(qm, runtime, (p,))


# ---------------------------------------------------------------- float fallback and errors


class Odd(nn.Module):
    """Float ops with no integer form: fmax and copysign (IEEE-exact), lgamma."""

    def __init__(self, with_lgamma: bool):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.with_lgamma = with_lgamma

    def forward(self, x):
        y = self.conv(x)
        y = torch.fmax(y, y * 0.5) + torch.copysign(y, y - 0.25)
        return torch.lgamma(y.abs() + 1) if self.with_lgamma else y


ODD_OPS = frozenset({"aten.fmax.default", "aten.copysign.Tensor", "aten.lgamma.default"})


@pytest.fixture
def restore_lowerings():
    saved = dict(lowering.LOWERINGS)
    yield
    lowering.LOWERINGS.clear()
    lowering.LOWERINGS.update(saved)


def test_every_unlowerable_node_is_listed_at_once_with_the_fix(restore_lowerings):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 4)
    qm = qcompiler.quantize(Odd(True).eval(), x, scheme=type(host_scheme())(fallback_ops=ODD_OPS))
    with pytest.raises(LoweringError) as info:
        lower(qm.program, (x,))
    msg = str(info.value)
    assert isinstance(info.value, qcompiler.QCompilerError) and info.value.__cause__ is None
    assert "3 node(s)" in msg and "register_lowering" in msg
    assert "(aten.fmax.default)" in msg and "(aten.copysign.Tensor)" in msg and "(aten.lgamma.default)" in msg

    register_lowering(torch.ops.aten.fmax.default, lambda ctx, node, args, kwargs: lowering.R.maximum(ctx.expr(args[0]), ctx.expr(args[1])))

    @register_lowering("aten.copysign.Tensor")
    def copysign(ctx, node, args, kwargs):
        R = lowering.R
        a, b = ctx.expr(args[0]), ctx.expr(args[1])
        zero = ctx.const(0.0, "float32")
        return R.where(R.less(b, zero), R.negative(R.abs(a)), R.abs(a))

    with pytest.raises(LoweringError) as info:
        lower(qm.program, (x,))
    assert "1 node(s)" in str(info.value) and "lgamma" in str(info.value) and "fmax" not in str(info.value)

    qm2 = qcompiler.quantize(Odd(False).eval(), x, scheme=type(host_scheme())(fallback_ops=ODD_OPS))
    runtime = compile_host(qm2.program, (x,))
    for p in (x, torch.randn(2, 3, 4, 4) * 3):
        assert_bit_exact(qm2, runtime, (p,))


def test_float_fallback_through_the_frontend_translators():
    """cumsum and softmax kept in float (scheme fallback): lowered by tvm.relax.frontend.torch.
    Not guaranteed bit-exact (float32 exp and summation order may differ from torch by an
    ulp); on these inputs no quantized output moves."""

    class TwoOddOps(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return torch.softmax(torch.cumsum(self.conv(x), dim=1), dim=1)

    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 4)
    scheme = type(host_scheme())(fallback_ops=frozenset({"aten.cumsum.default", "aten._softmax.default"}))
    qm = qcompiler.quantize(TwoOddOps().eval(), x, scheme=scheme)
    runtime = compile_host(qm.program, (x,))
    assert_bit_exact(qm, runtime, (x,))


def test_a_failing_lowering_names_the_node(restore_lowerings):
    x = torch.randn(1, 3, 4, 4)
    qm = qcompiler.quantize(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU()).eval(), x)

    def broken(ctx, node, args, kwargs):
        raise ValueError("no")

    register_lowering("conv2d", broken)
    with pytest.raises(LoweringError, match=r"lowering node '.*' \(qcompiler.conv2d.default\) failed: ValueError: no"):
        lower(qm.program, (x,))


# ---------------------------------------------------------------- a real model


def test_efficientnet_lite0_is_bit_exact_on_the_host():
    """EfficientNet-Lite0 (W8A8), calibrated on a few augmented ImageNet images; one build,
    checked on real images and on noise."""
    from qcompiler.models import efficientnet_lite0, imagenet_calibration_set, imagenet_samples

    data = imagenet_samples()
    calibration = list(imagenet_calibration_set(crops_per_image=1)[:8].split(4))
    x = data.images[:2]
    qm = qcompiler.quantize(efficientnet_lite0(), x, ptq="minmax", calibration=calibration, progress=False)
    runtime = compile_host(qm.program, (x,))
    assert_bit_exact(qm, runtime, (x,), "images 0-1")
    assert_bit_exact(qm, runtime, (data.images[2:4],), "images 2-3")
    assert_bit_exact(qm, runtime, (torch.randn(x.shape, generator=torch.Generator().manual_seed(0)) * 2,), "noise")


def test_fashion_mnist_model_is_bit_exact_on_the_host():
    """The bundled Fashion-MNIST model (W8A8 and W4A8), on 64 test images per build."""
    from qcompiler.models import fashion_mnist, fashion_mobilenet

    x_train, _ = fashion_mnist("train")
    x_test, _ = fashion_mnist("test")
    calibration = [x_train[i:i + 64] for i in range(0, 256, 64)]
    for bits in (8, 4):
        qm = qcompiler.quantize(fashion_mobilenet(), x_test[:64], bits=bits, ptq="minmax", calibration=calibration, progress=False)
        runtime = compile_host(qm.program, (x_test[:64],))
        assert_bit_exact(qm, runtime, (x_test[:64],), f"W{bits}A8, test images 0-63")
        assert_bit_exact(qm, runtime, (x_test[64:128],), f"W{bits}A8, test images 64-127")


def test_fused_elementwise_kernels_are_vectorized_and_unchanged(every_op):
    """targets/cpu_schedule.py: after Relax's CPU fusion, every injective kernel of the
    generic lowering is vectorized (reductions and our own kernels are left alone), and the
    scheduled build computes the same bits."""
    from tvm import relax, tirx

    from qcompiler.targets.cpu_schedule import ScheduleInjectiveKernels, schedule_injective
    from qcompiler.targets.host import HOST_LOWERINGS

    qm, x, runtime = every_op
    mod = lower(qm.program, (x,), target_lowerings=HOST_LOWERINGS)
    with host_target():
        fused = tvm.transform.Sequential([relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                                          relax.transform.FoldConstant(), relax.transform.FuseOps(),
                                          relax.transform.FuseTIR()])(mod)
    scheduled = ScheduleInjectiveKernels()(fused)

    def kinds(func):
        import tvm_ffi

        found = set()
        tvm_ffi.structural_walk(func.body, [(tirx.For, lambda s: found.add(s.kind))])
        return found

    vectorized = left = 0
    for gv, func in scheduled.functions.items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        ours = func.attrs is not None and "qcompiler.kernel" in func.attrs
        if tirx.ForKind.VECTORIZED in kinds(func) and not ours:
            vectorized += 1
        elif schedule_injective(fused[gv.name_hint]) is None:
            left += 1
    assert vectorized >= 5 and left >= 3, (vectorized, left)
    assert schedule_injective(next(f for f in scheduled.functions.values()
                                   if isinstance(f, tirx.PrimFunc) and f.attrs and "qcompiler.kernel" in f.attrs)) is None
    assert_bit_exact(qm, runtime, (x * 3,), "scheduled build")


def test_thread_count_is_planned_and_used(every_op):
    """compile_host(threads=n) tiles the conv kernels for n threads (output-channel splits)
    and runs on n threads; both builds equal the interpreter."""
    from qcompiler.targets.kernels.relax_call import kernel_info

    qm, x, _ = every_op
    splits = {}
    for n in (1, 2):
        runtime = compile_host(qm.program, (x,), threads=n)
        assert runtime.threads == n and f"{n} thread(s)" in repr(runtime)
        infos = [kernel_info(f) for f in runtime.mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
        splits[n] = max(i.get("osplit", 1) for i in infos if i)
        assert_bit_exact(qm, runtime, (x,), f"{n} thread(s)")
    assert splits[1] == 1 and splits[2] == 2
