"""Quantization parameters as tensors (qcompiler.qparams): every quantizer of the simulation
reads its scale and zero point from buffers, per tensor, per channel or per group along any
axis; the simulation, the integer conversion and the encodings read them the same way."""
import pytest
import torch
import torch.fx as fx
import torch.nn as nn

import qcompiler
from qcompiler import QuantScheme, SchemeError, activation_spec, weight_spec
from qcompiler.agreement import simulation_codes
from qcompiler.encodings import encodings
from qcompiler.errors import ConversionError, PassError
from qcompiler.graph import clone_graph, get_tensor, set_tensor
from qcompiler.integer import to_integer_program
from qcompiler.layers import quant_layers
from qcompiler.observers import qparams_from_range
from qcompiler.qparams import EXPAND_GROUPS, is_dequantize, is_quantize, read_qparams

qd = torch.ops.quantized_decomposed


class ConvBlock(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(4, 8, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


class TokenBlock(nn.Module):
    """[batch, tokens, 16] → [batch, tokens, 8]: the shape of a transformer's hidden states."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(16, 8)

    def forward(self, x):
        return self.fc(x)


def conv_input():
    torch.manual_seed(1)
    return torch.randn(2, 4, 10, 10) * torch.tensor([0.1, 1.0, 3.0, 10.0]).reshape(1, 4, 1, 1)


def token_input():
    torch.manual_seed(2)
    return torch.randn(2, 5, 16) * torch.linspace(0.1, 8.0, 16)


def quantizer_of(gm: fx.GraphModule, value: str) -> fx.Node:
    return next(n for n in gm.graph.nodes if is_quantize(n) and n.args[0].name == value)


def test_every_activation_quantizer_reads_float64_buffers_and_they_are_live():
    x = conv_input()
    qm = qcompiler.quantize(ConvBlock().eval(), x)
    sim = qm.graph
    quantizers = [n for n in sim.graph.nodes if is_quantize(n)]
    assert quantizers
    assert not [name for name, _ in sim.named_children() if name.startswith(qcompiler.meta.OBSERVER_PREFIX)]  # shared ones too
    for q in quantizers:
        scale, zp = q.args[1], q.args[2]
        assert scale.op == "get_attr" and zp.op == "get_attr", q.name
        assert get_tensor(sim, scale).dtype == torch.float64 and get_tensor(sim, zp).dtype == torch.int64
        assert qm.qparams[q.args[0].name].scalar() == (get_tensor(sim, scale).item(), get_tensor(sim, zp).item())
    # the buffer is the parameter: a new value changes what the simulation computes
    xq = quantizer_of(sim, "x")
    s, z = qm.qparams["x"].scalar()
    set_tensor(sim, xq.args[1].target, torch.tensor([2 * s], dtype=torch.float64), keep_dtype=True)
    codes = simulation_codes(sim, (x,))
    expected = qd.quantize_per_tensor.default(x, 2 * s, z, xq.args[3], xq.args[4], xq.args[5])
    assert torch.equal(torch.from_numpy(codes[xq.name]).to(expected.dtype), expected)
    assert qm.qparams["x"].scalar() == (2 * s, z)


def _as_float_arguments(sim: fx.GraphModule) -> fx.GraphModule:
    """The simulation with every per-tensor quantizer written as PT2E writes it: the scale
    and zero point as float and int arguments."""
    gm = clone_graph(sim)
    for node in list(gm.graph.nodes):
        if node.target in (qd.quantize_per_tensor.tensor, qd.dequantize_per_tensor.tensor):
            p = read_qparams(gm, node)
            scale, zp = p.scalar()
            target = qd.quantize_per_tensor.default if is_quantize(node) else qd.dequantize_per_tensor.default
            node.target = target
            node.args = (node.args[0], scale, zp, *node.args[3:])
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


def _program_text(program: fx.GraphModule) -> list:
    def show(a):
        if isinstance(a, fx.Node) and a.op == "get_attr":
            t = get_tensor(program, a)
            return (str(t.dtype), tuple(t.shape), t.flatten().tolist())
        return a.name if isinstance(a, fx.Node) else a
    return [(n.op, str(n.target), fx.node.map_aggregate(n.args, show)) for n in program.graph.nodes]


@pytest.mark.parametrize("bits", [8, 4])
def test_buffers_give_the_same_integer_program_as_float_arguments(bits):
    x = conv_input()
    qm = qcompiler.quantize(ConvBlock().eval(), x, bits=bits)
    as_buffers = to_integer_program(qm.graph)
    as_arguments = to_integer_program(_as_float_arguments(qm.graph))
    assert _program_text(as_buffers) == _program_text(as_arguments)
    assert encodings(qm.graph) == encodings(_as_float_arguments(qm.graph))


def test_per_channel_activations_get_one_minmax_range_per_channel():
    x = conv_input()
    spec = activation_spec(granularity="channel", axis=1)
    qm = qcompiler.quantize(ConvBlock().eval(), x, overrides={"x": {"activations": spec}})
    p = qm.qparams["x"]
    assert (p.granularity, p.axis, p.scale.numel()) == ("channel", 1, 4)
    lo, hi = x.amin(dim=(0, 2, 3)), x.amax(dim=(0, 2, 3))
    for c in range(4):
        s, z = qparams_from_range(float(lo[c]), float(hi[c]), spec)
        assert float(p.scale[c]) == pytest.approx(s, rel=1e-7) and int(p.zero_point[c]) == z
    assert float(p.scale[3]) > 50 * float(p.scale[0])  # the channels' ranges differ by 100x
    # the simulation quantizes with torch's per-channel op on those tensors
    xq = quantizer_of(qm.graph, "x")
    assert xq.target == qd.quantize_per_channel.default
    codes = simulation_codes(qm.graph, (x,))[xq.name]
    expected = qd.quantize_per_channel.default(x, p.scale.float(), p.zero_point, 1, p.qmin, p.qmax, p.dtype)
    assert torch.equal(torch.from_numpy(codes).to(expected.dtype), expected)
    # the pool after the relu is not given the input's per-channel parameters; the conv's output is its own
    assert qm.qparams["relu"].per_tensor
    enc = encodings(qm.graph)["activations"]["x"]
    assert (enc["granularity"], enc["axis"], len(enc["scales"])) == ("channel", 1, 4)
    assert enc["scales"] == p.scale.double().tolist() and enc["zero_points"] == p.zero_point.tolist()


def test_per_group_activations_along_the_last_axis_share_a_range_per_group():
    x = token_input()
    spec = activation_spec(granularity="group", axis=-1, group_size=4)
    qm = qcompiler.quantize(TokenBlock().eval(), x, overrides={"x": {"activations": spec}})
    p = qm.qparams["x"]
    assert (p.granularity, p.axis, p.group_size, p.scale.numel()) == ("group", 2, 4, 4)
    groups = x.reshape(-1, 4, 4)
    for g in range(4):
        s, z = qparams_from_range(float(groups[:, g].min()), float(groups[:, g].max()), spec)
        assert float(p.scale[g]) == pytest.approx(s, rel=1e-7) and int(p.zero_point[g]) == z
    # stored once per group (a QAT pass learns 4 scales), expanded to the 16 channels in the graph
    xq = quantizer_of(qm.graph, "x")
    expand = xq.args[1]
    assert expand.target == EXPAND_GROUPS and get_tensor(qm.graph, expand.args[0]).shape == (4,)
    scales, zps = p.channel_scales(16)
    codes = simulation_codes(qm.graph, (x,))[xq.name]
    expected = qd.quantize_per_channel.default(x, scales.float(), zps, 2, p.qmin, p.qmax, p.dtype)
    assert torch.equal(torch.from_numpy(codes).to(expected.dtype), expected)
    enc = encodings(qm.graph)["activations"]["x"]
    assert (enc["granularity"], enc["group_size"], enc["axis"], len(enc["scales"])) == ("group", 4, 2, 4)
    # the straight-through simulation reads the same parameters
    torch.testing.assert_close(qm.trainable()(x), qm.simulate(x), atol=1e-5, rtol=0)


def test_the_integer_program_says_which_value_is_not_quantized_per_tensor():
    x = token_input()
    spec = activation_spec(granularity="group", axis=-1, group_size=4)
    qm = qcompiler.quantize(TokenBlock().eval(), x, overrides={"x": {"activations": spec}})
    with pytest.raises(ConversionError, match=r"x.*per group along axis 2.*per-tensor"):
        qm.program


def test_weights_per_group_of_output_channels_compile_exactly():
    x = conv_input()
    scheme = QuantScheme(weights=weight_spec(granularity="group", group_size=2))
    qm = qcompiler.quantize(ConvBlock().eval(), x, scheme=scheme)
    conv = next(layer for layer in quant_layers(qm.graph) if layer.name == "convolution")
    params = conv.weight_params(qm.graph)
    assert (params.granularity, params.axis, params.scale.numel()) == ("group", 0, 4)
    scales = conv.weight_scales(qm.graph)
    assert torch.equal(scales[0::2], scales[1::2]) and not torch.equal(scales[0::2], scales[0::2].roll(1))
    w = conv.float_weight()
    for g in range(4):
        amax = float(w[2 * g:2 * g + 2].abs().max())
        assert float(scales[2 * g]) == pytest.approx(amax / 127, rel=1e-6)
    assert encodings(qm.graph)["weights"]["convolution"]["group_size"] == 2
    assert max(row.max_diff for row in qm.compare_ops(x)) <= 1
    cm = qm.compile("host")
    for probe in (x, 3 * torch.randn_like(x)):
        assert torch.equal(cm(probe), qm.interpret(probe))


def test_bad_granularity_settings_are_clear_errors():
    x, model = token_input(), TokenBlock().eval()
    with pytest.raises(SchemeError, match="need the axis"):
        activation_spec(granularity="channel")
    with pytest.raises(PassError, match=r"16 channels along axis -1 do not split into groups of 3"):
        qcompiler.quantize(model, x, overrides={"x": {"activations": activation_spec(granularity="group", axis=-1, group_size=3)}})
    with pytest.raises(PassError, match=r"per-channel activations are calibrated with method='minmax'"):
        qcompiler.quantize(model, x, method="mse", overrides={"x": {"activations": activation_spec(granularity="channel", axis=-1)}})
    with pytest.raises(PassError, match=r"'convolution'.*3 channels along axis 0 does not split into groups of 2"):
        qcompiler.quantize(nn.Conv2d(4, 3, 1).eval(), conv_input(),
                           scheme=QuantScheme(weights=weight_spec(granularity="group", group_size=2)))
    with pytest.raises(PassError, match=r"axis 3.*3-d"):
        qcompiler.quantize(model, x, overrides={"x": {"activations": activation_spec(granularity="channel", axis=3)}})


def test_weight_dequantizers_hold_their_parameters_in_buffers_too():
    x = conv_input()
    qm = qcompiler.quantize(ConvBlock().eval(), x, scheme=QuantScheme(weights=weight_spec(granularity="tensor")))
    for layer in quant_layers(qm.graph):
        dq = layer.weight_dq
        assert is_dequantize(dq) and dq.target == qd.dequantize_per_tensor.tensor
        assert dq.args[1].op == "get_attr" and get_tensor(qm.graph, dq.args[1]).dtype == torch.float64
        assert torch.equal(layer.dequantized_weight(qm.graph), qd.dequantize_per_tensor.default(
            layer.weight_int(qm.graph), float(layer.weight_scales(qm.graph)[0]), 0, *dq.args[3:]))
