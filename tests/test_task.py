"""The task (``edgekd/task.py``): inferred from what the teacher returns; teachers of several
outputs, or of one that is not logits, trained and judged on every output, by name."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
import zoo
from torch import nn

from edgekd.data.outputs import pack, paired
from edgekd.errors import ShapeError, StageError
from edgekd.evaluate import torch_fn
from edgekd.export.torch_onnx import export_float
from edgekd.pipeline import compress
from edgekd.plan.damage import RelativeErrorDamage
from edgekd.runtimes import get_runtime
from edgekd.task import Classification, Outputs, infer_task

FAST = [
    "distill.epochs=1",
    "plan.max_accuracy_drop=100",  # one epoch on random data: the exports are what is judged
    "bench.batches=[1]",
    "bench.min_runs=5",
    "bench.min_seconds=0.05",
    "bench.warmup=1",
]


def test_the_task_is_inferred_from_what_the_teacher_returns():
    logits, boxes = torch.zeros(2, 10), torch.zeros(2, 5, 4)
    assert infer_task(logits, "auto", 2) == Classification(("logits",), 10)
    assert infer_task({"scores": logits, "boxes": boxes}, "auto", 2) == Outputs(("scores", "boxes"))
    assert infer_task((logits, boxes), "auto", 2) == Outputs(("output_0", "output_1"))
    assert infer_task(boxes, "auto", 2) == Outputs(("output",))  # not (batch, classes)
    assert infer_task(logits, "outputs", 2) == Outputs(("output",))  # an embedding


@pytest.mark.parametrize(
    ("out", "setting", "message"),
    [
        ({"a": torch.zeros(2, 3), "b": torch.zeros(2, 3)}, "classification", "set task: outputs"),
        ((torch.zeros(2, 3), torch.zeros(4)), "auto", "output_1 have no batch axis"),
        ((torch.zeros(2, 3), torch.tensor(1.0)), "auto", "output_1 have no batch axis"),
        ("text", "auto", "returned str"),
        ([torch.zeros(2, 3), None], "auto", "returned list"),
    ],
)
def test_outputs_a_task_cannot_serve_are_a_one_line_error(out, setting, message):
    with pytest.raises(ShapeError, match=message):
        infer_task(out, setting, 2)


def test_the_outputs_tasks_error_predicts_the_cosine_it_costs():
    rng = np.random.default_rng(0)
    ref = pack(("a", "b"), [rng.standard_normal((200, 8, 3)), rng.standard_normal((200, 16))])
    task = Outputs(("a", "b"))
    assert task.agrees(ref, ref) == 1.0 and task.divergence(ref, ref) == 0.0
    noisy = ref.copy()
    noisy["a"] += 0.1 * rng.standard_normal(noisy["a"].shape)  # relative error about 0.01
    error = task.divergence(noisy, ref)
    assert error == pytest.approx(0.01, rel=0.2)
    lost = 100 * (1 - task.agrees(noisy, ref))
    assert RelativeErrorDamage().points(error) == pytest.approx(lost, rel=0.2)
    row = task.agreement(noisy, ref)
    assert row["outputs"]["b"] == {"cosine": 1.0, "max_abs_error": 0.0}
    assert row["agreement"] == row["outputs"]["a"]["cosine"] < 1.0  # the worst output's


def test_outputs_are_compared_by_name_never_by_position():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    with pytest.raises(StageError, match="re-export"):
        paired(pack(("scores", "boxes"), [a, b]), pack(("boxes", "scores"), [b, a]))


def test_runtimes_return_every_output_under_its_exported_name(tmp_path):
    model, x = zoo.detector(), zoo.data(8)["x"]
    path = tmp_path / "detector.onnx"
    onnx.save(export_float(model, torch.from_numpy(x[:2]), ("scores", "boxes")), path)
    expected = torch_fn(model)(x)
    for name in ("onnxruntime", "openvino"):
        runtime = get_runtime(name)
        built = runtime.build(path, tmp_path / f"{name}{runtime.artifact_suffix}")
        got = runtime.open(built, precision="exact").run(x)
        assert got.dtype.names == ("scores", "boxes"), name
        for out in got.dtype.names:
            np.testing.assert_allclose(got[out], expected[out], rtol=1e-4, atol=1e-5)


class _BatchAsNumber(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x).reshape(len(x), -1)  # len(): a Python number to torch.export


def test_a_forward_that_fixes_the_batch_size_fails_export_saying_what_to_write():
    with pytest.raises(StageError, match=r"fixed the batch size .*use x.shape\[0\]"):
        export_float(_BatchAsNumber(), torch.from_numpy(zoo.data(2)["x"]))


def test_an_embedding_teacher_pruned_by_whole_heads_compresses_as_outputs_judged_by_cosine(
    tmp_path,
):
    np.savez(tmp_path / "tokens.npz", **zoo.token_data())
    run = compress(
        out=tmp_path / "run",
        teacher="zoo:tiny_bert",
        data=str(tmp_path / "tokens.npz"),
        recipe="w8a8",
        set=[*FAST, "task=outputs", "prune.keep_ratio=0.5"],
        log=lambda _line: None,
    )
    report = json.loads((run / "report.json").read_text())
    assert report["task"]["kind"] == "outputs"
    assert report["accuracy_is"].startswith("cosine similarity")
    exported = onnx.load(run / "export" / "student.onnx", load_external_data=False)
    assert [o.name for o in exported.graph.output] == ["output"]
    students = [r for r in report["verify"] if r["model"] == "student"]
    assert {r["runtime"] for r in students} == {"onnxruntime", "openvino"}
    for row in students:
        assert row["status"] == "ok" and set(row["outputs"]) == {"output"}
        assert row["agreement"] == row["outputs"]["output"]["cosine"] >= 0.99
    assert report["student"]["heads"] == {f"layers.{i}.attention": [4, 2] for i in (0, 1)}
    assert "cosine similarity" in (run / "report.md").read_text()
    markdown = (run / "report.md").read_text()
    assert "Attention heads kept: `layers.0.attention` 2 of 4" in markdown
    assert report["student"]["int8_tables"] == ["tokens"]  # the positions' lookup is a constant
    assert (
        "Embedding tables, one scale per row: `tokens` int8, `positions` float (folded into a "
        "constant)." in markdown
    )


class _Rounding(nn.Module):
    """Eight Linear layers, each output rounded to a grid as int8 activations are: a
    change in the last bit of a sum can flip a code, and the flips cascade (a trained W8A8
    MiniLM does this: PyTorch float32 and float64 agree at cosine 0.995)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList(nn.Linear(384, 384) for _ in range(8))

    def forward(self, x):
        for layer in self.layers:
            x = torch.round(torch.tanh(layer(x)) * 64) / 64
        return x


def test_an_export_that_differs_only_as_float_orders_do_is_told_from_a_wrong_one(tmp_path):
    from edgekd.verify import rounding_explains

    model, x = _Rounding().eval(), np.random.default_rng(0).normal(size=(200, 384)).astype("f4")
    path = tmp_path / "m.onnx"
    onnx.save(export_float(model, torch.from_numpy(x[:2]), ("out",)), path)
    session = get_runtime("onnxruntime").open(path, precision="exact")
    exported, pytorch = session.run(x), torch_fn(model)(x)
    exact = torch_fn(model.double(), float_dtype=torch.float64)(x)
    task = Outputs(("out",))
    assert task.agrees(pytorch, exact) < 1.0  # float32 itself flips codes, on any CPU
    assert task.agrees(exported, pytorch) > 0.999  # ORT flips some or none, as its sums fall
    float64 = {"export": task.agrees(exported, exact), "pytorch": task.agrees(pytorch, exact)}
    assert rounding_explains(float64)
    wrong = exported * np.where(np.arange(384) < 8, -1, 1).astype("f4")  # 8 outputs negated
    assert not rounding_explains({**float64, "export": task.agrees(wrong, exact)})
