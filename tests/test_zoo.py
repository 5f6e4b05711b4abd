"""The zoo (``tests/zoo.py``): each architecture family through plan -> prune -> distill (one
epoch) -> export -> verify, with its exports agreeing with the PyTorch student on ONNX Runtime and
OpenVINO; and the constructs that used to break it, one by one."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
import zoo
from conftest import decode_weight
from torch import nn

from edgekd.data.inputs import as_example, named
from edgekd.errors import ShapeError
from edgekd.export.torch_onnx import export_float, student_onnx
from edgekd.models.clone import clone_model
from edgekd.pipeline import check_fit, compress
from edgekd.plan import resolve_plan
from edgekd.quant import fold_batchnorm, prepare_qat
from edgekd.recipe import load_recipe
from edgekd.runtimes import get_runtime
from edgekd.targets import load_target

FAST = [
    "distill.epochs=1",
    "prune.keep_ratio=0.75",
    "plan.max_accuracy_drop=100",  # one epoch on random data: the exports are what is judged
    "bench.batches=[1]",
    "bench.min_runs=5",
    "bench.min_seconds=0.05",
    "bench.warmup=1",
]


@pytest.fixture(scope="module")
def zoo_data(tmp_path_factory):
    """name -> the .npz its model takes: images, or token ids with an attention mask."""
    folder = tmp_path_factory.mktemp("zoo")
    np.savez(folder / "images.npz", **zoo.data())
    np.savez(
        folder / "tokens.npz", **zoo.token_data(1024)
    )  # 154 test sentences: one int8 flip is 0.6%
    return lambda name: folder / ("tokens.npz" if name in zoo.TOKEN_INPUTS else "images.npz")


def _decomposed_archive(name: str, path) -> str:
    """The model as a torch.export archive in core ATen ops (``run_decompositions()``)."""
    x = torch.from_numpy(zoo.data(4)["x"])
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(getattr(zoo, name)(), (x,), dynamic_shapes=({0: batch},))
    torch.export.save(program.run_decompositions(), path)
    return str(path)


@pytest.mark.parametrize("name", [*sorted(zoo.ZOO), "resnet.pt2"])
def test_every_zoo_architecture_compresses_and_its_exports_agree_with_the_student(
    name, zoo_data, tmp_path
):
    stem, _, archive = name.partition(".")
    run = compress(
        out=tmp_path / stem,
        teacher=_decomposed_archive(stem, tmp_path / name) if archive else f"zoo:{name}",
        data=str(zoo_data(stem)),
        recipe="w8a8",
        set=FAST,
        log=lambda _line: None,
    )
    verify = json.loads((run / "verify" / "verify.json").read_text())
    students = {r["runtime"]: r for r in verify["results"] if r["model"] == "student"}
    assert set(students) == {"onnxruntime", "openvino"}
    for runtime, result in students.items():
        assert result["status"] == "ok", (runtime, result["reason"])
        assert result["agreement"] >= 0.99, (runtime, result)
    plan = json.loads((run / "plan" / "plan.json").read_text())
    assert any(lp["keep_ratio"] < 1.0 for lp in plan["layers"])  # pruning ran on each
    task = json.loads((run / "report.json").read_text())["task"]  # the detector's: two outputs
    graph = onnx.load(run / "export" / "student.onnx", load_external_data=False).graph
    assert [o.name for o in graph.output] == task["outputs"]


def _example(batch: int = 4) -> torch.Tensor:
    return torch.from_numpy(zoo.data(batch)["x"])


def _plan(model: nn.Module, x: torch.Tensor, preset: str = "w8a8", overrides=()):
    return resolve_plan(load_recipe(preset, list(overrides)), [load_target("x86-cpu")], model, x)


def test_a_model_holding_a_cache_from_a_forward_with_gradients_is_copied_detached():
    model, x = zoo.swin(), _example()
    with torch.enable_grad():
        model(x)  # fills the attention bias cache, tied to the bias table by autograd
    with pytest.raises(RuntimeError, match="deepcopy"):
        copy.deepcopy(model)  # the premise: why edgekd does not deepcopy models
    clone = clone_model(model)
    assert clone.attn._bias.grad_fn is None
    torch.testing.assert_close(clone.attn._bias, model.attn._bias.detach())
    torch.testing.assert_close(clone(x), model(x))


def test_batchnorm_with_its_activation_in_one_module_folds_and_keeps_the_activation():
    model, x = zoo.resnext(), _example()
    reference = model(x)
    folded = fold_batchnorm(clone_model(model), x)
    assert isinstance(folded.bn3, nn.Identity)  # the plain BatchNorm goes
    assert folded.stem_bn.weight is None and isinstance(folded.stem_bn.act, nn.ReLU)
    assert not torch.equal(folded.stem.weight, model.stem.weight)  # its statistics moved here
    torch.testing.assert_close(folded(x), reference, rtol=1e-5, atol=1e-5)


def test_batchnorm_over_tokens_is_not_folded_into_the_linear_before_it():
    model, x = zoo.token_batchnorm(), _example()
    reference = model(x)
    folded = fold_batchnorm(clone_model(model), x)
    assert isinstance(folded.bn, nn.BatchNorm1d)
    torch.testing.assert_close(folded.fc.weight, model.fc.weight)
    torch.testing.assert_close(folded(x), reference)


def test_a_layer_the_forward_never_calls_is_left_out_of_the_plan_with_a_note():
    model, x = zoo.shared_layers(), _example()
    plan = _plan(model, x, overrides=["prune.keep_ratio=0.75"])
    assert plan.layer("pooler") is None
    assert any("not called" in note and "pooler" in note for note in plan.adjustments)
    assert "called 2 times: channels kept" in plan.layer("shared").notes


def test_a_layer_whose_output_the_model_never_reads_is_left_out_of_the_plan():
    model = zoo.tiny_bert()
    x = as_example(named(zoo.token_data(2)))
    plan = _plan(model, x)
    assert plan.layer("pooler") is None and plan.layer("classifier") is not None
    assert any("output unread" in note and "pooler" in note for note in plan.adjustments)


def test_equal_weights_export_by_module_and_each_call_of_a_module_reads_quantized_input():
    model, x = zoo.shared_layers(), _example()
    torch.testing.assert_close(model.left.weight, model.right.weight)  # untrained: still equal
    student = prepare_qat(fold_batchnorm(clone_model(model), x), _plan(model, x))
    student.train()(x)  # calibrate activation ranges
    graph = student_onnx(student.eval(), x)
    made_by = {out: node for node in graph.graph.node for out in node.output}
    dq_output = {node.name: node.output[0] for node in graph.graph.node}
    for name in ("left", "right", "shared"):  # a MatMul's weight is stored (in, out)
        np.testing.assert_array_equal(
            decode_weight(graph, dq_output[f"{name}.weight_DequantizeLinear"]).T,
            student.get_submodule(name).quantized_weight().detach().numpy(),
        )
    shared_calls = [
        node
        for node in graph.graph.node
        if node.op_type == "MatMul"
        and made_by[node.input[1]].name == "shared.weight_DequantizeLinear"
    ]
    assert len(shared_calls) == 2
    assert all(made_by[node.input[0]].op_type == "DequantizeLinear" for node in shared_calls)
    onnx.checker.check_model(graph)


class OddWidths(nn.Module):
    """Linear layers whose input widths (48, 40) a block of 32 does not divide."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(768, 48), nn.Linear(48, 40), nn.Linear(40, 10)

    def forward(self, x):
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x.flatten(1))))))


def test_a_block_that_does_not_divide_a_layers_fan_in_is_adjusted_in_the_plan_and_loads(tmp_path):
    torch.manual_seed(0)
    model, x = OddWidths().eval(), _example()
    plan = _plan(model, x, "default", ["quant.granularity=block", "prune.sparsity=none"])
    assert plan.layer("fc1").block_size == 32  # 768 = 24 blocks
    assert plan.layer("fc2").block_size == 16  # 48: the largest block that divides it
    assert plan.layer("fc3").block_size is None  # 40: no block of 16 or more divides it
    assert any(
        "block 32 does not divide the input dimension 48: block 16" in a for a in plan.adjustments
    )
    student = prepare_qat(clone_model(model), plan)
    student.train()(x)
    student.eval()
    path = tmp_path / "student.onnx"
    onnx.save(student_onnx(student, x), path)
    with torch.no_grad():
        expected = student(x).numpy()
    for name in ("onnxruntime", "openvino"):  # OpenVINO rejects a partial last block
        runtime = get_runtime(name)
        session = runtime.open(
            runtime.build(path, tmp_path / f"{name}{runtime.artifact_suffix}"), precision="exact"
        )
        np.testing.assert_allclose(session.run(x.numpy()), expected, rtol=1e-3, atol=1e-3)


def test_a_block_is_fitted_to_the_fan_in_a_layer_has_once_the_layer_before_is_pruned():
    torch.manual_seed(0)
    model, x = OddWidths().eval(), _example()
    plan = _plan(
        model,
        x,
        "default",
        ["quant.granularity=block", "prune.sparsity=none", "prune.keep_ratio=0.75"],
    )
    assert plan.layer("fc1").block_size == 32  # reads the model's input: 768 stays
    assert plan.layer("fc2").block_size is None  # 48 -> 36 inputs once fc1 keeps 36 channels
    assert (
        "fc2: block 16 does not divide the input dimension 36: per-channel scales"
        in plan.adjustments
    )
    assert plan.layer("fc2").candidates[0]["block_size"] is None  # the one choice agrees


def test_named_inputs_bind_by_name_whatever_their_order_in_the_data(tmp_path):
    model = zoo.tiny_bert()
    tokens = zoo.token_data(8)
    reordered = named(
        {"attention_mask": tokens["attention_mask"], "input_ids": tokens["input_ids"]}
    )
    check_fit(model, SimpleNamespace(train=SimpleNamespace(x=reordered), labelled=False), "tokens")
    with torch.no_grad():
        expected = model(
            torch.from_numpy(tokens["input_ids"]), torch.from_numpy(tokens["attention_mask"])
        )
    path = tmp_path / "teacher.onnx"
    onnx.save(export_float(model, as_example(reordered[:2])), path)
    assert {i.name for i in onnx.load(path).graph.input} == {"input_ids", "attention_mask"}
    for name in ("onnxruntime", "openvino"):
        runtime = get_runtime(name)
        built = runtime.build(path, tmp_path / f"{name}{runtime.artifact_suffix}")
        got = runtime.open(built, precision="exact").run(reordered)
        np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-4)


def test_a_named_input_the_forward_has_no_argument_for_is_a_named_error():
    tokens = zoo.token_data(4)
    x = named({"input_ids": tokens["input_ids"], "token_type_ids": tokens["attention_mask"]})
    with pytest.raises(ShapeError, match="no argument for: token_type_ids"):
        check_fit(
            zoo.tiny_bert(), SimpleNamespace(train=SimpleNamespace(x=x), labelled=False), "tokens"
        )


def test_a_labelled_folder_of_fewer_classes_than_the_teacher_has_outputs_says_how_labels_read(
    tmp_path,
):
    from PIL import Image

    for name, color in (("cats", (200, 30, 30)), ("dogs", (30, 30, 200))):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(15):
            Image.new("RGB", (16, 16), color).save(tmp_path / "images" / name / f"{i}.png")
    lines: list[str] = []
    compress(out=tmp_path / "run", teacher="zoo:resnet", data=str(tmp_path / "images"),
             recipe="w8a8", set=[*FAST, "distill.epochs=1"], log=lines.append)  # fmt: skip
    assert any(
        line.startswith("data: 2 label values for a teacher of 10 outputs") for line in lines
    )
    assert any(line.startswith("data: images: 3-channel") for line in lines)


def test_attention_heads_are_pruned_whole_the_weakest_first_and_replay_the_same():
    from edgekd.prune.structured import kept_heads, prune_channels, replay_pruning

    torch.manual_seed(0)
    teacher = zoo.tiny_bert().eval()
    attention = teacher.layers[0]["attention"]  # 4 heads of 8
    with torch.no_grad():
        for layer in (attention.query, attention.key, attention.value):
            for head in (1, 3):
                layer.weight[head * 8 : (head + 1) * 8] *= 0.01
    x = as_example(named(zoo.token_data(4)))
    plan = _plan(teacher, x, overrides=["prune.keep_ratio=0.5"])
    student = clone_model(teacher)
    decisions = prune_channels(student, plan, x)
    assert kept_heads(teacher, student) == {
        "layers.0.attention": [4, 2],
        "layers.1.attention": [4, 2],
    }
    pruned = student.layers[0]["attention"]
    for name in ("query", "key", "value"):  # heads 0 and 2, the strong ones, in all three
        rows = getattr(attention, name).weight
        torch.testing.assert_close(
            getattr(pruned, name).weight, torch.cat([rows[0:8], rows[16:24]])
        )
    columns = teacher.layers[0]["out"].weight  # and the output projection reads only theirs
    torch.testing.assert_close(
        student.layers[0]["out"].weight, torch.cat([columns[:, 0:8], columns[:, 16:24]], 1)
    )
    replayed = replay_pruning(clone_model(teacher), decisions, x)
    with torch.no_grad():
        torch.testing.assert_close(replayed(**x), student(**x))


def test_embedding_tables_are_stored_as_int8_rows_gathered_before_they_are_dequantized(tmp_path):
    torch.manual_seed(0)
    teacher, tokens = zoo.tiny_bert().eval(), named(zoo.token_data(8))
    x = as_example(tokens)
    # float activations: an int8 code that float sums round differently is not what is tested
    plan = _plan(teacher, x, overrides=["quant.activation_bits=32"])
    assert plan.embeddings == {"tokens": 8, "positions": 8}
    student = prepare_qat(clone_model(teacher), plan).eval()
    with torch.no_grad():
        expected = student(**x).numpy()
    model = student_onnx(student, x)
    tables = {i.name: i for i in model.graph.initializer}
    assert tables["tokens.weight_quantized"].data_type == onnx.TensorProto.INT8
    assert list(tables["tokens.weight_quantized"].dims) == [100, 32]
    assert "tokens.weight" not in tables  # the float table is gone, not kept beside the codes
    readers = [n.op_type for n in model.graph.node if "tokens.weight_quantized" in n.input]
    assert readers == ["Gather"]  # rows first: no DequantizeLinear of the whole table per call
    path = tmp_path / "student.onnx"
    onnx.save(model, path)
    for name in ("onnxruntime", "openvino"):
        runtime = get_runtime(name)
        built = runtime.build(path, tmp_path / f"{name}{runtime.artifact_suffix}")
        got = runtime.open(built, precision="exact").run(tokens)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_embedding_tables_stay_float_where_asked_or_where_a_target_loads_no_integer_table():
    teacher = zoo.tiny_bert().eval()
    x = as_example(named(zoo.token_data(4)))
    assert _plan(teacher, x, overrides=["quant.embedding_bits=float"]).embeddings == {}
    gpu = resolve_plan(load_recipe("w8a8"), [load_target("nvidia-gpu")], teacher, x)
    assert gpu.embeddings == {}
    assert any(
        a.startswith("embedding tables stay float: tensorrt (nvidia-gpu) loads no 8-bit table")
        for a in gpu.adjustments
    )


class FusedAttention(nn.Module):
    """timm-style attention with one fused qkv projection, reshaped by its declared head count
    and head width (so whole heads can go)."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, _ = x.shape
        shape = (b, n, 3, self.num_heads, self.head_dim)
        q, k, v = self.qkv(x).reshape(shape).permute(2, 0, 3, 1, 4)
        context = ((q @ k.transpose(-2, -1)) * self.head_dim**-0.5).softmax(-1) @ v
        return self.proj(context.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))


class FusedBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn, self.head = FusedAttention(), nn.Linear(32, 10)

    def forward(self, x):
        return self.head((x + self.attn(x)).mean(1))


def test_heads_of_a_fused_qkv_projection_go_from_its_query_key_and_value_parts_alike():
    from edgekd.prune.structured import kept_heads, prune_channels, replay_pruning

    torch.manual_seed(0)
    teacher = FusedBlock().eval()
    with torch.no_grad():
        for part in range(3):
            for head in (1, 3):
                start = part * 32 + head * 8
                teacher.attn.qkv.weight[start : start + 8] *= 0.01
    x = torch.randn(4, 6, 32)
    plan = _plan(teacher, x, overrides=["prune.keep_ratio=0.5"])
    student = clone_model(teacher)
    decisions = prune_channels(student, plan, x)
    assert kept_heads(teacher, student) == {"attn": [4, 2]}
    rows = teacher.attn.qkv.weight
    kept = [rows[p * 32 + h * 8 : p * 32 + h * 8 + 8] for p in range(3) for h in (0, 2)]
    torch.testing.assert_close(student.attn.qkv.weight, torch.cat(kept))
    replayed = replay_pruning(clone_model(teacher), decisions, x)
    with torch.no_grad():
        torch.testing.assert_close(replayed(x), student(x))


class TiedTable(nn.Module):
    """A language-model head that reads the token table's own weight (tied embeddings)."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens, self.unembed = nn.Embedding(100, 32), nn.Linear(32, 100, bias=False)
        self.unembed.weight = self.tokens.weight

    def forward(self, input_ids):
        return self.unembed(self.tokens(input_ids).mean(1))


def test_an_embedding_table_tied_to_another_layer_stays_float_with_a_note():
    ids = torch.from_numpy(zoo.token_data(4)["input_ids"])
    plan = _plan(TiedTable().eval(), ids)
    assert plan.embeddings == {}
    assert any(
        a.startswith("embedding tables stay float: their weight is tied") for a in plan.adjustments
    )
