"""``quantize``: float passes + quantizer insertion + calibration (+ PTQ passes), giving a
QuantizedModel whose ``simulate`` runs the quantized graph in torch; ``qcompile``: quantize
with a target's scheme, then build (qcompiler.compiled)."""
from __future__ import annotations

import time
from typing import Any, Iterable, Optional, Sequence

import torch
import torch.fx as fx

from . import meta
from .agreement import compare_ops
from .analysis import analyze
from .capture import capture
from .compiled import CompiledModel, compile_model
from .graph import clone_graph
from .inputs import InputSpec, as_input_tuple, calibration_source, check_inputs, input_specs
from .errors import ConversionError
from .integer import to_integer_program
from .interpreter import interpret
from .pass_manager import PassContext, PassLike, PassManager, PassReport
from .qparams import QuantParams, qparams_by_value
from .passes import Calibrate, InsertQuantizers
from .passes.insert_quantizers import unsupported_error
from .passes.calibrate import batch_inputs
from .scheme import QuantScheme, host_scheme
from .ste import differentiable_simulation
from .targets import get_target
from .verify import verify_graph

DEFAULT_FLOAT_PASSES = ("fold_bn",)


class QuantizedModel:
    """The result of ``quantize``.

    float_graph: the captured graph after the float passes (the float reference).
    graph:       the quantized graph (Q/DQ between float ops): the simulation.
    simulate(x): run the simulation.
    program:     the integer program; interpret(x): run it exactly (numpy).
    report:      the pass report.
    scheme:      the QuantScheme used; qparams: {value node name: QuantParams} of every
                 activation quantizer (qcompiler.qparams; ``.scalar()`` gives a
                 per-tensor (scale, zero point)).
    input_specs: the inputs every entry point accepts (shape, with None for a dynamic
                 batch dimension, and dtype); a wrong input is a qcompiler.inputs.InputError.
    """

    def __init__(self, float_graph: fx.GraphModule, graph: fx.GraphModule, scheme: QuantScheme, report: PassReport,
                 example_inputs: tuple):
        self.float_graph = float_graph
        self.graph = graph
        self.scheme = scheme
        self.report = report
        self.example_inputs = example_inputs
        self.input_specs: list[InputSpec] = input_specs(graph, example_inputs)
        self._program: Optional[fx.GraphModule] = None

    def check_inputs(self, inputs: Any, where: str, batch: Optional[int] = None) -> tuple:
        """``inputs`` as a tuple, checked against ``input_specs`` (InputError otherwise)."""
        return check_inputs(self.input_specs, inputs, where, batch)

    @property
    def program(self) -> fx.GraphModule:
        """The integer program (qcompiler's integer ops, every parameter explicit)."""
        if self._program is None:
            self._program = to_integer_program(self.graph)
        return self._program

    def interpret(self, *inputs: Any) -> Any:
        """Run the integer program exactly (numpy; the reference every target must equal)."""
        return interpret(self.program, *self.check_inputs(inputs, "qm.interpret"))

    def analyze(self, data: Iterable, max_batches: int = 8, progress: Optional[bool] = None):
        """Per quantized value: SQNR of its output when only it is quantized and when
        everything up to it is, worst first (qcompiler.analysis). ``data``: batches as for
        calibration (a DataLoader, a list of batches, or one tensor of samples), at most
        ``max_batches`` of them. The node names it prints are the keys ``overrides`` takes.
        ``progress``: see qcompiler.progress."""
        n_inputs = len(self.example_inputs)
        source = calibration_source(data, self.input_specs)
        batches = [self.check_inputs(batch_inputs(b, n_inputs, i), "qm.analyze data", batch=i)
                   for i, b in zip(range(max_batches), source)]
        return analyze(self.graph, self.float_graph, batches, progress=progress)

    def trainable(self) -> fx.GraphModule:
        """A differentiable copy of the simulation (straight-through estimator) whose
        weights are float parameters: for QAT or other gradient-based tuning."""
        return differentiable_simulation(self.graph)

    def compare_ops(self, *inputs: Any):
        """Per integer op: how many output elements differ from the simulation by one step
        (each op fed the simulation's own inputs). See qcompiler.agreement."""
        return compare_ops(self.graph, self.program, inputs)

    @property
    def qparams(self) -> dict[str, QuantParams]:
        return qparams_by_value(self.graph)

    def simulate(self, *inputs: Any) -> Any:
        """Run the simulation (fake-quantized float ops) on ``inputs``."""
        inputs = self.check_inputs(inputs, "qm.simulate")
        with torch.no_grad():
            return self.graph(*inputs)

    def float(self, *inputs: Any) -> Any:
        """Run the float reference (after the float passes)."""
        inputs = self.check_inputs(inputs, "qm.float")
        with torch.no_grad():
            return self.float_graph(*inputs)

    def compile(self, target: str = "host", threads: Optional[int] = None, progress: Optional[bool] = None) -> CompiledModel:
        """Build the integer program for ``target`` ("host", ...): a CompiledModel that
        equals ``interpret`` bit for bit (qcompiler.compiled); ``threads``: how many threads
        it runs on (default: every CPU); ``progress``: see qcompiler.progress."""
        return compile_model(self, target, threads=threads, progress=progress)

    def __repr__(self) -> str:
        return f"QuantizedModel({self.scheme.describe()}, {len(self.qparams)} quantized activations)"


def make_scheme(bits: int, activation_bits: int, scheme: Optional[QuantScheme]) -> QuantScheme:
    return (scheme or host_scheme()).with_bits(weight_bits=bits, activation_bits=activation_bits)


def quantize(model: torch.nn.Module, example_inputs: Any, bits: int = 8, activation_bits: int = 8,
             calibration: Optional[Iterable] = None, method: str = "minmax",
             passes: Sequence[PassLike] = DEFAULT_FLOAT_PASSES, ptq: Sequence[PassLike] = (),
             scheme: Optional[QuantScheme] = None, overrides: Optional[dict] = None,
             progress: Optional[bool] = None, verify: bool = False) -> QuantizedModel:
    """Quantize ``model``: capture, float ``passes`` (default fold_bn; add "equalize" for CLE),
    insert quantizers per the scheme (``bits``-bit weights, ``activation_bits``-bit
    activations, or a full ``scheme``), calibrate on ``calibration`` (a DataLoader or any
    iterable of batches; default: the example inputs) with ``method`` (minmax, mse,
    percentile), then the PTQ passes in ``ptq`` (e.g. "bias_correction", "adaround").
    ``example_inputs``: a tensor, or a tuple/list of the model's positional inputs. A single
    tensor as ``calibration`` is a set of samples along dimension 0, split into batches
    (qcompiler.inputs.calibration_source); every batch is checked against the example's
    shapes (InputError naming the batch otherwise). ``progress``: show progress bars
    (None: on a terminal or in a notebook; see qcompiler.progress).
    ``overrides`` maps node names or op names to "float" or {"weights"/"activations": QuantSpec};
    a key that is both a node name and an op's short name (a node called "hardtanh") means
    the node; write the full op name ("aten.hardtanh.default") to mean every such op.
    """
    q_scheme = make_scheme(bits, activation_bits, scheme)
    inputs = as_input_tuple(example_inputs)
    gm = model if isinstance(model, fx.GraphModule) else capture(model, inputs)
    calibration = [inputs] if calibration is None else calibration_source(calibration, input_specs(gm, inputs))
    float_result = PassManager(list(passes), verify=verify).run(gm, inputs)
    float_graph = clone_graph(float_result.gm)
    ctx = PassContext(example_inputs=inputs, calibration=calibration, float_graph=float_graph, progress=progress)
    quant_passes = [InsertQuantizers(q_scheme, overrides, method), Calibrate(progress=progress), *ptq]
    result = PassManager(quant_passes).run(float_result.gm, inputs, ctx)
    report = PassReport(float_result.report.records + result.report.records)
    qm = QuantizedModel(float_graph, result.gm, q_scheme, report, inputs)
    qm._program = integer_program_or_raise(result.gm, q_scheme)
    return qm


def integer_program_or_raise(sim: fx.GraphModule, scheme: QuantScheme) -> Optional[fx.GraphModule]:
    """The integer program of ``sim``, or one UnsupportedOpError naming every node whose
    arguments have no integer form (found by converting it), with the overrides that keep
    them in float. None when the simulation's quantization has no integer program at all
    (per-channel activations, issue 15): ``qm.program`` then raises that ConversionError,
    and the simulation stays usable."""
    problems: list = []
    try:
        program = to_integer_program(sim, problems)
    except ConversionError:
        return None
    if problems:
        raise unsupported_error(problems, scheme)
    return program


def from_pt2e(graph: fx.GraphModule, example_inputs: Any, float_graph: Optional[fx.GraphModule] = None) -> QuantizedModel:
    """Accept a graph quantized by a PT2E quantizer (``convert_pt2e`` output: Q/DQ from
    ``quantized_decomposed``, e.g. torchao's XNNPACKQuantizer) as it is: the result has
    ``simulate`` (the graph itself), ``program`` and ``interpret``. Pass the float graph too
    for ``analyze``."""
    inputs = as_input_tuple(example_inputs)
    scheme = QuantScheme()
    verify_graph(graph)
    return QuantizedModel(float_graph if float_graph is not None else graph, graph, scheme, PassReport(), inputs)


def qcompile(model: torch.nn.Module, example_inputs: Any, target: str = "host", bits: int = 8,
             threads: Optional[int] = None, progress: Optional[bool] = None, **quantize_kwargs: Any) -> CompiledModel:
    """``quantize`` with the target's scheme, then ``compile``: the one-line promise.
    ``threads``: see ``compile_model``; ``progress``: see qcompiler.progress.
    ``quantize_kwargs`` go to qcompiler.quantize (calibration, method, passes, ptq, overrides...)."""
    info = get_target(target)
    quantize_kwargs.setdefault("scheme", info.scheme())
    start = time.perf_counter()
    qm = quantize(model, example_inputs, bits=bits, progress=progress, **quantize_kwargs)
    quantize_seconds = time.perf_counter() - start
    cm = compile_model(qm, info, threads=threads, progress=progress)
    cm.timings = {"quantize": quantize_seconds, **cm.timings}
    return cm
