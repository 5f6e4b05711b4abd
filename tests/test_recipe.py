from __future__ import annotations

import pytest
import yaml
from conftest import edgekd

from edgekd.errors import InputError, UsageError
from edgekd.plan import resolve_plan
from edgekd.recipe import load_recipe, presets
from edgekd.targets import load_target


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
    with pytest.raises(UsageError, match="distill.epochs' must be an integer, got 'many'"):
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


def test_misspelled_key_is_one_line_exit_2_naming_the_nearest_key():
    result = edgekd("recipe", "show", "default", "--set", "plan.max_acuracy_drop=2")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr
    assert (
        "unknown recipe key 'plan.max_acuracy_drop' (did you mean 'max_accuracy_drop'?)" in lines[0]
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("prune.keep_ratio=0", "'prune.keep_ratio' must be in (0, 1], got 0"),
        ("plan.max_accuracy_drop=101", "'plan.max_accuracy_drop' must be in (0, 100], got 101"),
        ("verify.min_agreement=1.5", "'verify.min_agreement' must be in [0, 1], got 1.5"),
        ("plan.max_rounds=0", "'plan.max_rounds' must be >= 1, got 0"),
        ("quant.block_size=3", "'quant.block_size' must be an even number >= 2, got 3"),
        ("plan.keep_ratios=[1, 0]", "'plan.keep_ratios[1]' must be in (0, 1], got 0"),
        ("plan.latency_target=0", "'plan.latency_target' must be > 0 or null, got 0"),
        ("distill.lr=-1", "'distill.lr' must be > 0 or 'auto', got -1"),
        ("quant.granularity=blok", "must be one of 'per_channel' or 'block', got 'blok' (did you mean 'block'?)"),
    ],
)  # fmt: skip
def test_a_value_out_of_its_range_names_the_range_when_the_recipe_loads(override, message):
    with pytest.raises(UsageError) as err:
        load_recipe("default", [override])
    assert message in str(err.value)


def test_a_list_of_patterns_written_as_one_string_is_an_error_with_a_hint():
    with pytest.raises(
        UsageError, match=r"'prune.skip' must be a list, got 'head' \(write \[head\]\)"
    ):
        load_recipe("default", ["prune.skip=head"])


def test_an_invalid_layer_regex_is_an_error_when_the_recipe_loads():
    with pytest.raises(
        UsageError, match=r"'quant.overrides\[0\].match': '\[' is not a valid regex"
    ):
        load_recipe("default", ["quant.overrides=[{match: '['}]"])


def test_a_layer_pattern_matching_no_layer_is_an_error_naming_the_pattern_and_layers(tiny, example):
    recipe = load_recipe("default", ["prune.skip=['classifier.*']"])
    with pytest.raises(UsageError) as err:
        resolve_plan(recipe, [load_target("x86-cpu")], tiny, example)
    assert "prune.skip[0] 'classifier.*' matches no layer of the teacher" in str(err.value)
    assert "features.0, features.3, head.1, head.3" in str(err.value)


def test_a_layer_pattern_matches_whole_names_not_a_substring(tiny, example):
    recipe = load_recipe("default", ["quant.overrides=[{match: 'head', weight_bits: 8}]"])
    with pytest.raises(UsageError, match=r"quant.overrides\[0\].match 'head' matches no layer"):
        resolve_plan(recipe, [load_target("x86-cpu")], tiny, example)
    whole = load_recipe("default", ["quant.overrides=[{match: '.*\\.3', weight_bits: 8}]"])
    plan = resolve_plan(whole, [load_target("x86-cpu")], tiny, example)
    assert {lp.name: lp.weight_bits for lp in plan.layers} == {
        "features.0": 4, "features.3": 8, "head.1": 4, "head.3": 8,
    }  # fmt: skip
