"""Target files are checked against a schema: one-line errors naming the file, the key and what
it should be, before any work starts."""

from __future__ import annotations

import pytest

from edgekd.errors import InputError
from edgekd.targets import load_target, target_names

RUNTIME = "name: mine\narch: [x86_64]\nruntimes:\n  onnxruntime:\n    weight_bits: [4, 8]\n"


def write(tmp_path, text: str) -> str:
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    return str(path)


def test_every_builtin_target_passes_the_schema():
    for name in target_names():
        assert load_target(name).runtimes


def test_a_list_of_ops_written_as_one_string_is_rejected_with_a_hint(tmp_path):
    path = write(tmp_path, RUNTIME + "    sparse_2of4: Conv\n")
    with pytest.raises(InputError) as err:
        load_target(path)
    assert str(err.value) == (
        f"target '{path}': runtimes.onnxruntime.sparse_2of4 must be a list, got 'Conv' "
        "(write [Conv])"
    )


def test_a_bare_string_is_rejected_in_a_branch_the_cpu_does_not_take(tmp_path):
    path = write(tmp_path, RUNTIME + "    sparse_2of4: {amx: Conv, default: []}\n")
    with pytest.raises(
        InputError, match=r"sparse_2of4 must be a list, got 'Conv' \(write \[Conv\]\)"
    ):
        load_target(path)


def test_an_unknown_key_names_the_file_the_key_and_the_nearest_valid_one(tmp_path):
    path = write(tmp_path, RUNTIME + "    sparse_2of: [Conv]\n")
    with pytest.raises(InputError) as err:
        load_target(path)
    assert str(err.value) == (
        f"target '{path}': unknown key 'runtimes.onnxruntime.sparse_2of' "
        "(did you mean 'sparse_2of4'?)"
    )
    top = write(tmp_path, "name: mine\narhc: [x86_64]\nruntimes: {}\n")
    with pytest.raises(InputError, match=r"unknown key 'arhc' \(did you mean 'arch'\?\)"):
        load_target(top)


def test_an_unknown_key_in_a_file_that_extends_another_is_an_error(tmp_path):
    path = write(tmp_path, "extends: x86-cpu\nname: mine\ncpu: [avx2]\ndescripton: typo\n")
    with pytest.raises(
        InputError, match=r"unknown key 'descripton' \(did you mean 'description'\?\)"
    ):
        load_target(path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("    lowbit_kernels: {conv: [8]}\n",
         "lowbit_kernels.conv must be one of 'Conv', 'Gemm', 'MatMul' or 'Gather', got 'conv' (did you mean 'Conv'?)"),
        ("    faster_than_float: {Conv: [3]}\n",
         "faster_than_float.Conv[0] must be one of 4 or 8, got 3"),
        ("    int8_weight_bits: 6\n", "int8_weight_bits must be one of 7 or 8, got 6"),
        ("    symmetric_only: 1\n", "symmetric_only must be true or false, got 1"),
    ],
)  # fmt: skip
def test_op_names_widths_and_flags_are_checked_by_the_schema(tmp_path, line, message):
    path = write(tmp_path, RUNTIME + line)
    with pytest.raises(InputError) as err:
        load_target(path)
    assert message in str(err.value)


def test_a_runtime_without_weight_bits_is_an_error(tmp_path):
    path = write(tmp_path, "name: mine\narch: [x86_64]\nruntimes:\n  onnxruntime: {device: CPU}\n")
    with pytest.raises(InputError, match="runtimes.onnxruntime.weight_bits is required"):
        load_target(path)
