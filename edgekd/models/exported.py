"""``torch.export`` archives as teachers: the functional graph lifted back into real layers.

``ExportedProgram.module()`` calls ``aten.conv2d``/``aten.linear``/``aten.batch_norm`` on loose
parameters, so there is no ``nn.Conv2d`` to prune, fold or quantize (and it refuses ``.eval()``).
Each such call becomes a call to a real module that owns the same parameters, at the path the
parameters already had ("features.0.weight" -> module "features.0"). Archives saved after
``run_decompositions()`` hold the core ATen forms instead (``aten.convolution``, ``aten.addmm``
and ``aten.mm`` on a transposed weight, ``_native_batch_norm_legit_no_training``); they lift too.
"""

from __future__ import annotations

import operator
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
        elif node.op == "call_function":
            _lift(gm, node)
    graph.eliminate_dead_code()
    return fx.GraphModule(gm, graph).eval()  # plain: trainable, eval()-able, deep-copyable


def _lift(gm: fx.GraphModule, node: fx.Node) -> None:
    """Replace a layer's functional call by a call to a module owning its parameters."""
    found = _layer_call(gm, node)
    if found is None:
        return
    x, module, owner, result = found
    parent, _, name = owner.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, name, module)
    with gm.graph.inserting_before(node):
        call = gm.graph.call_module(owner, (x,))
    call.meta = dict(result.meta)  # shapes stay known to later lifts (batch norm needs the rank)
    result.replace_all_uses_with(call)
    for dead in (result, node) if result is not node else (node,):
        gm.graph.erase_node(dead)


def _layer_call(gm: fx.GraphModule, node: fx.Node):
    """(input, module, module path, the node whose value the module returns), or None."""
    target, args = node.target, node.args
    if target in LIFTERS:
        x, *rest = args
        return x, LIFTERS[target](*[_attr(gm, a) for a in rest]), _owner(rest[0]), node
    if target == aten.convolution.default:
        x, w, b, stride, padding, dilation, transposed, _out_pad, groups = args
        if transposed or _attr(gm, w).dim() not in (3, 4):
            return None
        conv = _conv(_attr(gm, w).dim() - 2)(
            _attr(gm, w), _attr(gm, b), stride, padding, dilation, groups
        )
        return x, conv, _owner(w), node
    if target in (aten.addmm.default, aten.mm.default) and not node.kwargs:
        b, x, w_t = args if target == aten.addmm.default else (None, *args)
        w = _transposed_weight(w_t)
        if w is None:
            return None
        return x, _linear(_attr(gm, w), _attr(gm, b)), _owner(w), node
    if target in (aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default):
        x, w, b, mean, var, *more = args
        result = node
        if target != aten.batch_norm.default:  # returns (output, mean, rstd): take output
            users = list(node.users)
            if not all(u.target is operator.getitem and u.args[1] == 0 for u in users):
                return None
            if len(users) != 1:
                return None
            result = users[0]
            momentum, eps = more
            more = [False, momentum, eps]
        tensors = [_attr(gm, a) for a in (w, b, mean, var)]
        module = _batch_norm(*tensors, *more, rank=x.meta["val"].dim())
        return x, module, _owner(mean), result
    return None


def _transposed_weight(arg) -> fx.Node | None:
    """The parameter ``w`` of ``w.T`` (``aten.permute(w, [1, 0])`` or ``aten.t(w)``)."""
    if not isinstance(arg, fx.Node) or arg.op != "call_function" or len(arg.users) != 1:
        return None
    if arg.target == aten.t.default or (
        arg.target == aten.permute.default and list(arg.args[1]) == [1, 0]
    ):
        source = arg.args[0]
        return source if isinstance(source, fx.Node) and source.op == "get_attr" else None
    return None


def _owner(param: fx.Node) -> str:
    """The module path a parameter's get_attr names ("stem.0.weight" -> "stem.0")."""
    return param.target.rpartition(".")[0]


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
