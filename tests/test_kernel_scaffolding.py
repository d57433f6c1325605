"""The pieces every int8 kernel shares (targets/kernels: geometry, requantize constants and
their one validation, tile dispatch) and the intrinsic registry (targets/intrinsics)."""
import numpy as np
import pytest

pytest.importorskip("tvm")

from qcompiler.ops import conv2d as conv2d_op, linear as linear_op  # noqa: E402
from qcompiler.targets.intrinsics.registry import INTRINSICS, get_intrinsic, register_intrinsic  # noqa: E402
from qcompiler.targets.kernels import arm_epilogue, x86_epilogue  # noqa: E402
from qcompiler.targets.kernels.contract import ExactnessError, prepare_channels  # noqa: E402
from qcompiler.targets.kernels.geometry import conv_geometry  # noqa: E402
from qcompiler.targets.kernels.requant import RequantColumn, requant_params  # noqa: E402
from qcompiler.targets.kernels.tiling import PixelChunks  # noqa: E402

ENCODERS = {"x86": x86_epilogue.encode_requant_rows, "arm": arm_epilogue.encode_requant_rows}


@pytest.mark.parametrize("shape", [((1, 3, 17, 19), (8, 3, 3, 3), (2, 2), (1, 2, 0, 1), (1, 1), 1),
                                   ((2, 8, 9, 11), (12, 4, 3, 3), (2, 1), (1, 2), (1, 2), 2),
                                   ((1, 4, 13, 29), (4, 1, 5, 5), (3, 3), (2, 2), (2, 1), 4)])
def test_conv_geometry_matches_the_reference_conv(shape):
    x_shape, w_shape, stride, padding, dilation, groups = shape
    geom = conv_geometry(x_shape, w_shape, stride, padding, dilation, groups)
    x = np.zeros(x_shape, np.uint8)
    pad4 = padding if len(padding) == 4 else (padding[0], padding[0], padding[1], padding[1])
    x = np.pad(x, ((0, 0), (0, 0), pad4[:2], pad4[2:]))
    w = np.ones(w_shape, np.int8)
    ref = conv2d_op.reference(x, w, np.zeros(w_shape[0], np.int64), 0, stride, (0, 0), dilation, groups, 2**30, 31, 0, 0, 255)
    assert ref.shape == (x_shape[0], w_shape[0], geom.out_height, geom.out_width)
    assert (geom.padded_height, geom.padded_width) == x.shape[2:]


def test_conv_geometry_refuses_inconsistent_shapes_and_empty_outputs():
    with pytest.raises(ValueError, match="groups"):
        conv_geometry((1, 6, 8, 8), (4, 4, 3, 3), (1, 1), (0, 0), (1, 1), 2)
    with pytest.raises(ValueError, match="empty"):
        conv_geometry((1, 3, 2, 2), (4, 3, 3, 3), (1, 1), (0, 0), (1, 1), 1)


def _params(bias, mult=2**30, shift=40, out_zp=3):
    ch = prepare_channels(np.zeros((len(bias), 4), np.int8), np.array(bias), "uint8", 0, mult, shift, out_zp, 0, 255)
    return requant_params(ch, mult, shift, out_zp, "uint8")


@pytest.mark.parametrize("isa", ENCODERS)
def test_a_bias_of_minus_2_31_is_accepted_by_every_isa(isa):
    """−2^31 is an int32: the one validation accepts it, on x86 and on arm alike (the arm
    copy once refused it), and each ISA's row holds it as the accumulator's start."""
    params = _params([-(2**31), 5, 2**31 - 1])
    rows = ENCODERS[isa](params)
    assert rows.table.dtype == np.int32
    assert list(rows.table[:, RequantColumn.BIAS]) == [-(2**31), 5, 2**31 - 1]


def test_values_outside_what_every_epilogue_computes_are_refused():
    with pytest.raises(ExactnessError, match="fit in int32"):
        requant_params(_bias_out_of_range(), 2**30, 40, 0, "uint8")
    with pytest.raises(ExactnessError, match="shift"):
        _params([0], shift=63)
    with pytest.raises(ExactnessError, match="mult"):
        _params([0], mult=2**31)


def _bias_out_of_range():
    """Channels whose folded bias is −2^31 − 1 (one below int32)."""
    ch = prepare_channels(np.zeros((1, 4), np.int8), np.array([0]), "uint8", 0, 2**30, 40, 0, 0, 255)
    ch.bias = np.array([-(2**31) - 1], np.int64)
    return ch


def test_requant_rows_are_read_by_name_in_one_layout():
    params = _params([7, -9], mult=[2**30, 2**29], shift=[40, 35])
    x86, arm = ENCODERS["x86"](params), ENCODERS["arm"](params)
    for rows in (x86, arm):
        assert list(rows.table[:, RequantColumn.BIAS]) == [7, -9]
        assert list(rows.table[:, RequantColumn.MULTIPLIER]) == [2**30, 2**29]
        assert list(rows.table[:, RequantColumn.LO]) == [0, 0] and list(rows.table[:, RequantColumn.HI]) == [255, 255]
    assert list(x86.table[:, RequantColumn.SHIFT]) == [40 - 32, 35 - 32]  # vpsrad after the high half
    assert list(arm.table[:, RequantColumn.SHIFT]) == [-(40 - 31), -(35 - 31)]  # srshl after sqdmulh


def test_pixel_chunks_cover_every_pixel_once():
    """The tiles chunk_dispatch runs (full tiles of every chunk, then the last chunk's
    narrower one) start inside the pixels and cover each pixel exactly once."""
    for pixels, chunk, vectors, width in [(100, 64, 8, 8), (49, 56, 7, 8), (143, 32, 4, 4), (16, 16, 4, 4)]:
        chunks = PixelChunks(pixels, chunk, vectors, width)
        covered = []
        for index in range(chunks.count):
            last = index == chunks.count - 1
            tiles = [(vectors, t * chunks.tile_width) for t in range(chunks.last_full_tiles if last else chunks.full_tiles)]
            if last and chunks.last_remainder:
                tiles.append((chunks.last_remainder, chunks.last_full_tiles * chunks.tile_width))
            for nv, first in tiles:
                start = index * chunk + first
                assert start < pixels
                covered += [p for p in range(start, start + nv * width) if p < pixels]
        assert sorted(covered) == list(range(pixels)), (pixels, chunk, vectors)


def test_intrinsics_are_registered_once_by_name():
    sdot = get_intrinsic("arm_neon.sdot")
    assert sdot.llvm_name == "llvm.aarch64.neon.sdot.v4i32.v16i8" and "x86_avx2.pmaddwd" in INTRINSICS
    assert register_intrinsic(sdot.name, sdot.llvm_name, sdot.result, sdot.description, sdot.reference) is not None
    with pytest.raises(ValueError, match="already registered"):
        register_intrinsic("arm_neon.sdot", "llvm.other", "int32x4", "not sdot")
    with pytest.raises(KeyError, match="did you mean"):
        get_intrinsic("arm_neon.sdott")


def test_intrinsic_references_describe_their_lanes():
    rng = np.random.default_rng(0)
    a, b = rng.integers(-128, 128, 16).astype(np.int8), rng.integers(-128, 128, 16).astype(np.int8)
    acc = rng.integers(-1000, 1000, 4).astype(np.int32)
    expect = acc + np.array([sum(int(a[4 * l + j]) * int(b[4 * l + j]) for j in range(4)) for l in range(4)])
    assert np.array_equal(get_intrinsic("arm_neon.sdot").reference(acc, a, b), expect)
    a16, b16 = rng.integers(-32768, 32768, 16).astype(np.int16), rng.integers(-128, 128, 16).astype(np.int16)
    pairs = [int(a16[2 * i]) * int(b16[2 * i]) + int(a16[2 * i + 1]) * int(b16[2 * i + 1]) for i in range(8)]
    assert list(get_intrinsic("x86_avx2.pmaddwd").reference(a16, b16)) == pairs
