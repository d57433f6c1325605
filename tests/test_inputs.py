"""A new user's first hour: wrong inputs, calibration given as one tensor, examples given as a
list, models in training mode, progress, and the messages each gets."""
import logging

import pytest
import torch
import torch.nn as nn

import qcompiler
from qcompiler import InputError


def conv_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.1),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


@pytest.fixture(scope="module")
def qm():
    return qcompiler.quantize(conv_model(), torch.randn(2, 3, 12, 12), ptq="minmax", calibration=[torch.randn(4, 3, 12, 12)],
                              progress=False)


@pytest.mark.parametrize("entry", ["simulate", "interpret", "float"])
def test_a_wrong_shape_names_the_entry_point_input_and_shapes(qm, entry):
    with pytest.raises(InputError) as info:
        getattr(qm, entry)(torch.randn(1, 4, 12, 12))
    message = str(info.value)
    assert f"qm.{entry}: input 0" in message
    assert "[1, 4, 12, 12]" in message and "expected [N, 3, 12, 12] float32" in message
    assert "dimension 1 is 4, expected 3" in message and "Fix:" in message


def test_any_batch_size_is_accepted_and_the_input_count_and_dtype_are_checked(qm):
    assert qm.interpret(torch.randn(5, 3, 12, 12)).shape == (5, 4)
    with pytest.raises(InputError, match=r"takes 1 input\(s\).*got 2"):
        qm.simulate(torch.randn(1, 3, 12, 12), torch.randn(1, 3, 12, 12))
    with pytest.raises(InputError, match=r"dtype int64, expected \[N, 3, 12, 12\] float32. Fix: convert it"):
        qm.interpret(torch.zeros(1, 3, 12, 12, dtype=torch.int64))


def test_a_sample_without_its_batch_dimension_gets_that_hint(qm):
    with pytest.raises(InputError, match=r"one sample without its batch dimension: add it \(x.unsqueeze\(0\)\)"):
        qm.simulate(torch.randn(3, 12, 12))


def test_a_wrong_calibration_batch_is_named_with_its_index():
    batches = [torch.randn(4, 3, 12, 12), torch.randn(4, 3, 12, 12), torch.randn(4, 3, 10, 12)]
    with pytest.raises(InputError, match=r"calibration, batch 2: input 0 .* \[4, 3, 10, 12\], expected \[N, 3, 12, 12\]"):
        qcompiler.quantize(conv_model(), torch.randn(1, 3, 12, 12), calibration=batches, progress=False)


def test_analyze_data_of_the_wrong_shape_is_named(qm):
    with pytest.raises(InputError, match=r"qm.analyze data, batch 0: input 0"):
        qm.analyze([torch.randn(2, 3, 11, 12)])


def test_one_tensor_of_samples_as_calibration_is_a_set_of_batches():
    model, x = conv_model(), torch.randn(1, 3, 12, 12)
    samples = torch.randn(80, 3, 12, 12)
    as_tensor = qcompiler.quantize(model, x, ptq="minmax", calibration=samples, progress=False)
    as_batches = qcompiler.quantize(model, x, ptq="minmax", calibration=list(samples.split(32)), progress=False)
    assert as_tensor.qparams.keys() == as_batches.qparams.keys()
    for name, params in as_tensor.qparams.items():
        assert params.scalar() == as_batches.qparams[name].scalar(), name
    assert as_tensor.report["calibrate"].counts["batches"] == 3


class FixedBatch(nn.Module):
    """A model that fixes its batch size (reshape to 2 rows)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x).reshape(2, -1)


def test_one_tensor_of_samples_is_split_by_the_batch_size_a_model_fixes():
    qm = qcompiler.quantize(FixedBatch().eval(), torch.randn(2, 3, 8, 8), ptq="minmax", calibration=torch.randn(10, 3, 8, 8), progress=False)
    assert qm.report["calibrate"].counts["batches"] == 5
    with pytest.raises(InputError, match=r"dimension 0 is 3, expected 2"):
        qm.simulate(torch.randn(3, 3, 8, 8))


def test_an_example_given_as_a_list_works_like_a_tuple():
    model, x = conv_model(), torch.randn(1, 3, 12, 12)
    from_list = qcompiler.quantize(model, [x], progress=False)
    from_tuple = qcompiler.quantize(model, (x,), progress=False)
    assert torch.equal(from_list.interpret(x), from_tuple.interpret(x))


def test_a_model_in_training_mode_is_named_warned_about_and_left_as_it_was(caplog):
    model = conv_model().train()
    model[3].eval()  # the user's own choice for one module: kept
    x = torch.randn(2, 3, 12, 12)
    with caplog.at_level(logging.WARNING, logger="qcompiler"):
        qm = qcompiler.quantize(model, x, progress=False)
    warnings = [r.getMessage() for r in caplog.records if r.name == "qcompiler" and r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "has modules in training mode ('1' (BatchNorm2d))" in warnings[0] and "model.eval()" in warnings[0]
    assert model.training and model[1].training and not model[3].training
    model.eval()
    assert torch.allclose(qm.float(x), model(x), atol=1e-5), "captured with eval semantics"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="qcompiler"):
        qcompiler.quantize(model, x, progress=False)
    assert not [r for r in caplog.records if r.name == "qcompiler"], "an eval-mode model gets no warning"


def test_capture_keeps_torch_export_debug_trace_quiet(caplog):
    with caplog.at_level(logging.DEBUG):
        qcompiler.capture(conv_model(), torch.randn(1, 3, 12, 12))
    assert not [r for r in caplog.records if r.name.startswith("torch.__trace")]


def test_bits_error_reads_as_a_choice():
    with pytest.raises(qcompiler.SchemeError, match=r"activation bits must be 8 or 16, got 4"):
        qcompiler.quantize(conv_model(), torch.randn(1, 3, 12, 12), activation_bits=4, progress=False)
    with pytest.raises(qcompiler.SchemeError, match=r"weight bits must be an integer in 2–8, got 9"):
        qcompiler.quantize(conv_model(), torch.randn(1, 3, 12, 12), bits=9, progress=False)


def test_progress_is_shown_for_every_long_step_when_asked_and_never_when_off(capfd):
    model, x = conv_model(), torch.randn(2, 3, 12, 12)
    from qcompiler.passes import Adaround

    qm = qcompiler.quantize(model, x, calibration=[x, x], ptq=["bias_correction", Adaround(iterations=2)], progress=True)
    cm = qm.compile("host", progress=True)
    qm.analyze([x], progress=True)
    err = capfd.readouterr().err
    for step in ("calibrating", "bias correction", "adaround", "compiling for host: lowering", "building", "analyzing"):
        assert step in err, step
    qm = qcompiler.quantize(model, x, calibration=[x, x], ptq=["bias_correction", Adaround(iterations=2)], progress=False)
    qm.compile("host", progress=False)
    qm.analyze([x], progress=False)
    assert capfd.readouterr().err == ""


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x1, x2):
        return torch.cat([self.a(x1), self.b(x2)], dim=1)


def test_inputs_that_share_the_batch_must_agree_on_it():
    x = torch.randn(1, 3, 8, 8)
    qm = qcompiler.quantize(TwoInputs().eval(), [x, x], ptq="minmax", calibration=[(x, x)], progress=False)
    for entry in ("simulate", "float", "interpret"):
        with pytest.raises(InputError, match=r"input 0 has 1 in dimension 0 and input 1 \('x2'\) has 2 in dimension 0"):
            getattr(qm, entry)(x, torch.randn(2, 3, 8, 8))
    with pytest.raises(InputError, match=r"calibration, batch 1: input 0 has 2 .* input 1 \('x2'\) has 3"):
        qcompiler.quantize(TwoInputs().eval(), (x, x), calibration=[(x, x), (torch.randn(2, 3, 8, 8), torch.randn(3, 3, 8, 8))],
                           progress=False)
    assert qm.interpret(torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)).shape == (2, 8, 8, 8)


def test_a_wrong_number_of_example_inputs_names_the_forward_parameters():
    with pytest.raises(qcompiler.CaptureError, match=r"TwoInputs.forward takes 2 required input\(s\) \(x1, x2\), but "
                                                      r"example_inputs has 1.*Fix: give example_inputs as a tuple"):
        qcompiler.quantize(TwoInputs().eval(), torch.randn(1, 3, 8, 8), progress=False)


def test_another_float_precision_or_numpy_input_is_handled_the_same_at_every_entry_point(qm):
    x = torch.randn(2, 3, 12, 12)
    for entry in ("simulate", "float", "interpret"):
        with pytest.raises(InputError, match=rf"qm.{entry}: input 0 .* has dtype float64, expected \[N, 3, 12, 12\] "
                                             r"float32. Fix: convert it, e.g. x.to\(torch.float32\)"):
            getattr(qm, entry)(x.double())
        assert torch.equal(getattr(qm, entry)(x.numpy()), getattr(qm, entry)(x)), entry
    with pytest.raises(InputError, match=r"calibration, batch 1: .*dtype float64"):
        qcompiler.quantize(conv_model(), x, calibration=[x, x.double()], progress=False)
    with pytest.raises(InputError, match=r"not as one list or tuple"):
        qm.simulate([x])


def test_samples_that_do_not_fill_the_batch_a_model_fixes_are_left_out_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="qcompiler"):
        qm = qcompiler.quantize(FixedBatch().eval(), torch.randn(2, 3, 8, 8), calibration=torch.randn(9, 3, 8, 8),
                                progress=False)
    assert qm.report["calibrate"].counts["batches"] == 4
    assert any("9 samples do not fill batches of 2" in r.getMessage() for r in caplog.records)
    with pytest.raises(InputError, match="batches of exactly 2"):
        qcompiler.quantize(FixedBatch().eval(), torch.randn(2, 3, 8, 8), calibration=torch.randn(1, 3, 8, 8), progress=False)
