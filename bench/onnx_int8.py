"""ONNX export and ONNX Runtime static int8 quantization, for comparisons with qcompiler.

    fp32 = export_onnx(model, example, "lite0.onnx")
    int8 = quantize_onnx_int8(fp32, "lite0.int8.onnx", calibration_batches)
    fp32, int8 = cached_onnx_models(model, example, calibration_batches)   # both, cached on disk

Export uses the legacy TorchScript exporter (``torch.onnx.export(..., dynamo=False)``): the
torch.export-based one (``dynamo=True``, the default since torch 2.9) needs the ``onnxscript``
package, which is not installed. The graph has a static batch size (that of ``example``).

Quantization is ONNX Runtime's ``quantize_static``: QDQ format, per-channel int8 weights,
uint8 activations, min/max calibration over the given batches, after ``quant_pre_process``
(symbolic shape inference + ORT's basic graph optimisations, which constant-fold the
exported padding arithmetic and fuse the explicit ``Pad`` nodes into the convolutions).
``reduce_range=True`` quantizes weights to 7 bits, which ORT advises for x86 CPUs without
VNNI: there its u8×s8 kernels can saturate with full-range 8-bit weights (on an AVX2-only
EPYC, EfficientNet-Lite0's logits SQNR drops from 18 dB for the QDQ graph evaluated in float
to 9 dB with ORT's int8 kernels; 7-bit weights give 13 dB in both).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DEFAULT_CACHE_DIR = Path(__file__).resolve().parent / ".cache" / "onnx"


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path: str | os.PathLike) -> Path:
    """Export ``model`` (in eval mode) to ONNX at ``path`` with input ``example``'s shape."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # Expected and harmless: the legacy exporter announces its deprecation, and it cannot
        # fold the Slice ops of ZeroPad2d's padding arithmetic (ORT folds them when loading).
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*Constant folding - Only steps=1.*")
        with torch.no_grad():
            torch.onnx.export(model.eval(), (example,), str(path), dynamo=False, opset_version=OPSET,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], do_constant_folding=True)
    return path


def _calibration_reader(input_name: str, batches: Iterable[np.ndarray]):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it: Iterator[np.ndarray] = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._it, None)
            return None if batch is None else {input_name: np.ascontiguousarray(batch, dtype=np.float32)}

    return Reader()


def _split_to_batch(batches: Iterable[np.ndarray | torch.Tensor], batch_size: int) -> Iterator[np.ndarray]:
    """Re-chunk calibration batches to the model's static batch size (a partial tail is dropped)."""
    pending: list[np.ndarray] = []
    for b in batches:
        b = b.numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
        for row in b:
            pending.append(row)
            if len(pending) == batch_size:
                yield np.stack(pending)
                pending = []


def _static_batch_size(model_path: Path) -> int:
    import onnx

    dim = onnx.load(str(model_path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim[0]
    return dim.dim_value if dim.HasField("dim_value") else 1


def quantize_onnx_int8(fp32_path: str | os.PathLike, int8_path: str | os.PathLike,
                       calibration_batches: Iterable[np.ndarray | torch.Tensor], reduce_range: bool = False,
                       preprocess: bool = True) -> Path:
    """Statically quantize the ONNX model at ``fp32_path`` to ``int8_path`` (QDQ, per-channel
    int8 weights, uint8 activations, min/max ranges over ``calibration_batches``, which are
    re-chunked to the model's batch size). ``reduce_range`` gives 7-bit weights (ORT's advice
    for x86 CPUs without VNNI, where u8×s8 pairs can saturate 16-bit intermediates)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="onnx_int8.") as tmp:
        source = fp32_path
        if preprocess:
            source = Path(tmp) / "preprocessed.onnx"
            quant_pre_process(str(fp32_path), str(source))
        batches = _split_to_batch(calibration_batches, _static_batch_size(source))
        quantize_static(
            str(source), str(int8_path), _calibration_reader(INPUT_NAME, batches),
            quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=reduce_range,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            # Not extra_options={"CalibMaxIntermediateOutputs": k}: in onnxruntime 1.32 that drops
            # each block of k batches without reducing it ("No data is collected." or wrong ranges).
        )
    return int8_path


def _model_key(model: torch.nn.Module, example: torch.Tensor) -> str:
    import onnx
    import onnxruntime

    h = hashlib.sha256()
    h.update(f"{type(model).__qualname__}|{tuple(example.shape)}|{OPSET}|".encode())
    h.update(f"{torch.__version__}|{onnx.__version__}|{onnxruntime.__version__}|".encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _calibration_key(calibration_batches: list[np.ndarray | torch.Tensor], reduce_range: bool) -> str:
    h = hashlib.sha256(f"{reduce_range}|".encode())
    for b in calibration_batches:
        h.update(np.ascontiguousarray(b.numpy() if isinstance(b, torch.Tensor) else b).tobytes())
    return h.hexdigest()[:16]


def cached_onnx_models(model: torch.nn.Module, example: torch.Tensor,
                       calibration_batches: Iterable[np.ndarray | torch.Tensor],
                       cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR,
                       reduce_range: bool = False) -> tuple[Path, Path]:
    """(fp32 path, int8 path) for ``model``, exported and quantized once and then reused:
    ``cache_dir``/<hash of weights, input shape, versions>/model.fp32.onnx and
    .../model.int8.<hash of calibration data and options>.onnx."""
    calibration_batches = list(calibration_batches)
    folder = Path(cache_dir) / _model_key(model, example)
    fp32 = folder / "model.fp32.onnx"
    int8 = folder / f"model.int8.{_calibration_key(calibration_batches, reduce_range)}.onnx"
    if not fp32.exists():
        _atomic(fp32, lambda tmp: export_onnx(model, example, tmp))
    if not int8.exists():
        _atomic(int8, lambda tmp: quantize_onnx_int8(fp32, tmp, calibration_batches, reduce_range=reduce_range))
    return fp32, int8


def _atomic(path: Path, write) -> None:
    """Write ``path`` through a temporary name, so an interrupted run leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.onnx")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
