from __future__ import annotations

import pytest
import yaml

from edgekd.errors import InputError, UsageError
from edgekd.recipe import load_recipe, presets


def test_presets_include_default_and_w8a8():
    assert {"default", "w8a8"} <= set(presets())


def test_default_preset_is_2of4_w4a8():
    r = load_recipe("default")
    assert (r.prune.sparsity, r.quant.weight_bits, r.quant.activation_bits) == ("2:4", 4, 8)


def test_override_sets_nested_key_with_yaml_typing():
    r = load_recipe("default", ["quant.weight_bits=3", "distill.lr=0.01", "bench.batches=[1, 8]"])
    assert (r.quant.weight_bits, r.distill.lr, r.bench.batches) == (3, 0.01, [1, 8])


def test_unknown_key_names_key_and_nearest_valid_one():
    with pytest.raises(UsageError, match=r"unknown recipe key 'quant.wieght_bits'.*'weight_bits'"):
        load_recipe("default", ["quant.wieght_bits=4"])


def test_unknown_key_in_file_is_an_error(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("prune:\n  keep_ration: 0.5\n")
    with pytest.raises(UsageError, match="prune.keep_ration.*keep_ratio"):
        load_recipe(str(path))


def test_wrong_value_type_and_choice_are_errors():
    with pytest.raises(UsageError, match="weight_bits' must be one of"):
        load_recipe("default", ["quant.weight_bits=5"])
    with pytest.raises(UsageError, match="distill.epochs' must be int"):
        load_recipe("default", ["distill.epochs=many"])


def test_unknown_preset_suggests_nearest():
    with pytest.raises(UsageError, match="did you mean 'default'"):
        load_recipe("defualt")


def test_missing_file_and_bad_yaml_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_recipe(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("prune: [unclosed\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_recipe(str(bad))


def test_resolved_yaml_round_trips():
    r = load_recipe("w8a8", ["quant.overrides=[{match: 'classifier.*', weight_bits: 4}]"])
    again = load_recipe("default", [])
    assert r.quant.overrides[0].weight_bits == 4
    assert yaml.safe_load(r.to_yaml())["quant"]["weight_bits"] == 8
    assert again.to_dict() != r.to_dict()


def test_out_of_range_values_are_usage_errors_before_any_work(tiny, example):
    from edgekd.plan import resolve_plan
    from edgekd.targets import load_target

    for bad in (
        "distill.epochs=0",
        "distill.batch_size=0",
        "bench.min_runs=0",
        "bench.batches=[0]",
    ):
        with pytest.raises(UsageError, match=bad.split("=")[0]):
            resolve_plan(load_recipe("default", [bad]), [load_target("x86-cpu")], tiny, example)


def test_exponent_floats_are_accepted_and_broken_yaml_is_named():
    assert load_recipe("default", ["distill.lr=1e-3"]).distill.lr == 0.001
    with pytest.raises(UsageError, match="not valid YAML"):
        load_recipe("default", ["quant.weight_bits=[4"])


def test_a_learning_rate_is_a_positive_number_or_auto():
    assert load_recipe("default").distill.lr == "auto"
    assert load_recipe("default", ["distill.lr=3e-4"]).distill.lr == 0.0003
    with pytest.raises(UsageError, match="distill.lr"):
        load_recipe("default", ["distill.lr=fast"])
