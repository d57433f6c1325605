"""The IR verifier: structural checks run after every pass (``PassManager(lint=True)``)."""
from __future__ import annotations

import torch
import torch.fx as fx

from .errors import GraphError
from .graph import get_tensor


def verify_graph(gm: fx.GraphModule) -> None:
    """Raise GraphError listing every problem found in ``gm`` at once: fx's own lint
    (topological order, dangling uses), get_attr nodes whose attribute is missing or is not a
    tensor, and call_function nodes whose target is not callable."""
    problems: list[str] = []
    try:
        gm.graph.lint()
    except Exception as exc:  # fx raises RuntimeError with its own message
        problems.append(f"fx lint: {exc}")
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            try:
                get_tensor(gm, node)
            except (AttributeError, TypeError) as exc:
                problems.append(f"node '{node.name}': get_attr target '{node.target}' does not resolve to a tensor ({exc})")
        elif node.op == "call_function" and not callable(node.target):
            problems.append(f"node '{node.name}': target {node.target!r} is not callable")
    outputs = [n for n in gm.graph.nodes if n.op == "output"]
    if len(outputs) != 1:
        problems.append(f"the graph has {len(outputs)} output nodes; it must have exactly one")
    if problems:
        raise GraphError("malformed graph:\n  - " + "\n  - ".join(problems))


def count_ops(gm: fx.GraphModule) -> dict[str, int]:
    """{op name: count} of the call_function nodes of ``gm`` (for tests and reports)."""
    counts: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_function":
            name = getattr(node.target, "__name__", str(node.target))
            if isinstance(node.target, torch._ops.OpOverload):
                name = str(node.target)
            counts[name] = counts.get(name, 0) + 1
    return counts
