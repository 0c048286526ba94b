import re

import pytest

from stages.lib.errors import SlothlineError
from stages.lib.params import Params, check_pipeline_needs, load_params

SOURCE = {"path": "data/raw/alpaca.jsonl", "format": "alpaca"}


def error_of(tmp_path, text: str) -> str:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(SlothlineError) as caught:
        load_params(path)
    return str(caught.value)


def test_project_params_are_valid():
    params = load_params()
    assert params.model.name == "builtin:tiny-qwen3"
    assert [s.format for s in params.data.sources] == ["alpaca", "sharegpt", "messages", "reasoning"]


def test_unknown_key_names_full_path_and_closest_valid_name(tmp_path):
    message = error_of(tmp_path, "data: {sources: [{path: a.jsonl, format: alpaca}]}\nlora: {rnak: 32}\n")
    assert "lora.rnak: unknown parameter; did you mean lora.r?" in message


def test_unknown_key_inside_a_source(tmp_path):
    message = error_of(tmp_path, "data: {sources: [{path: a.jsonl, format: alpaca, wieght: 2}]}\n")
    assert "data.sources[0].wieght: unknown parameter; did you mean data.sources[0].weight?" in message


def test_unknown_section(tmp_path):
    message = error_of(tmp_path, "data: {sources: [{path: a.jsonl, format: alpaca}]}\ntrian: {epochs: 1}\n")
    assert "trian: unknown parameter; did you mean train?" in message


def test_wrong_type_and_out_of_range_name_the_key(tmp_path):
    message = error_of(
        tmp_path,
        "data: {sources: [{path: a.jsonl, format: alpaca}]}\nlora: {r: many}\ntrain: {learning_rate: -1}\n",
    )
    assert "lora.r: Input should be a valid integer" in message and "'many'" in message
    assert "train.learning_rate: Input should be greater than 0 (got -1)" in message


def test_unknown_format_lists_the_allowed_ones(tmp_path):
    message = error_of(tmp_path, "data: {sources: [{path: a.jsonl, format: dolly}]}\n")
    assert ("data.sources[0].format: must be one of 'alpaca', 'sharegpt', 'messages', 'reasoning', 'vqa', "
            "'sharegpt_vision' or 'classification' (got 'dolly')") in message


@pytest.mark.parametrize("weight", [0, -1])
def test_non_positive_weight(tmp_path, weight):
    message = error_of(tmp_path, f"data: {{sources: [{{path: a.jsonl, format: alpaca, weight: {weight}}}]}}\n")
    assert "data.sources[0].weight: Input should be greater than 0" in message


def test_split_fractions_must_leave_a_train_split(tmp_path):
    message = error_of(
        tmp_path, "data: {sources: [{path: a.jsonl, format: alpaca}], val_fraction: 0.5, test_fraction: 0.5}\n"
    )
    assert "val_fraction + test_fraction must be < 1" in message



@pytest.mark.parametrize("val_fraction", [0.1, 0])
def test_check_params_refuses_a_pipeline_without_a_test_split(tmp_path, val_fraction):
    """prepare accepts test_fraction: 0, but evaluate needs the test split: check_params, the DAG's first
    stage, refuses it before anything trains."""
    path = tmp_path / "params.yaml"
    path.write_text(f"data: {{sources: [{{path: a.jsonl, format: alpaca}}], val_fraction: {val_fraction}, "
                    "test_fraction: 0}\n")
    with pytest.raises(SlothlineError, match=r"data.test_fraction: 0 leaves no test split.*set it above 0"):
        check_pipeline_needs(load_params(path), path)
    path.write_text("data: {sources: [{path: a.jsonl, format: alpaca}], val_fraction: 0, test_fraction: 0.1}\n")
    check_pipeline_needs(load_params(path), path)  # no validation split is fine


def test_missing_sources(tmp_path):
    assert "data: required parameter is missing" in error_of(tmp_path, "model: {name: builtin:tiny-qwen3}\n")


def test_defaults_fill_every_section():
    params = Params.model_validate({"data": {"sources": [SOURCE]}})
    assert params.lora.r == 16 and params.train.backend == "auto" and params.data.sources[0].weight == 1.0


def test_a_quantization_listed_twice(tmp_path):
    message = error_of(tmp_path, "data: {sources: [{path: a.jsonl, format: alpaca}]}\nexport: {gguf_quantization: [f16, f16]}\n")
    assert "export: gguf_quantization lists a quantization twice" in message


def test_loftq_with_a_4bit_base_is_refused(tmp_path):
    message = error_of(tmp_path, "data: {sources: [{path: a.jsonl, format: alpaca}]}\nlora: {loftq: true}\n"
                                 "model: {load_in_4bit: true}\n")
    assert re.search("lora.loftq quantises the 16-bit base itself.*set model.load_in_4bit: false", message)
