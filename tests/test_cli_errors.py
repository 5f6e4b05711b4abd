"""Bad input: one line naming the problem, a non-zero exit code, no traceback, nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import edgekd

from edgekd.runtimes import get_runtime

TESTS = Path(__file__).parent


def _one_line_error(result, code: int, *needles: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0]


@pytest.fixture
def bad_files(tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 truncated")
    rgb = tmp_path / "rgb.npz"
    np.savez(rgb, x=np.zeros((50, 3, 5, 5), np.float32))
    return {"corrupt": corrupt, "rgb": rgb, "missing": tmp_path / "missing.pt"}


@pytest.mark.parametrize(
    ("args", "code", "needles"),
    [
        (["--recipe", "defualt"], 2, ["unknown recipe preset 'defualt'", "did you mean 'default'"]),
        (["--set", "quant.bitz=4"], 2, ["unknown recipe key 'quant.bitz'"]),
        (["--target", "jetson"], 2, ["unknown target 'jetson'", "edgekd targets"]),
        (
            ["--teacher", "conftest:tiny_net", "--weights", "{missing}"],
            3,
            ["missing.pt' not found"],
        ),
        (
            ["--teacher", "conftest:tiny_net", "--weights", "{corrupt}"],
            3,
            ["corrupt or not a PyTorch file"],
        ),
        (["--data", "{rgb}"], 4, ["inputs of shape [3, 5, 5]", "does not fit the teacher"]),
        (["--teacher", "no/such/model.pt2"], 3, ["model.pt2' not found"]),
    ],
)
def test_bad_input_is_one_line_with_exit_code_and_no_run_dir(
    args, code, needles, bad_files, tmp_path
):
    out = tmp_path / "out"
    args = [a.format(**bad_files) for a in args]
    result = edgekd("compress", "--out", str(out), *args, cwd=TESTS)
    _one_line_error(result, code, *needles)
    assert not out.exists()


def test_stage_command_on_a_missing_run_is_one_line(tmp_path):
    _one_line_error(edgekd("export", str(tmp_path / "nope")), 3, "not an edgekd run directory")


def test_debug_shows_the_traceback(tmp_path):
    result = edgekd("compress", "--out", str(tmp_path / "o"), "--recipe", "nope", "--debug")
    assert result.returncode == 2 and "Traceback" in result.stderr


def test_nan_inputs_are_rejected_before_any_work(tmp_path):
    data = tmp_path / "nan.npz"
    x = np.random.default_rng(0).random((60, 1, 8, 8), dtype=np.float32)
    x[5, 0, 0, 0] = np.nan
    np.savez(data, x=x)
    out = tmp_path / "run"
    _one_line_error(
        edgekd("compress", "--out", str(out), "--data", str(data)), 3, "NaN/Inf values in 1 of 60"
    )
    assert not out.exists()


def test_targets_lists_runtimes_and_says_what_runs_here():
    result = edgekd("targets")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert "x86-cpu" in result.stdout and "x86-cpu-avx2" in result.stdout
    assert any(line.startswith("jetson-orin/tensorrt: this machine is") for line in lines)
    assert not any(line.startswith("x86-cpu/") for line in lines)  # the CPU edgekd runs on
    assert any(line.startswith("nvidia-gpu/tensorrt: ") for line in lines) == (
        get_runtime("tensorrt").unavailable_reason() is not None
    )


def test_recipe_show_prints_resolved_yaml():
    result = edgekd("recipe", "show", "default", "--set", "quant.weight_bits=3")
    assert (
        result.returncode == 0
        and "weight_bits: 3" in result.stdout
        and "sparsity: '2:4'" in result.stdout
    )


def test_version_flag():
    result = edgekd("--version")
    assert result.returncode == 0 and "edgekd, version" in result.stdout


def test_inspect_reports_each_layers_sparsity_and_bits_as_planned(demo_run):
    result = edgekd("inspect", str(demo_run[0]), "--json")
    assert result.returncode == 0, result.stderr
    rows = {r["layer"]: r for r in json.loads(result.stdout)}
    plan = json.loads((demo_run[0] / "plan" / "plan.json").read_text())
    for lp in plan["layers"]:  # what inspect reads from the student is what the plan chose
        assert rows[lp["name"]]["weight_bits"] == (lp["weight_bits"] or 32)
        assert rows[lp["name"]]["sparsity"] == (lp["sparsity"] or "dense")


def test_inspect_teacher_spec_shows_float_weights():
    result = edgekd("inspect", "conftest:tiny_net", "--json", cwd=TESTS)
    assert result.returncode == 0, result.stderr
    assert {r["weight_bits"] for r in json.loads(result.stdout)} == {32}


def test_inspect_of_a_teacher_the_default_data_does_not_fit_says_to_pass_data():
    result = edgekd("inspect", "zoo:resnet", cwd=TESTS)  # (3, 16, 16) inputs, not digits
    _one_line_error(result, 4, "does not fit the teacher", "pass --data")


def test_a_pickled_whole_model_loads_its_classes_from_the_working_directory(tmp_path):
    """As ``python -m edgekd`` does; the console script's sys.path starts at its bin/."""
    (tmp_path / "mymodels.py").write_text(
        "import torch\n\nclass Net(torch.nn.Sequential):\n    pass\n"
    )
    script = (
        "import sys, torch; sys.path.insert(0, '.'); import mymodels; "
        "torch.save(mymodels.Net(torch.nn.Flatten(), torch.nn.Linear(64, 10)), 'whole.pt')"
    )
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True)
    console = Path(sys.executable).with_name("edgekd")
    result = subprocess.run(
        [str(console), "inspect", "whole.pt", "--trust-checkpoint", "--json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert [r["layer"] for r in json.loads(result.stdout)] == ["1"]


def test_inspect_of_a_teacher_with_token_inputs_lists_its_layers(tmp_path):
    import zoo

    data = tmp_path / "tokens.npz"
    np.savez(data, **zoo.token_data(40))
    result = edgekd("inspect", "zoo:tiny_bert", "--data", str(data), "--json", cwd=TESTS)
    assert result.returncode == 0, result.stderr
    assert "layers.0.attention.query" in {r["layer"] for r in json.loads(result.stdout)}
