"""The bundled Fashion-MNIST model (weights in the repo, data from the Debian package
dataset-fashion-mnist): it loads, it is the trained model, and its W8A8 integer program
keeps its predictions. The full 10,000-image accuracy table is bench/accuracy.py's."""
import pytest
import torch

import qcompiler
from qcompiler.metrics import top1_accuracy, top1_agreement
from qcompiler.models import fashion_mnist, fashion_mobilenet


@pytest.fixture(scope="module")
def data():
    x_train, _ = fashion_mnist("train")
    x_test, y_test = fashion_mnist("test")
    return x_train, x_test[:300], y_test[:300]


def test_w8a8_integer_program_keeps_the_float_predictions(data):
    x_train, x, y = data
    model = fashion_mobilenet()
    with torch.no_grad():
        ref = model(x)
    assert top1_accuracy(ref, y) >= 0.88, "the bundled weights are not the trained ones (90.8% on the test set)"
    calibration = [x_train[i:i + 64] for i in range(0, 512, 64)]
    qm = qcompiler.quantize(model, x[:1], bits=8, ptq="minmax", calibration=calibration, progress=False)
    integer = qm.interpret(x)
    assert top1_agreement(ref, integer) >= 0.97
    assert abs(top1_accuracy(integer, y) - top1_accuracy(ref, y)) <= 0.02


def test_a_missing_dataset_names_the_package(monkeypatch):
    import qcompiler.models as models

    monkeypatch.setattr(models, "FASHION_MNIST_DIR", "/nonexistent/fashion-mnist")
    with pytest.raises(qcompiler.QCompilerError, match="apt-get install dataset-fashion-mnist"):
        models.fashion_mnist("test")
