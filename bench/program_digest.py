"""Digests of integer programs, encodings and outputs, to show that two versions of
qcompiler build the same programs (a refactoring changes no number).

    .venv/bin/python bench/program_digest.py > a.txt     # in each checkout (its own .venv)
    diff a.txt b.txt                                      # no line differs: the same programs

Per model and configuration it prints one table row: a digest of the integer program
(every node's op and arguments, every constant's dtype, shape and bytes; not the buffer
names), of the encodings (``--ignore-keys`` leaves out fields one version adds), and of
the interpreter's outputs on the example input.
"""
from __future__ import annotations

import argparse
import hashlib
import json

import torch
import torch.fx as fx
import torch.nn as nn

import qcompiler
from qcompiler.encodings import encodings
from qcompiler.graph import get_tensor
from qcompiler.models import efficientnet_lite0, fashion_mobilenet

CONFIGS = {
    "W8A8": {}, "W4A8": {"bits": 4}, "W8A16": {"activation_bits": 16}, "mse": {"method": "mse"},
    "arm scheme": {"scheme": qcompiler.arm_scheme()}, "bias correction": {"ptq": ["bias_correction"]},
    "CLE": {"passes": ["fold_bn", "equalize"]},
}


def block() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU6(), nn.Conv2d(8, 8, 3, groups=8), nn.ReLU6(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


MODELS = {  # name: (model, input shape, configurations)
    "block": (block, (2, 3, 12, 12), list(CONFIGS)),
    "fashion": (fashion_mobilenet, (4, 1, 28, 28), list(CONFIGS)),
    "lite0": (efficientnet_lite0, (1, 3, 224, 224), ["W8A8"]),
}


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def program_digest(program: fx.GraphModule) -> str:
    def show(a):
        if isinstance(a, fx.Node) and a.op == "get_attr":
            t = get_tensor(program, a)
            return f"{t.dtype}{tuple(t.shape)}:{_digest(t.contiguous().numpy().tobytes())}"
        return a.name if isinstance(a, fx.Node) else a
    rows = [(n.op, str(n.target), fx.node.map_aggregate(n.args, show)) for n in program.graph.nodes]
    return _digest(repr(rows).encode())


def encodings_digest(graph: fx.GraphModule, ignore: set[str]) -> str:
    enc = {kind: {name: {k: v for k, v in e.items() if k not in ignore} for name, e in table.items()}
           for kind, table in encodings(graph).items()}
    return _digest(json.dumps(enc, sort_keys=True, default=str).encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--ignore-keys", nargs="*", default=["granularity", "group_size"],
                        help="encoding fields left out of the digest (default: the ones issue 13 added)")
    args = parser.parse_args()
    print("| model | config | program | encodings | outputs |\n|---|---|---|---|---|")
    for name in args.models:
        make, shape, configs = MODELS[name]
        model = make().eval()
        torch.manual_seed(1)
        x = torch.randn(*shape)
        for config in configs:
            qm = qcompiler.quantize(model, x, calibration=[x], progress=False, **CONFIGS[config])
            outputs = b"".join(t.numpy().tobytes() for t in torch.utils._pytree.tree_leaves(qm.interpret(x)))
            print(f"| {name} | {config} | {program_digest(qm.program)} | "
                  f"{encodings_digest(qm.graph, set(args.ignore_keys))} | {_digest(outputs)} |", flush=True)


if __name__ == "__main__":
    main()
