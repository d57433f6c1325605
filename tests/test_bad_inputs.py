"""The bad-input catalog: the mistakes a new user makes, one kind per test id, each checked
for the words of its error.

Every entry point (``quantize``, ``qcompile``, ``qm.simulate`` / ``interpret`` /
``analyze`` / ``compile``, a compiled model ``cm(...)``, ``cm.export``, ``qcompiler.load``
and a loaded export, the ``qcompile`` command line) is fed something wrong: the wrong
shapes, dtypes or number of inputs, a model that cannot be captured or returns no tensor,
calibration data that is empty or of the wrong form, bits out of range, an unknown target,
pass, method or override, a destination that must not be written, a damaged export, a
missing toolchain. Each test asserts that the error is a QCompilerError (never a bare
traceback from torch, TVM or numpy), that it names what is wrong (the input, node, op,
argument, file or directory at fault) and that it says the fix.

The models are tiny (one conv on 1×3×8×8); one host compile and one export are shared by
the module's tests.
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys
import types

import numpy as np
import pytest
import torch

import qcompiler
from qcompiler.errors import OverrideError
from qcompiler import (CaptureError, InputError, PassError, PassOrderError, QCompilerError, QuantSpec, SchemeError,
                       activation_spec, qcompile, quantize, weight_spec)
from qcompiler.cli import main as cli_main
from qcompiler.export import ExportError
from qcompiler.targets import TargetError

X = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))


class Net(torch.nn.Module):
    """One conv and a relu: the model every case starts from."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x))


class TwoInputs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, a, b):
        return self.conv(a) + self.conv(b)


class Returns(torch.nn.Module):
    """Runs a conv, then returns ``value`` (not a tensor)."""

    def __init__(self, value):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.value = value

    def forward(self, x):
        self.conv(x)
        return self.value


class DataDependent(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        if x.sum() > 0:  # Python control flow on a tensor's value: torch.export cannot trace it
            return self.conv(x)
        return x


def net() -> Net:
    torch.manual_seed(0)
    return Net().eval()


def q(model=None, example=X, **kwargs):
    return quantize(net() if model is None else model, example, progress=False, **kwargs)


@pytest.fixture(scope="module")
def qm():
    return q()


@pytest.fixture(scope="module")
def cm(qm):
    return qm.compile("host", progress=False)


@pytest.fixture(scope="module")
def exported(cm, tmp_path_factory):
    return cm.export(tmp_path_factory.mktemp("export") / "out")


# ---------------------------------------------------------------- inputs at call time

CALL_CASES = {
    # id: (call(qm), error words)
    "simulate-wrong-shape": (lambda qm: qm.simulate(torch.randn(1, 3, 9, 9)),
                             r"qm\.simulate: input 0 \('x'\) has shape \[1, 3, 9, 9\], expected \[N, 3, 8, 8\] float32: "
                             r"dimension 2 is 9, expected 8\. Fix: give inputs shaped like the example inputs"),
    "simulate-float64": (lambda qm: qm.simulate(X.double()),
                         r"qm\.simulate: input 0 \('x'\) has dtype float64, expected .*Fix: convert it, e\.g\. x\.to\(torch\.float32\)"),
    "simulate-int64": (lambda qm: qm.simulate(X.long()), r"has dtype int64, expected .*Fix: convert it"),
    "simulate-float64-numpy": (lambda qm: qm.simulate(np.random.randn(1, 3, 8, 8)), r"has dtype float64.*Fix: convert it"),
    "simulate-too-many-inputs": (lambda qm: qm.simulate(X, X),
                                 r"qm\.simulate: the model takes 1 input\(s\) \(x \[N, 3, 8, 8\] float32\), got 2\. "
                                 r"Fix: give one tensor per input \(x\)"),
    "simulate-no-input": (lambda qm: qm.simulate(), r"takes 1 input\(s\).*got 0\. Fix: give one tensor per input"),
    "simulate-not-a-tensor": (lambda qm: qm.simulate("image.png"), r"input 0 \('x'\) must be a tensor \[N, 3, 8, 8\] float32, got str"),
    "interpret-missing-batch-dim": (lambda qm: qm.interpret(torch.randn(3, 8, 8)),
                                    r"qm\.interpret: input 0 \('x'\) has shape \[3, 8, 8\].*one sample without its batch "
                                    r"dimension: add it \(x\.unsqueeze\(0\)\)"),
    "interpret-nested-list": (lambda qm: qm.interpret(X.tolist()),
                              r"qm\.interpret: input 0 \('x'\) must be a tensor .*got list\. Fix: pass the inputs as "
                              r"separate arguments"),
    "float-wrong-shape": (lambda qm: qm.float(torch.randn(1, 4, 8, 8)), r"qm\.float: input 0 \('x'\).*dimension 1 is 4, expected 3"),
    "analyze-data-wrong-shape": (lambda qm: qm.analyze([torch.randn(1, 3, 4, 4)]),
                                 r"qm\.analyze data, batch 0: input 0 \('x'\) has shape \[1, 3, 4, 4\].*Fix:"),
}


@pytest.mark.parametrize("kind", CALL_CASES)
def test_quantized_model_call(qm, kind):
    call, words = CALL_CASES[kind]
    with pytest.raises(InputError, match=words):
        call(qm)


COMPILED_CASES = {
    "other-shape": (lambda m: m(torch.randn(1, 3, 9, 9)),
                    r"input 0 expected float32 \[1, 3, 8, 8\], got float32 \[1, 3, 9, 9\]\. Fix: shapes are static: "
                    r"compile again with an example input of the new shape"),
    "other-batch-size": (lambda m: m(torch.randn(2, 3, 8, 8)), r"got float32 \[2, 3, 8, 8\]\. Fix: shapes are static"),
    "missing-batch-dim": (lambda m: m(torch.randn(3, 8, 8)), r"one sample without its batch dimension: add it \(x\.unsqueeze\(0\)\)"),
    "float64": (lambda m: m(X.double()), r"input 0 expected float32 \[1, 3, 8, 8\], got float64.*Fix: convert it, e\.g\. x\.to\(torch\.float32\)"),
    "too-many-inputs": (lambda m: m(X, X), r"takes 1 input\(s\) \(float32 \[1, 3, 8, 8\]\), got 2\. Fix: call it with one tensor per input"),
    "no-input": (lambda m: m(), r"takes 1 input\(s\).*got 0"),
    "inputs-as-one-list": (lambda m: m([X]), r"got a list\. Fix: pass the inputs as separate arguments"),
    "not-a-tensor": (lambda m: m("x"), r"input 0 expected a tensor float32 \[1, 3, 8, 8\], got str\. Fix: pass a tensor"),
}


@pytest.mark.parametrize("kind", COMPILED_CASES)
def test_compiled_model_call(cm, kind):
    call, words = COMPILED_CASES[kind]
    with pytest.raises(InputError, match="the model compiled for host.*" + words):
        call(cm)


def test_run_int_given_float_inputs(cm):
    with pytest.raises(InputError, match=r"run_int: input 0 expected uint8 \[1, 3, 8, 8\], got float32.*"
                                         r"Fix: convert it.*cm\.input_encodings"):
        cm.run_int(X)


@pytest.mark.parametrize("kind", ["other-shape", "float64", "too-many-inputs", "not-a-tensor"])
def test_loaded_export_call(exported, kind):
    call, words = COMPILED_CASES[kind]
    m = qcompiler.load(exported)
    with pytest.raises(InputError, match=f"the model loaded from {re.escape(str(exported))}.*" + words):
        call(m)


# ---------------------------------------------------------------- the model

def test_training_mode_model_warns_and_is_captured_in_eval_mode(caplog):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Dropout(0.5))
    model.train()
    with caplog.at_level(logging.WARNING, logger="qcompiler"):
        q(model)
    assert re.search(r"has modules in training mode \('1' \(BatchNorm2d\), '2' \(Dropout\)\): qcompiler captures the "
                     r"model in eval mode.*Call model\.eval\(\) first", caplog.text)
    assert model.training  # the user's flags are left as they were


@pytest.mark.parametrize("value", [None, "label", 3], ids=["returns-None", "returns-a-string", "returns-a-number"])
def test_model_returning_no_tensor(value):
    with pytest.raises(CaptureError, match=r"Returns\.forward returns no tensor.*nothing to quantize\. "
                                           r"Fix: return the output tensor\(s\)"):
        q(Returns(value).eval())


def test_model_with_data_dependent_control_flow():
    with pytest.raises(CaptureError, match=r"(?s)could not capture DataDependent with torch\.export\..*"
                                           r"failing line: .*if x\.sum\(\) > 0.*use torch\.where / torch\.cond"):
        q(DataDependent().eval())


def test_half_precision_model():
    with pytest.raises(CaptureError, match=r"Net has float16 parameters or buffers: qcompiler quantizes float32 models\. "
                                           r"Fix: call model\.float\(\)"):
        q(net().half(), X.half())


@pytest.mark.parametrize("model,words", [(lambda x: x, "got function"), (Net, "got type")],
                         ids=["a-function", "the-class-not-an-instance"])
def test_not_a_module(model, words):
    with pytest.raises(CaptureError, match=f"capture\\(\\) takes a torch\\.nn\\.Module, {words}"):
        q(model)


def test_example_inputs_do_not_fit_forward():
    with pytest.raises(CaptureError, match=r"Net\.forward takes 1 required input\(s\) \(x\), but example_inputs has 2.*"
                                           r"Fix: give example_inputs as a tuple with one tensor per input"):
        q(example=(X, X))


# ---------------------------------------------------------------- example inputs

EXAMPLE_CASES = {
    "nested-list-of-numbers": ([X.tolist()], InputError,
                               r"example_inputs: input 0 is a list of numbers, not a tensor\. Fix: make it a tensor, "
                               r"e\.g\. torch\.tensor\(data, dtype=torch\.float32\)"),
    "None": (None, InputError, r"example_inputs must be a tensor or a tuple \(or list\).*got NoneType"),
    "a-dict": ({"x": X}, InputError, r"example_inputs must be a tensor or a tuple.*got dict"),
    "zero-size": (torch.randn(0, 3, 8, 8), InputError,
                  r"example_inputs: input 0 has shape \[0, 3, 8, 8\], which holds no values.*Fix: give an example with "
                  r"at least one sample"),
    "float64": (X.double(), InputError, r"example_inputs: input 0 is float64.*Fix: convert it, e\.g\. x\.float\(\)"),
    "float64-numpy": (np.random.randn(1, 3, 8, 8), InputError, r"input 0 is float64.*np\.float32 for a numpy array"),
    "int64": (X.long(), CaptureError, r"example input 0 is int64, the model's parameters are float32\. "
                                      r"Fix: convert it, e\.g\. x\.float\(\)"),
}


@pytest.mark.parametrize("kind", EXAMPLE_CASES)
def test_example_inputs(kind):
    example, error, words = EXAMPLE_CASES[kind]
    with pytest.raises(error, match=words):
        q(example=example)


def test_float32_numpy_example_is_accepted():
    """Fixed: a float32 numpy array is an example input like a tensor (torch.export took none)."""
    qm = q(example=X.numpy())
    assert torch.equal(qm.simulate(X), q().simulate(X))


# ---------------------------------------------------------------- calibration

def _loader(n: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(n, 3, 8, 8)), batch_size=4)


CALIBRATION_CASES = {
    "empty-list": ([], r"the calibration data \(list\) yielded no batches; give at least one batch"),
    "empty-DataLoader": (_loader(0), r"the calibration data \(DataLoader\) yielded no batches; give at least one batch"),
    "tensor-of-0-samples": (torch.randn(0, 3, 8, 8), r"calibration: the tensor has shape \[0, 3, 8, 8\]: 0 samples\. "
                                                     r"Fix: give at least one sample"),
    "batch-of-wrong-shape": ([X, torch.randn(2, 3, 9, 9)],
                             r"calibration, batch 1: input 0 \('x'\) has shape \[2, 3, 9, 9\], expected \[N, 3, 8, 8\].*"
                             r"Fix: give batches shaped like the example inputs"),
    "batch-float64": ([X.double()], r"calibration, batch 0: input 0 \('x'\) has dtype float64.*Fix: convert it"),
    "samples-without-batch-dim": ([torch.randn(3, 8, 8)], r"calibration, batch 0: .*one sample without its batch dimension"),
    "a-Dataset-not-a-DataLoader": (torch.utils.data.TensorDataset(torch.randn(8, 3, 8, 8)),
                                   r"calibration is a TensorDataset \(a Dataset\), which gives single samples.*Fix: wrap it "
                                   r"in a DataLoader"),
    "a-file-name": ("calibration.pt", r"calibration='calibration\.pt' is a str, not data\. Fix: load the batches first"),
    "a-number": (100, r"calibration must be a DataLoader, a list of batches or one tensor of samples, got int\. Fix:"),
    "a-dict": ({"x": X}, r"calibration must be a DataLoader.*got dict"),
    "batches-of-dicts": ([{"x": X}], r"calibration batch 0 is a dict; give tensors, or tuples/lists"),
    "NaN": ([torch.full((1, 3, 8, 8), float("nan"))], r"calibration: NaN in the output of node 'x' \(batch 0\); check the "
                                                      r"calibration data"),
    "Inf": ([X, torch.full((1, 3, 8, 8), float("inf"))], r"calibration: Inf in the output of node 'x' \(batch 1\)"),
}


@pytest.mark.parametrize("kind", CALIBRATION_CASES)
def test_calibration(kind):
    data, words = CALIBRATION_CASES[kind]
    with pytest.raises(QCompilerError, match=words):
        q(calibration=data)


def test_calibration_one_tensor_for_a_two_input_model():
    with pytest.raises(InputError, match=r"calibration: a single tensor was given, but the model takes 2 inputs; give an "
                                         r"iterable of batches, each a tuple of 2 tensors"):
        q(TwoInputs().eval(), (X, X), calibration=torch.randn(4, 3, 8, 8))


def test_calibration_batches_with_one_input_of_two():
    with pytest.raises(InputError, match=r"calibration, batch 0: the model takes 2 input\(s\) \(a \[N, 3, 8, 8\] float32, "
                                         r"b \[N, 3, 8, 8\] float32\), got 1"):
        q(TwoInputs().eval(), (X, X), calibration=[X])


# ---------------------------------------------------------------- bits, scheme, method

@pytest.mark.parametrize("bits", [0, 1, 9, 17], ids=lambda b: f"bits={b}")
def test_weight_bits_out_of_range(bits):
    with pytest.raises(SchemeError, match=f"weight bits must be an integer in 2–8, got {bits}\\. Fix: bits=8 \\(the default\\)"):
        q(bits=bits)


@pytest.mark.parametrize("bits", [8.0, "8", True], ids=["bits=8.0", "bits='8'", "bits=True"])
def test_weight_bits_not_an_int(bits):
    with pytest.raises(SchemeError, match=f"weight bits must be an integer in 2–8, got {re.escape(repr(bits))} "
                                          f"\\({type(bits).__name__}\\)\\. Fix: pass an int"):
        q(bits=bits)


@pytest.mark.parametrize("bits", [0, 1, 4, 17, 8.0, "16"], ids=lambda b: f"activation_bits={b!r}")
def test_activation_bits_out_of_range(bits):
    with pytest.raises(SchemeError, match=f"activation bits must be 8 or 16, got {re.escape(repr(bits) if not isinstance(bits, int) else str(bits))}.*"
                                          f"Fix: .*activation_bits=8 \\(the default\\) or 16"):
        q(activation_bits=bits)


def test_scheme_given_as_a_string():
    with pytest.raises(SchemeError, match=r"scheme must be a QuantScheme, got str 'arm'\. Fix: e\.g\. "
                                          r"scheme=qcompiler\.arm_scheme\(\).*target='arm_cpu'"):
        q(scheme="arm")


SPEC_CASES = {
    "per-channel-activations-without-axis": (lambda: activation_spec(granularity="channel"),
                                             r"per-channel activations need the axis to quantize along: e\.g\. axis=1"),
    "group-without-group-size": (lambda: QuantSpec(granularity="group"), r"granularity='group' needs group_size >= 1"),
    "unknown-granularity": (lambda: QuantSpec(granularity="row"), r"granularity='row': use one of \('tensor', 'channel', 'group'\)"),
    "symmetric-unsigned": (lambda: QuantSpec(symmetric=True, signed=False), r"symmetric quantization needs signed storage.*use signed=True"),
    "spec-bits=1": (lambda: QuantSpec(bits=1), r"bits=1: qcompiler quantizes to 2–8 bits \(weights\) or 8/16 bits"),
    "weight-spec-bits=9": (lambda: weight_spec(9), r"weight bits must be 2–8, got 9"),
    "activation-spec-bits=4": (lambda: activation_spec(4), r"activation bits must be 8 or 16, got 4"),
}


@pytest.mark.parametrize("kind", SPEC_CASES)
def test_invalid_scheme_spec(kind):
    make, words = SPEC_CASES[kind]
    with pytest.raises(SchemeError, match=words):
        make()


def test_unknown_calibration_method():
    with pytest.raises(PassError, match=r"unknown calibration method 'mse2'; use one of \('minmax', 'mse', 'percentile'\)"):
        q(method="mse2")


# ---------------------------------------------------------------- targets, passes, threads

def test_unknown_target_in_qcompile():
    with pytest.raises(TargetError, match=r"unknown target 'gpu'; known targets: host, arm_cpu"):
        qcompile(net(), X, target="gpu", progress=False)


def test_misspelt_target_in_compile(qm):
    with pytest.raises(TargetError, match=r"unknown target 'armcpu' \(did you mean 'arm_cpu'\?\); known targets: host"):
        qm.compile("armcpu")


@pytest.mark.parametrize("argument", ["passes", "ptq"])
def test_unknown_pass_name(argument):
    name = {"passes": "fold_bnn", "ptq": "bias_corection"}[argument]
    close = {"passes": "fold_bn", "ptq": "bias_correction"}[argument]
    with pytest.raises(PassOrderError, match=f"no pass named '{name}' \\(did you mean '{close}'\\?\\); registered passes: "
                                             f".*Register your own with @qcompiler\\.register_pass"):
        q(**{argument: [name]})


@pytest.mark.parametrize("value,words", [(3, r"ptq must be a list of pass names, got int 3\. Fix: e\.g\. ptq=\['bias_correction'\]"),
                                         ([None], r"ptq: None is not a pass; give registered pass names")],
                         ids=["ptq-a-number", "ptq-holding-None"])
def test_ptq_not_a_list_of_passes(value, words):
    with pytest.raises(PassOrderError, match=words):
        q(ptq=value)


def test_one_pass_name_as_a_string_is_one_pass():
    """Fixed: passes="fold_bn" was seven one-letter pass names ('no pass named f')."""
    assert [r.name for r in q(passes="fold_bn").report.records][:1] == ["fold_bn"]


@pytest.mark.parametrize("threads", [0, -1, 1.5, "4"], ids=lambda t: f"threads={t!r}")
def test_threads_out_of_range(qm, threads):
    with pytest.raises(TargetError, match=f"threads={re.escape(repr(threads))}: give the number of threads.*an int >= 1.*"
                                          f"Fix: e\\.g\\. threads=1"):
        qm.compile("host", threads=threads)


def test_arm_target_without_the_aarch64_toolchain(qm, monkeypatch, tmp_path):
    monkeypatch.setenv("QCOMPILER_ARM_TOOLS", str(tmp_path))  # no runner, no aarch64 TVM runtime
    monkeypatch.setenv("PATH", str(tmp_path))                 # no qemu-aarch64, no cross compiler
    from qcompiler.targets.arm_cpu import ArmToolsError
    with pytest.raises(ArmToolsError, match=r"the arm_cpu target needs runner, libtvm_runtime\.so, libtvm_ffi\.so, "
                                            r"qemu-aarch64, aarch64-linux-gnu-g\+\+ .*install the Debian packages "
                                            r"qemu-user and g\+\+-aarch64-linux-gnu, then run scripts/setup-arm\.sh"):
        qm.compile("arm_cpu")


# ---------------------------------------------------------------- overrides

OVERRIDE_CASES = {
    "naming-nothing": ({"hardtanh": "float"}, OverrideError,
                       r"overrides name nodes or ops that are not in the graph: 'hardtanh'\. Keys are node names"),
    "misspelt-node": ({"convolutio": "float"}, OverrideError, r"'convolutio' \(did you mean 'convolution'\?\)"),
    "unknown-key": ({"convolution": {"wieghts": weight_spec(4)}}, SchemeError,
                    r"override for 'convolution': unknown key\(s\) \['wieghts'\] \(did you mean 'weights'\?\); use "
                    r"'float', 'weights', 'activations'"),
    "unknown-string-value": ({"convolution": "int4"}, SchemeError,
                             r"override for 'convolution' is 'int4': the only string override is 'float'\. Fix: "
                             r"'float', or \{'weights': qcompiler\.weight_spec\(4\)\}"),
    "bits-instead-of-a-spec": ({"convolution": {"weights": 4}}, SchemeError,
                               r"override for 'convolution': 'weights' must be a QuantSpec, got 4\. Fix: e\.g\. "
                               r"\{'weights': qcompiler\.weight_spec\(4\)\}"),
    "not-a-dict": (["convolution"], SchemeError, r"overrides must be a dict from node or op names.*got list\. Fix: e\.g\."),
    "key-not-a-string": ({0: "float"}, SchemeError, r"overrides: key 0 is a int; keys are node or op names"),
    "value-not-an-override": ({"convolution": 8}, SchemeError, r"override for 'convolution' must be 'float', a dict or "
                                                                r"a NodeOverride, got 8"),
}


@pytest.mark.parametrize("kind", OVERRIDE_CASES)
def test_overrides(kind):
    overrides, error, words = OVERRIDE_CASES[kind]
    with pytest.raises(error, match=words):
        q(overrides=overrides)


# ---------------------------------------------------------------- export

def test_export_into_a_directory_of_other_files(cm, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match=r"it holds files qcompiler did not write \(notes\.txt\)\. Export into a new "
                                          r"or empty directory, or replace the directory whole with overwrite=True"):
        cm.export(tmp_path)
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_export_onto_a_file(cm, tmp_path):
    (tmp_path / "model").write_text("")
    with pytest.raises(ExportError, match=r"model: it is a file, not a directory; choose another path"):
        cm.export(tmp_path / "model")
    with pytest.raises(ExportError, match=r"model is a file, not a directory; choose a path outside it"):
        cm.export(tmp_path / "model" / "out")


def test_export_to_an_empty_path(cm):
    with pytest.raises(ExportError, match=r"the export directory is an empty path: name a directory, e\.g\. out/"):
        cm.export("")


def test_export_to_an_unwritable_place(cm):
    # /proc takes no new directories, even as root (where chmod would not stop a write)
    with pytest.raises(ExportError, match=r"cannot export to /proc/qcompiler-out: .*\(choose a writable directory\)"):
        cm.export("/proc/qcompiler-out")


def test_export_overwriting_the_working_directory(cm, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.py").write_text("")
    with pytest.raises(ExportError, match=r"refusing to replace .* whole \(overwrite=True / --force\): it is the working "
                                          r"directory\. Export into a new subdirectory instead"):
        cm.export(".", overwrite=True)


# ---------------------------------------------------------------- load

def _manifest(directory, **fields):
    directory.mkdir(exist_ok=True)
    manifest = {"format": "qcompiler-export", "version": 2, "target": "host", "library": "model.so",
                "inputs": [{"shape": [1, 3, 8, 8], "dtype": "float32"}], "files": ["model.so", "manifest.json"], **fields}
    (directory / "manifest.json").write_text(json.dumps({k: v for k, v in manifest.items() if v is not None}))
    return directory


def test_load_a_missing_directory(tmp_path):
    with pytest.raises(ExportError, match=r"nowhere does not exist: give the directory cm\.export\(dir\) wrote"):
        qcompiler.load(tmp_path / "nowhere")


def test_load_a_directory_without_an_export(tmp_path):
    with pytest.raises(ExportError, match=r"holds no qcompiler export \(no manifest\.json\); export one with cm\.export\(dir\)"):
        qcompiler.load(tmp_path)


def test_load_the_library_file_instead_of_its_directory(exported):
    with pytest.raises(ExportError, match=r"model\.so is a file, not an export directory: give the directory "
                                          r"cm\.export\(dir\) wrote"):
        qcompiler.load(exported / "model.so")


def test_load_a_corrupt_manifest(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ExportError, match=r"cannot read .*manifest\.json: .*The export is damaged: export it again"):
        qcompiler.load(tmp_path)


def test_load_a_manifest_of_another_tool(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"name": "my-app", "version": "1.0"}))
    with pytest.raises(ExportError, match=r"manifest\.json is not a qcompiler manifest \(no 'format': 'qcompiler-export'\)"):
        qcompiler.load(tmp_path)


def test_load_a_manifest_missing_its_inputs(tmp_path):
    _manifest(tmp_path, inputs=None)
    with pytest.raises(ExportError, match=r"manifest\.json lacks inputs: the export is damaged.*Fix: export it again"):
        qcompiler.load(tmp_path)


def test_load_with_the_library_missing(tmp_path):
    _manifest(tmp_path)
    with pytest.raises(ExportError, match=r"the library model\.so listed in its manifest is missing; export again"):
        qcompiler.load(tmp_path)


def test_load_a_corrupt_library(tmp_path):
    _manifest(tmp_path)
    (tmp_path / "model.so").write_text("not a shared library")
    with pytest.raises(QCompilerError, match=r"cannot load .*model\.so on this machine: .*The library is damaged or was "
                                             r"not built for this machine's host target: export it again"):
        qcompiler.load(tmp_path)


def test_load_an_export_for_an_unknown_target(tmp_path):
    _manifest(tmp_path, target="tpu")
    with pytest.raises(TargetError, match=r"unknown target 'tpu'; known targets: host, arm_cpu"):
        qcompiler.load(tmp_path)


# ---------------------------------------------------------------- the command line

@pytest.fixture
def tiny_factory(monkeypatch):
    module = types.ModuleType("bad_inputs_models")
    module.net = lambda: net()
    monkeypatch.setitem(sys.modules, "bad_inputs_models", module)
    return "bad_inputs_models"


CLI_CASES = {
    "unknown-module": (["no_such_module:factory"], r"model 'no_such_module:factory': cannot import module "
                                                   r"'no_such_module'.*is it on PYTHONPATH\?"),
    "misspelt-factory": (["{m}:nett"], r"module 'bad_inputs_models' has no 'nett' \(did you mean 'net'\?\)"),
    "no-colon": (["{m}.net"], r"write it as MODULE:NAME"),
    "no-input-shape": (["{m}:net"], r"gave no example inputs: pass --input-shape, e\.g\. 1,3,224,224"),
    "missing-calibration-file": (["{m}:net", "--input-shape", "1,3,8,8", "--calibration", "/nonexistent/cal.pt"],
                                 r"--calibration /nonexistent/cal\.pt: cannot read it"),
    "bits=1": (["{m}:net", "--input-shape", "1,3,8,8", "--bits", "1"], r"weight bits must be an integer in 2–8, got 1\. Fix"),
}


@pytest.mark.parametrize("kind", CLI_CASES)
def test_command_line(kind, tiny_factory, capsys):
    argv, words = CLI_CASES[kind]
    assert cli_main([a.format(m=tiny_factory) for a in argv] + ["--no-progress"]) == 2
    assert re.search("qcompile: .*" + words, " ".join(capsys.readouterr().err.split()))


def test_command_line_refuses_an_export_directory_before_compiling(tiny_factory, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert cli_main([f"{tiny_factory}:net", "--input-shape", "1,3,8,8", "--export", str(tmp_path), "--no-progress"]) == 2
    assert "holds files qcompiler did not write (notes.txt)" in " ".join(capsys.readouterr().err.split())


def test_command_line_bad_input_shape(capsys):
    with pytest.raises(SystemExit):
        cli_main(["m:f", "--input-shape", "1;3;8;8"])
    assert "--input-shape '1;3;8;8': write it as 1,3,224,224" in capsys.readouterr().err
