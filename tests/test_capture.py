import logging
import warnings

import pytest
import torch
import torch.nn as nn

import qcompiler
from qcompiler import CaptureError


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


class Inner(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.export cannot capture it
            return x
        return -x


class DoesNotExport(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.inner = Inner()

    def forward(self, x):
        return self.inner(self.conv(x))


def test_capture_gives_aten_graph_with_same_outputs():
    model = SmallNet().eval()
    x = torch.randn(2, 3, 8, 8)
    gm = qcompiler.capture(model, (x,))
    targets = {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}
    assert "aten.convolution.default" in targets
    assert "aten._native_batch_norm_legit_no_training.default" in targets
    assert "aten.linear.default" in targets
    assert all(t.startswith("aten.") or "getitem" in t for t in targets), targets
    torch.testing.assert_close(gm(x), model(x))


def test_capture_keeps_batch_dynamic_from_a_batch_of_one():
    model = SmallNet().eval()
    gm = qcompiler.capture(model, torch.randn(1, 3, 8, 8))
    x = torch.randn(5, 3, 8, 8)
    torch.testing.assert_close(gm(x), model(x))


def test_capture_does_not_alias_the_model_parameters():
    model = SmallNet().eval()
    gm = qcompiler.capture(model, torch.randn(1, 3, 8, 8))
    for name, t in list(gm.named_parameters()) + list(gm.named_buffers()):
        for p in list(model.parameters()) + list(model.buffers()):
            assert t.data_ptr() != p.data_ptr(), f"{name} shares storage with the model"


def test_training_model_is_captured_in_eval_mode_and_flag_restored(caplog):
    model = SmallNet().train()
    x = torch.randn(2, 3, 8, 8)
    with caplog.at_level(logging.WARNING, logger="qcompiler"):
        gm = qcompiler.capture(model, x)
    assert any("has modules in training mode ('bn' (BatchNorm2d)): qcompiler captures the model in eval mode" in r.getMessage()
               for r in caplog.records if r.name == "qcompiler")
    assert model.training, "the model's training flag must be restored"
    targets = {str(n.target) for n in gm.graph.nodes}
    assert "aten._native_batch_norm_legit_no_training.default" in targets
    model.eval()
    torch.testing.assert_close(gm(x), model(x))


def test_model_that_does_not_export_names_class_module_and_line():
    with pytest.raises(CaptureError) as info:
        qcompiler.capture(DoesNotExport().eval(), torch.randn(1, 3, 4, 4))
    msg = str(info.value)
    assert "could not capture DoesNotExport" in msg
    assert "inner (Inner)" in msg
    assert "if x.sum() > 0" in msg
    assert "torch says" in msg and "what to try" in msg
    assert info.value.__cause__ is not None  # torch's own error is chained beneath


def test_bad_arguments_are_clear_errors():
    with pytest.raises(CaptureError, match="takes a torch.nn.Module"):
        qcompiler.capture(lambda x: x, torch.randn(1))
    with pytest.raises(CaptureError, match="example_inputs must be a tensor or a tuple"):
        qcompiler.capture(SmallNet(), {"x": torch.randn(1, 3, 8, 8)})
