import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from qcompiler import SchemeError, activation_spec, host_scheme, weight_spec
from qcompiler.observers import ActivationObserver, CalibrationError, fake_quantize, qparams_from_range
from qcompiler.scheme import QuantSpec


@pytest.mark.parametrize("bits", [1, 9, 0, 16])
def test_weight_bits_outside_2_to_8_are_refused(bits):
    with pytest.raises(SchemeError, match=f"weight bits must be .*2–8.*got {bits}"):
        host_scheme().with_bits(weight_bits=bits)


@pytest.mark.parametrize("bits", [4, 12, 32])
def test_activation_bits_other_than_8_or_16_are_refused(bits):
    with pytest.raises(SchemeError, match=f"activation bits must be.*got {bits}"):
        host_scheme().with_bits(activation_bits=bits)


def test_spec_ranges_and_dtypes():
    assert (weight_spec(8).qmin, weight_spec(8).qmax, weight_spec(8).dtype) == (-127, 127, torch.int8)
    assert (weight_spec(4).qmin, weight_spec(4).qmax, weight_spec(4).dtype) == (-7, 7, torch.int8)
    assert (activation_spec(8).qmin, activation_spec(8).qmax, activation_spec(8).dtype) == (0, 255, torch.uint8)
    assert (activation_spec(16).qmin, activation_spec(16).qmax, activation_spec(16).dtype) == (-32768, 32767, torch.int16)
    with pytest.raises(SchemeError, match="symmetric quantization needs signed storage"):
        QuantSpec(bits=8, signed=False, symmetric=True)
    with pytest.raises(SchemeError, match="group_size"):
        QuantSpec(granularity="group")


specs = st.sampled_from([activation_spec(8), activation_spec(8, signed=True), activation_spec(16), weight_spec(8), weight_spec(4), weight_spec(2)])
finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False)


@given(specs, finite, finite)
def test_qparams_make_zero_exact_and_cover_the_range(spec, a, b):
    lo, hi = min(a, b), max(a, b)
    scale, zp = qparams_from_range(lo, hi, spec)
    assert scale > 0 and math.isfinite(scale)
    assert spec.qmin <= zp <= spec.qmax
    assert float(fake_quantize(torch.tensor(0.0), scale, zp, spec)) == 0.0
    if spec.symmetric:
        assert zp == 0
    # the ends of the range are within half a step (plus zero widening)
    for x in (min(lo, 0.0), max(hi, 0.0)):
        assert abs(float(fake_quantize(torch.tensor(x, dtype=torch.float64), scale, zp, spec)) - x) <= scale * 0.5 + 1e-9 * abs(x)


def test_constant_activation_gets_a_valid_scale():
    obs = ActivationObserver(activation_spec(8), "minmax", "node_x")
    obs(torch.zeros(4, 4))
    scale, zp = obs.qparams()
    assert scale > 0 and float(fake_quantize(torch.zeros(3), scale, zp, obs.spec).abs().max()) == 0.0
    obs = ActivationObserver(activation_spec(8), "mse", "node_y")
    obs(torch.full((10,), 2.5))
    scale, zp = obs.qparams()
    assert abs(float(fake_quantize(torch.tensor(2.5), scale, zp, obs.spec)) - 2.5) <= scale / 2


def test_nan_in_activation_names_the_node():
    obs = ActivationObserver(activation_spec(8), "minmax", "convolution_3")
    with pytest.raises(CalibrationError, match="NaN in the output of node 'convolution_3'"):
        obs(torch.tensor([1.0, float("nan")]))


def observed_error(x, method):
    obs = ActivationObserver(activation_spec(8), method, "n")
    obs(x)
    s, z = obs.qparams()
    return float(((fake_quantize(x, s, z, obs.spec) - x) ** 2).mean())


def test_mse_is_never_worse_than_minmax_even_with_one_far_outlier():
    torch.manual_seed(0)
    x = torch.cat([torch.randn(100_000), torch.tensor([60.0])])  # the outlier must stay in the sample
    assert observed_error(x, "mse") <= observed_error(x, "minmax")


@pytest.mark.parametrize("dist", [torch.distributions.Laplace(0.0, 1.0), torch.distributions.StudentT(4.0)])
def test_mse_clipping_beats_minmax_on_heavy_tails(dist):
    torch.manual_seed(0)
    x = dist.sample((200_000,))
    assert observed_error(x, "mse") < 0.9 * observed_error(x, "minmax")


def test_percentile_range_lies_inside_the_observed_range():
    torch.manual_seed(0)
    x = torch.randn(50_000)
    obs = ActivationObserver(activation_spec(8), "percentile", "n", percentile=99.0)
    obs(x)
    lo, hi = obs.range()
    assert float(x.min()) < lo < -2.0 and 2.0 < hi < float(x.max())
