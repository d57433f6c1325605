"""targets/kernels/x86.py: the exact AVX2 int8 kernels against the op references (qcompiler.ops), bit for bit.

Each case builds one kernel (about 0.1-0.3 s) for the host and runs it on random and on
extreme operands: pointwise, im2col (3x3 s1/s2, padding, dilation, groups), depthwise
(3x3 / 5x5, stride 1/2/3, both layouts, channel multiplier), dense; sizes that are not
multiples of any tile; both requantize epilogues (32-bit "fast" and int64), clamped and
saturating stores, uint8 and int8 on both sides.
"""
import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from qcompiler.ops import conv2d as conv2d_op, linear as linear_op  # noqa: E402
from qcompiler.fixed_point import quantize_multipliers  # noqa: E402
from qcompiler.targets.host import host_target  # noqa: E402
from qcompiler.targets.kernels import x86 as K  # noqa: E402

from kernel_operands import dtype_range, operands  # noqa: E402


@pytest.fixture(scope="module")
def target():
    try:
        return K.check_target(host_target())
    except ValueError as exc:
        pytest.skip(str(exc))


def _run(func, consts, x, out_shape, out_dtype, target):
    ex = tvm.compile(func, target)
    out = tvm.runtime.tensor(np.zeros(out_shape, out_dtype))
    ex(tvm.runtime.tensor(np.ascontiguousarray(x)), *[tvm.runtime.tensor(c) for c in consts], out)
    return ex, out


def _check_conv(target, x_shape, w_shape, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1, x_dtype="uint8",
                out_dtype="uint8", shift_kind="fast", full_range=False, seed=0, plan=None, dw_opts=None, extremes=True,
                kind=None, u8s8=None):
    rng = np.random.default_rng(seed)
    o = w_shape[0]
    k = int(np.prod(w_shape[1:]))
    xmin, xmax = dtype_range(x_dtype)
    w = rng.integers(-127, 128, w_shape).astype(np.int8)
    p = operands(rng, o, k, x_dtype, out_dtype, shift_kind, full_range)
    func, consts = K.conv2d_requant_primfunc(x_shape, x_dtype, w, p["bias"], p["x_zp"], stride, padding, dilation, groups,
                                             p["mult"], p["shift"], p["out_zp"], p["lo"], p["hi"], out_dtype, target,
                                             plan=plan, dw_opts=dw_opts, u8s8=u8s8)
    info = K.kernel_info(func)
    if kind is not None:
        assert info["kind"] == kind, info
    ex = tvm.compile(func, target)
    inputs = [rng.integers(xmin, xmax + 1, x_shape)]
    if extremes:
        inputs += [np.full(x_shape, xmax), np.full(x_shape, xmin)]
    for x in inputs:
        x = x.astype(x_dtype)
        ref_x, ref_padding = x, padding
        if len(padding) == 4:  # (top, bottom, left, right): an explicit zero-point pad before the conv
            top, bottom, left, right = padding
            ref_x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=p["x_zp"])
            ref_padding = (0, 0)
        ref = conv2d_op.reference(ref_x, w, p["bias"], p["x_zp"], stride, ref_padding, dilation, groups, p["mult"],
                             p["shift"], p["out_zp"], p["lo"], p["hi"]).astype(out_dtype)
        out = tvm.runtime.tensor(np.zeros(ref.shape, out_dtype))
        ex(tvm.runtime.tensor(x), *[tvm.runtime.tensor(c) for c in consts], out)
        got = out.numpy()
        assert got.shape == ref.shape
        bad = got != ref
        assert not bad.any(), f"{info}: {int(bad.sum())} of {bad.size} outputs differ (first at {np.argwhere(bad)[0]})"
    return info


# ---------------------------------------------------------------- pointwise / GEMM


U8S8 = pytest.mark.parametrize("u8s8", [True, False], ids=["u8s8", "int16"])  # the opt-in vpmaddubsw kernel, and the default


@U8S8
def test_pointwise_auto_plan(target, u8s8):
    _check_conv(target, (1, 16, 12, 13), (96, 16, 1, 1), kind="pointwise_u8s8" if u8s8 else "pointwise", u8s8=u8s8)


def test_pointwise_odd_sizes_int8_mixed_shifts(target):
    _check_conv(target, (2, 5, 3, 7), (7, 5, 1, 1), x_dtype="int8", out_dtype="int8", shift_kind="mixed",
                kind="pointwise")


@U8S8
def test_pointwise_reduction_blocks_and_remainders(target, u8s8):
    # K = 601 (odd, several reduction blocks), O = 37, P = 49: every remainder path
    info = _check_conv(target, (1, 601, 7, 7), (37, 601, 1, 1), plan=K.GemmPlan(2, 5, 0, 64, 0), full_range=True,
                       u8s8=u8s8)
    assert info["nkb"] > 1


@U8S8
def test_pointwise_many_chunks_osplit(target, u8s8):
    plan = K.GemmPlan(6, 2, 32, 4 if u8s8 else 8, 3)  # kb counts quads in u8s8, pairs otherwise
    info = _check_conv(target, (1, 24, 19, 23), (50, 24, 1, 1), plan=plan, shift_kind="small", u8s8=u8s8)
    assert info["osplit"] == 3 and info["nkb"] > 1


def test_u8s8_splits_exactly_the_pairs_that_could_saturate(target):
    """vpmaddubsw sums u8×s8 pairs into saturating int16: a weight pair is kept whole only
    when its same-sign magnitudes sum to at most 128 (255·128 fits int16, 255·129 does
    not); every other pair is split into two safe halves. At the boundary, with x = 255
    everywhere, the kernel is exact."""
    from qcompiler.targets.kernels.x86_u8s8 import quad_entries

    w = np.array([[64, 64, -64, -64, 65, 64, 0, 0, 127, -128, 0, 0]], np.int8)  # quads: safe, split, safe
    index, weights, offsets, _ = quad_entries(w, kb=8)
    assert list(index[0, :offsets[0, -1]]) == [0, 1, 1, 2]
    halves = weights[0, 1:3].view(np.int8).reshape(2, 4)
    assert (halves.sum(0) == w[0, 4:8]).all() and (np.abs(halves[:, :2]).sum(1) <= 128).all()
    for sign in (1, -1):
        x_shape, o = (1, 12, 3, 5), 1
        x = np.full(x_shape, 255, np.uint8)
        ww = (w.astype(np.int64) * sign).reshape(1, 12, 1, 1).clip(-128, 127).astype(np.int8)
        mult, shift = np.full(o, 2**30), np.full(o, 40)
        ref = conv2d_op.reference(x, ww, np.zeros(o), 0, (1, 1), (0, 0), (1, 1), 1, mult, shift, 0, 0, 255)
        func, consts = K.conv2d_requant_primfunc(x_shape, "uint8", ww, np.zeros(o), 0, (1, 1), (0, 0), (1, 1), 1, mult,
                                                 shift, 0, 0, 255, "uint8", target, u8s8=True)
        assert K.kernel_info(func)["kind"] == "pointwise_u8s8"
        _, out = _run(func, consts, x, ref.shape, "uint8", target)
        assert np.array_equal(out.numpy(), ref)


def test_conv3x3_s1_padded(target):
    _check_conv(target, (1, 5, 11, 13), (7, 5, 3, 3), padding=(1, 1), kind="im2col")


def test_stem_3x3_s2(target):
    _check_conv(target, (1, 3, 33, 35), (32, 3, 3, 3), stride=(2, 2), full_range=True, kind="im2col")


def test_grouped_strided_dilated_int8(target):
    _check_conv(target, (2, 8, 9, 11), (12, 4, 3, 3), stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2,
                x_dtype="int8", out_dtype="int8", shift_kind="mixed", kind="im2col")


def test_conv_stride3_uint8_to_int8(target):
    _check_conv(target, (1, 6, 14, 17), (9, 6, 2, 3), stride=(3, 3), padding=(2, 1), out_dtype="int8", kind="im2col")


# ---------------------------------------------------------------- depthwise


@pytest.mark.parametrize("x_shape,k,stride,padding,layout", [
    ((1, 6, 20, 37), 3, 1, 0, "rows"),
    ((1, 5, 11, 11), 5, 1, 0, "flat"),
    ((1, 4, 21, 23), 3, 2, 1, None),
    ((1, 3, 17, 19), 5, 2, 2, None),
])
def test_depthwise(target, x_shape, k, stride, padding, layout):
    c = x_shape[1]
    info = _check_conv(target, x_shape, (c, 1, k, k), stride=(stride, stride), padding=(padding, padding), groups=c,
                       dw_opts={"layout": layout} if layout else None, kind="depthwise")
    if layout:
        assert info["layout"] == layout


def test_depthwise_dilated_multiplier_int8(target):
    # channel multiplier 2, dilation 2 (unpaired taps), stride (2, 1), int8 in and out, int64 epilogue
    _check_conv(target, (2, 3, 13, 17), (6, 1, 3, 3), stride=(2, 1), padding=(2, 1), dilation=(2, 2), groups=3,
                x_dtype="int8", out_dtype="int8", shift_kind="mixed", kind="depthwise")


@pytest.mark.parametrize("layout", ["rows", "flat"])
def test_depthwise_wide_dilation(target, layout):
    # unpaired taps (horizontal dilation 3) on both stride-1 layouts
    _check_conv(target, (1, 4, 20, 30), (4, 1, 3, 5), padding=(2, 3), dilation=(2, 3), groups=4,
                dw_opts={"layout": layout}, kind="depthwise")


@pytest.mark.parametrize("x_shape,w_shape,stride,padding,dw_opts", [
    ((1, 6, 20, 22), (6, 1, 3, 3), 2, (0, 1, 0, 1), None),       # TF "same", stride 2 (EfficientNet-Lite0)
    ((1, 4, 19, 21), (4, 1, 5, 5), 2, (1, 2, 1, 2), None),
    ((1, 5, 12, 37), (5, 1, 3, 3), 1, (2, 0, 0, 1), {"layout": "rows"}),
    ((1, 5, 9, 11), (5, 1, 3, 3), 1, (0, 2, 1, 0), {"layout": "flat"}),
    ((1, 4, 13, 16), (4, 1, 3, 5), 3, (1, 0, 2, 1), None),       # generic stride
    ((1, 3, 23, 25), (8, 3, 3, 3), 2, (0, 1, 0, 1), None),       # im2col stem
])
def test_asymmetric_padding(target, x_shape, w_shape, stride, padding, dw_opts):
    # a zero-point constant_pad_nd taken into the kernel: (top, bottom, left, right)
    groups = x_shape[1] if w_shape[1] == 1 else 1
    _check_conv(target, x_shape, w_shape, stride=(stride, stride), padding=padding, groups=groups, dw_opts=dw_opts,
                kind="depthwise" if groups > 1 else "im2col")


def test_depthwise_generic_stride(target):
    _check_conv(target, (1, 4, 13, 16), (4, 1, 3, 5), stride=(3, 3), padding=(1, 2), groups=4, kind="depthwise")


# ---------------------------------------------------------------- dense


@pytest.mark.parametrize("x_shape,o,x_dtype,out_dtype,shift_kind", [
    ((1, 1280), 1000, "uint8", "uint8", "fast"),
    ((2, 3, 37), 45, "int8", "int8", "mixed"),
    ((5, 64), 13, "uint8", "int8", "small"),
])
def test_dense(target, x_shape, o, x_dtype, out_dtype, shift_kind):
    rng = np.random.default_rng(1)
    k = x_shape[-1]
    xmin, xmax = dtype_range(x_dtype)
    w = rng.integers(-127, 128, (o, k)).astype(np.int8)
    p = operands(rng, o, k, x_dtype, out_dtype, shift_kind)
    func, consts = K.linear_requant_primfunc(x_shape, x_dtype, w, p["bias"], p["x_zp"], p["mult"], p["shift"], p["out_zp"],
                                             p["lo"], p["hi"], out_dtype, target)
    assert K.kernel_info(func)["kind"] == "dense"
    ex = tvm.compile(func, target)
    for x in (rng.integers(xmin, xmax + 1, x_shape), np.full(x_shape, xmax), np.full(x_shape, xmin)):
        x = x.astype(x_dtype)
        ref = linear_op.reference(x, w, p["bias"], p["x_zp"], p["mult"], p["shift"], p["out_zp"], p["lo"], p["hi"])
        out = tvm.runtime.tensor(np.zeros(ref.shape, out_dtype))
        ex(tvm.runtime.tensor(x), *[tvm.runtime.tensor(c) for c in consts], out)
        assert np.array_equal(out.numpy(), ref)


# ---------------------------------------------------------------- extremes and exactness limits


@U8S8
@pytest.mark.parametrize("sign", [1, -1])
def test_worst_case_accumulation(target, sign, u8s8):
    """x all 255 (or all 0 with z = 255) against weights all ±127 over a long reduction: the
    largest |Σ (x − z)·w| the int32 accumulator must hold; any vpmaddubsw-style saturation
    or int16 overflow would show."""
    c, o = 1152, 24
    w = np.full((o, c, 1, 1), 127 * sign, np.int8)
    w[1::2] *= -1
    x_shape = (1, c, 5, 6)
    bias = np.zeros(o, np.int64)
    mult, shift = np.full(o, 2**31 - 1), np.full(o, 50)
    for x_val, x_zp in ((255, 0), (0, 255), (255, 255), (200, 3)):
        x = np.full(x_shape, x_val, np.uint8)
        ref = conv2d_op.reference(x, w, bias, x_zp, (1, 1), (0, 0), (1, 1), 1, mult, shift, 128, 0, 255)
        func, consts = K.conv2d_requant_primfunc(x_shape, "uint8", w, bias, x_zp, (1, 1), (0, 0), (1, 1), 1, mult, shift,
                                                 128, 0, 255, "uint8", target, u8s8=u8s8)
        _, out = _run(func, consts, x, ref.shape, "uint8", target)
        assert np.array_equal(out.numpy(), ref), (x_val, x_zp)
        if x_val != x_zp:
            assert len(np.unique(ref)) > 1  # the case is not trivially saturated


def test_depthwise_extremes(target):
    c = 8
    w = np.full((c, 1, 5, 5), 127, np.int8)
    w[::2] = -127
    x_shape = (1, c, 12, 12)
    mult, shift = np.full(c, 2**30 + 12345), np.full(c, 45)
    for x_val, x_zp in ((255, 0), (0, 255)):
        x = np.full(x_shape, x_val, np.uint8)
        ref = conv2d_op.reference(x, w, np.zeros(c), x_zp, (1, 1), (2, 2), (1, 1), c, mult, shift, 100, 0, 255)
        func, consts = K.conv2d_requant_primfunc(x_shape, "uint8", w, np.zeros(c), x_zp, (1, 1), (2, 2), (1, 1), c, mult,
                                                 shift, 100, 0, 255, "uint8", target)
        _, out = _run(func, consts, x, ref.shape, "uint8", target)
        assert np.array_equal(out.numpy(), ref)


def test_accumulator_bound_is_checked(target):
    """A channel whose sum could leave int32 and whose output is not provably constant is
    refused (the caller keeps its default lowering)."""
    w = np.full((4, 70000, 1, 1), 127, np.int8)  # 70000·255·127 > 2^31
    with pytest.raises(K.ExactnessError):
        K.conv2d_requant_primfunc((1, 70000, 1, 1), "uint8", w, np.zeros(4), 0, (1, 1), (0, 0), (1, 1), 1, 2**30, 40, 0, 0,
                                  255, "uint8", target)
    with pytest.raises(K.ExactnessError):  # bias near the int32 limit, output 0 or 1 depending on x
        K.conv2d_requant_primfunc((1, 8, 2, 2), "uint8", np.ones((4, 8, 1, 1), np.int8), np.full(4, 2**31 - 100), 0,
                                  (1, 1), (0, 0), (1, 1), 1, 2**30, 62, 0, 0, 255, "uint8", target)


@pytest.mark.parametrize("kind,epilogue", [("pointwise", "fast"), ("depthwise", "fast"), ("im2col", "int64"),
                                           ("dense", "fast"), ("dense", "int64")])
def test_saturated_bias_channels(target, kind, epilogue):
    """Biases saturated to ±2^31 by quantization (EfficientNet-Lite0 has such dead channels):
    the true sum leaves int32, but the output is one constant for every input, so those
    channels are made constant and the kernel stays exact."""
    rng = np.random.default_rng(3)
    o, c = 16, 16
    x_shape = {"pointwise": (1, c, 6, 7), "depthwise": (1, c, 9, 9), "im2col": (1, c, 8, 8), "dense": (2, c * 4)}[kind]
    w_shape = {"pointwise": (o, c, 1, 1), "depthwise": (o, 1, 3, 3), "im2col": (o, c, 3, 3), "dense": (o, c * 4)}[kind]
    w = rng.integers(-127, 128, w_shape).astype(np.int8)
    bias = rng.integers(-5000, 5000, o)
    bias[[1, 6]] = -(2**31)
    bias[[3]] = 2**31 - 1
    mult, shift = quantize_multipliers(rng.uniform(1e-4, 1e-3, o) if epilogue == "fast" else rng.uniform(0.3, 3, o))
    x_zp, out_zp = 120, 7
    x = rng.integers(0, 256, x_shape).astype(np.uint8)
    if kind == "dense":
        func, consts = K.linear_requant_primfunc(x_shape, "uint8", w, bias, x_zp, mult, shift, out_zp, 0, 255, "uint8",
                                                 target)
        ref = linear_op.reference(x, w, bias, x_zp, mult, shift, out_zp, 0, 255)
    else:
        groups = c if kind == "depthwise" else 1
        func, consts = K.conv2d_requant_primfunc(x_shape, "uint8", w, bias, x_zp, (1, 1), (0, 0), (1, 1), groups, mult,
                                                 shift, out_zp, 0, 255, "uint8", target)
        ref = conv2d_op.reference(x, w, bias, x_zp, (1, 1), (0, 0), (1, 1), groups, mult, shift, out_zp, 0, 255)
    assert K.kernel_info(func)["epilogue"] == epilogue
    _, out = _run(func, consts, x, ref.shape, "uint8", target)
    assert np.array_equal(out.numpy(), ref)
    assert kind == "dense" or (ref[:, 1] == 0).all() and (ref[:, 3] == 255).all()


@pytest.mark.parametrize("kind", ["pointwise", "depthwise", "dense"])
def test_a_bias_of_minus_2_31_is_exact_not_refused(target, kind):
    """A folded bias of exactly −2^31 (a dead channel: zero weights) is a valid int32 start
    of the accumulator: the kernel takes it (the arm kernels too, tests/test_arm_int8.py)."""
    rng = np.random.default_rng(5)
    o = c = 8
    x_shape = {"pointwise": (1, c, 5, 6), "depthwise": (1, c, 7, 7), "dense": (2, c * 4)}[kind]
    w_shape = {"pointwise": (o, c, 1, 1), "depthwise": (o, 1, 3, 3), "dense": (o, c * 4)}[kind]
    w = rng.integers(-127, 128, w_shape).astype(np.int8)
    w[2] = 0
    bias = rng.integers(-5000, 5000, o)
    bias[2] = -(2**31)
    mult, shift = quantize_multipliers(rng.uniform(1e-4, 1e-3, o))
    x = rng.integers(0, 256, x_shape).astype(np.uint8)
    if kind == "dense":
        func, consts = K.linear_requant_primfunc(x_shape, "uint8", w, bias, 0, mult, shift, 0, 0, 255, "uint8", target)
        ref = linear_op.reference(x, w, bias, 0, mult, shift, 0, 0, 255)
    else:
        groups = c if kind == "depthwise" else 1
        func, consts = K.conv2d_requant_primfunc(x_shape, "uint8", w, bias, 0, (1, 1), (0, 0), (1, 1), groups, mult,
                                                 shift, 0, 0, 255, "uint8", target)
        ref = conv2d_op.reference(x, w, bias, 0, (1, 1), (0, 0), (1, 1), groups, mult, shift, 0, 0, 255)
    _, out = _run(func, consts, x, ref.shape, "uint8", target)
    assert np.array_equal(out.numpy(), ref)


def test_requant_bounds_outside_dtype_refused(target):
    with pytest.raises(K.ExactnessError):
        K.conv2d_requant_primfunc((1, 8, 2, 2), "uint8", np.ones((4, 8, 1, 1), np.int8), np.zeros(4), 0, (1, 1), (0, 0),
                                  (1, 1), 1, 2**30, 40, 0, -5, 255, "uint8", target)


# ---------------------------------------------------------------- in a Relax program


def test_relax_call_tir_chain(target):
    """Three kernels chained by emit_call_tir in one Relax function, built with the default
    Relax pipeline: the calling convention and the constants work end to end."""
    from tvm import relax

    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (1, 16, 9, 9)).astype(np.uint8)
    w1 = rng.integers(-127, 128, (24, 16, 1, 1)).astype(np.int8)
    w2 = rng.integers(-127, 128, (24, 1, 3, 3)).astype(np.int8)
    w3 = rng.integers(-127, 128, (10, 24 * 9 * 9)).astype(np.int8)
    m1, s1 = quantize_multipliers(rng.uniform(1e-3, 1e-2, 24) / 4)
    m3, s3 = quantize_multipliers(rng.uniform(1e-3, 1e-2, 10) / 40)
    b1, b2, b3 = rng.integers(-999, 999, 24), rng.integers(-999, 999, 24), rng.integers(-999, 999, 10)
    f1, c1 = K.conv2d_requant_primfunc(x.shape, "uint8", w1, b1, 5, (1, 1), (0, 0), (1, 1), 1, m1, s1, 7, 0, 255, "uint8",
                                       target)
    f2, c2 = K.conv2d_requant_primfunc((1, 24, 9, 9), "uint8", w2, b2, 7, (1, 1), (1, 1), (1, 1), 24, m1, s1, 9, 3, 250,
                                       "uint8", target)
    f3, c3 = K.linear_requant_primfunc((1, 24 * 9 * 9), "uint8", w3, b3, 9, m3, s3, 4, 0, 255, "uint8", target)
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, "uint8"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            y = K.emit_call_tir(bb, f1, c1, xv)
            y = K.emit_call_tir(bb, f2, c2, y)
            y = bb.emit(relax.op.reshape(y, (1, 24 * 9 * 9)))
            y = bb.emit_output(K.emit_call_tir(bb, f3, c3, y))
        bb.emit_func_output(y)
    vm = relax.VirtualMachine(tvm.compile(bb.get(), target), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    r = conv2d_op.reference(x, w1, b1, 5, (1, 1), (0, 0), (1, 1), 1, m1, s1, 7, 0, 255)
    r = conv2d_op.reference(r, w2, b2, 7, (1, 1), (1, 1), (1, 1), 24, m1, s1, 9, 3, 250)
    r = linear_op.reference(r.reshape(1, -1), w3, b3, 9, m3, s3, 4, 0, 255)
    assert np.array_equal(got, r)
