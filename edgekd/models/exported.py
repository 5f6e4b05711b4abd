"""``torch.export`` archives as teachers: the functional graph lifted back into real layers.

``ExportedProgram.module()`` calls ``aten.conv2d``/``aten.linear``/``aten.batch_norm`` on loose
parameters, so there is no ``nn.Conv2d`` to prune, fold or quantize (and it refuses ``.eval()``).
Each such call becomes a call to a real module that owns the same parameters, at the path the
parameters already had ("features.0.weight" -> module "features.0").
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import fx, nn

from ..errors import InputError

aten = torch.ops.aten


def _conv(dims: int):
    cls = nn.Conv1d if dims == 1 else nn.Conv2d

    def make(w, b, stride=1, padding=0, dilation=1, groups=1) -> nn.Module:
        if isinstance(padding, str):
            raise InputError(f"padding='{padding}' convolutions in .pt2 teachers are not supported")
        m = cls(
            w.shape[1] * groups,
            w.shape[0],
            tuple(w.shape[2:]),
            stride,
            padding,
            dilation,
            groups,
            bias=b is not None,
        )
        m.weight, m.bias = w, b
        return m

    return make


def _linear(w, b=None) -> nn.Module:
    m = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    m.weight, m.bias = w, b
    return m


def _batch_norm(
    w, b, mean, var, _training=False, momentum=0.1, eps=1e-5, *_, rank: int
) -> nn.Module:
    m = (nn.BatchNorm2d if rank == 4 else nn.BatchNorm1d)(
        mean.shape[0], eps=eps, momentum=momentum, affine=w is not None
    )
    if w is not None:
        m.weight, m.bias = w, b
    m.running_mean, m.running_var = mean, var
    return m


LIFTERS = {
    aten.conv1d.default: _conv(1),
    aten.conv2d.default: _conv(2),
    aten.linear.default: _linear,
}


def load_exported(path: Path) -> nn.Module:
    if not path.is_file():
        raise InputError(f"teacher archive '{path}' not found")
    try:
        gm = torch.export.load(path).module()
    except Exception as exc:
        raise InputError(
            f"teacher archive '{path}' is not a readable torch.export .pt2 ({exc})"
        ) from None
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn":
            graph.erase_node(
                node
            )  # export's own input-shape guards; edgekd re-exports with its own
        elif node.op == "call_function" and (
            node.target in LIFTERS or node.target == aten.batch_norm.default
        ):
            _lift(gm, node)
    graph.eliminate_dead_code()
    return fx.GraphModule(
        gm, graph
    ).eval()  # a plain GraphModule: trainable, eval()-able, deep-copyable


def _lift(gm: fx.GraphModule, node: fx.Node) -> None:
    x, *rest = node.args
    tensors = [_attr(gm, a) for a in rest]
    if node.target == aten.batch_norm.default:
        module = _batch_norm(*tensors, rank=x.meta["val"].dim())
        owner = rest[2].target.rpartition(".")[0]  # running_mean's module path
    else:
        module = LIFTERS[node.target](*tensors)
        owner = rest[0].target.rpartition(".")[0]  # the weight's module path
    parent, _, name = owner.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, name, module)
    with gm.graph.inserting_before(node):
        call = gm.graph.call_module(owner, (x,))
    call.meta = dict(node.meta)  # shapes stay known to later lifts (batch norm needs the rank)
    node.replace_all_uses_with(call)
    gm.graph.erase_node(node)


def _attr(gm: fx.GraphModule, arg):
    """A get_attr node's tensor; plain values (stride, eps, ...) pass through."""
    if not isinstance(arg, fx.Node):
        return arg
    if arg.op != "get_attr":
        raise InputError(
            f"layer input '{arg.name}' is computed, not a stored parameter; cannot lift this .pt2"
        )
    owner, _, leaf = arg.target.rpartition(".")
    return getattr(gm.get_submodule(owner) if owner else gm, leaf)
