import re

import pytest
import yaml

from slothline import kinds
from slothline.errors import SlothlineError
from slothline.params import load_params
from tests.conftest import ROOT, kind_defaults, load, write_params


def error_of(tmp_path, kind: str = "causal_lm", **sections) -> str:
    """load_params' error for the kind's defaults with `sections` merged in."""
    write_params(tmp_path, kind, **sections)
    return raw_error_of(tmp_path)


def raw_error_of(tmp_path, params: dict | None = None) -> str:
    if params is not None:
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.raises(SlothlineError) as caught:
        load_params(tmp_path / "params.yaml")
    return str(caught.value)


def test_project_params_are_valid():
    params = load_params(ROOT / "params.yaml")
    assert params.kind == "causal_lm" and params.model.name == "builtin:tiny-qwen3"
    assert [s.format for s in params.data.sources] == ["alpaca", "sharegpt", "messages", "reasoning"]


@pytest.mark.parametrize(("kind", "model"), [("causal_lm", "builtin:tiny-qwen3"), ("vision", "builtin:tiny-qwen3-vl"),
                                             ("classifier", "builtin:tiny-modernbert")])
def test_every_kinds_defaults_are_valid_for_that_kind(tmp_path, kind, model):
    write_params(tmp_path, kind)
    params = load_params(tmp_path / "params.yaml")
    assert (params.kind, params.model.name, type(params)) == (kind, model, kinds.get(kind).Params)


def test_unknown_key_names_full_path_and_closest_valid_name(tmp_path):
    message = error_of(tmp_path, lora={"rnak": 32})
    assert "lora.rnak: unknown parameter for causal_lm models; did you mean lora.r?" in message


def test_unknown_key_inside_a_source(tmp_path):
    message = error_of(tmp_path, data={"sources": [{"path": "a.jsonl", "format": "alpaca", "wieght": 2}]})
    assert ("data.sources[0].wieght: unknown parameter for causal_lm models; did you mean data.sources[0].weight?"
            in message)


def test_unknown_section(tmp_path):
    message = error_of(tmp_path, trian={"epochs": 1})
    assert "trian: unknown parameter for causal_lm models; did you mean train?" in message


def test_wrong_type_and_out_of_range_name_the_key(tmp_path):
    message = error_of(tmp_path, lora={"r": "many"}, train={"learning_rate": -1})
    assert "lora.r: Input should be a valid integer" in message and "'many'" in message
    assert "train.learning_rate: Input should be greater than 0 (got -1)" in message


@pytest.mark.parametrize(("kind", "section", "key"), [
    ("causal_lm", "data", "labels"),
    ("causal_lm", "data", "image_max_pixels"),
    ("causal_lm", "lora", "finetune_vision_layers"),
    ("vision", "train", "packing"),
    ("classifier", "export", "gguf_quantization"),
    ("classifier", "evaluate", "temperature"),
    ("classifier", "evaluate", "max_new_tokens"),
    ("classifier", "data", "system_prompt"),
    ("classifier", "train", "train_on_responses_only"),
    ("classifier", "train", "packing"),
    ("classifier", "data", "image_min_pixels"),
])
def test_a_setting_of_another_kind_is_an_unknown_parameter(tmp_path, kind, section, key):
    """Kind-only settings exist only in their kind's params; elsewhere they are refused like a typo."""
    value = {"labels": ["a", "b"], "finetune_vision_layers": False, "gguf_quantization": ["f16"],
             "system_prompt": "Be brief."}.get(key, True if key in ("packing", "train_on_responses_only") else 9)
    message = error_of(tmp_path, kind, **{section: {key: value}})
    assert re.search(rf"^  {section}\.{key}: unknown parameter for {kind} models; (did you mean|valid keys here)",
                     message, re.M), message


@pytest.mark.parametrize(("kind", "section", "key", "value"), [
    ("classifier", "data", "labels", ["negative", "positive"]),
    ("vision", "data", "image_max_pixels", 1000),
    ("vision", "lora", "finetune_vision_layers", False),
    ("causal_lm", "train", "packing", True),
    ("causal_lm", "export", "gguf_quantization", ["f16"]),
    ("vision", "export", "gguf_quantization", ["f16"]),
    ("causal_lm", "evaluate", "temperature", 0.7),
    ("vision", "evaluate", "temperature", 0.7),
    ("vision", "train", "train_on_responses_only", False),
])
def test_a_setting_of_its_own_kind_is_accepted(tmp_path, kind, section, key, value):
    write_params(tmp_path, kind, **{section: {key: value}})
    assert getattr(getattr(load_params(tmp_path / "params.yaml"), section), key) == value


def test_a_source_template_is_a_chat_setting(tmp_path):
    chat_source = {"path": "a.jsonl", "format": "alpaca", "template": "alpaca"}
    assert load(data={"sources": [chat_source]}).data.sources[0].template == "alpaca"
    message = error_of(tmp_path, "classifier", data={"sources": [{**chat_source, "format": "classification"}]})
    assert "data.sources[0].template: unknown parameter for classifier models" in message
    message = error_of(tmp_path, "vision", data={"sources": [{**chat_source, "format": "messages"}]})
    assert "data.sources[0].template: must be one of 'chat' (got 'alpaca')" in message


def test_kind_missing_names_the_kinds(tmp_path):
    params = dict(kind_defaults("causal_lm"))
    del params["kind"]
    message = raw_error_of(tmp_path, params)
    assert message.startswith(f"{tmp_path / 'params.yaml'}: kind: missing; set it to one of causal_lm, classifier, "
                              "vision (`dvc exp run -S kind=vision` composes that kind's defaults)")


def test_unknown_kind_names_the_kinds(tmp_path):
    message = raw_error_of(tmp_path, {**kind_defaults("causal_lm"), "kind": "text"})
    assert message == "kind: 'text' is not a model kind; use one of causal_lm, classifier, vision"
    assert kinds.names() == ["causal_lm", "classifier", "vision"]


def test_a_kind_that_does_not_match_the_model_is_refused_before_anything_runs():
    """model.kind inferred from the model is gone: `kind` is set, and checked against the model's config."""
    with pytest.raises(SlothlineError) as caught:
        kinds.check(kinds.get("vision"), load("vision", model={"name": "builtin:tiny-qwen3"}))
    assert str(caught.value) == ("kind: vision, but builtin:tiny-qwen3's config is that of a causal_lm model; switch "
                                 "with `dvc exp run -S kind=causal_lm` (or set kind: causal_lm)")
    with pytest.raises(SlothlineError, match=r"^kind: causal_lm, but builtin:tiny-modernbert's config is that of a "
                                             r"classifier model; switch with `dvc exp run -S kind=classifier`"):
        kinds.check(kinds.get("causal_lm"), load(model={"name": "builtin:tiny-modernbert"}))


def test_a_format_of_another_kind_is_refused_before_anything_runs():
    params = load(data={"sources": [{"path": "a.jsonl", "format": "dolly"}]})
    with pytest.raises(SlothlineError) as caught:
        kinds.check(kinds.get("causal_lm"), params)
    assert str(caught.value) == ("data.sources[0].format: dolly is not a format of causal_lm models; use one of "
                                 "alpaca, sharegpt, messages, reasoning")
    params = load("classifier", data={"sources": [{"path": "a.jsonl", "format": "alpaca"}]})
    with pytest.raises(SlothlineError, match=r"^data.sources\[0\].format: alpaca is not a format of classifier "
                                             r"models; use one of classification$"):
        kinds.check(kinds.get("classifier"), params)


@pytest.mark.parametrize("weight", [0, -1])
def test_non_positive_weight(tmp_path, weight):
    message = error_of(tmp_path, data={"sources": [{"path": "a.jsonl", "format": "alpaca", "weight": weight}]})
    assert "data.sources[0].weight: Input should be greater than 0" in message


def test_split_fractions_must_leave_a_train_split(tmp_path):
    message = error_of(tmp_path, data={"val_fraction": 0.5, "test_fraction": 0.5})
    assert "val_fraction + test_fraction must be < 1" in message


@pytest.mark.parametrize("val_fraction", [0.1, 0])
def test_check_params_refuses_a_pipeline_without_a_test_split(val_fraction):
    """prepare accepts test_fraction: 0, but evaluate needs the test split: check_params, the DAG's first
    stage, refuses it before anything trains."""
    task = kinds.get("causal_lm")
    with pytest.raises(SlothlineError, match=r"data.test_fraction: 0 leaves no test split.*set it above 0"):
        kinds.check(task, load(data={"val_fraction": val_fraction, "test_fraction": 0}))
    kinds.check(task, load(data={"val_fraction": 0, "test_fraction": 0.1}))  # no validation split is fine


def test_missing_sources(tmp_path):
    params = kind_defaults("causal_lm")
    message = raw_error_of(tmp_path, {**params, "data": {k: v for k, v in params["data"].items() if k != "sources"}})
    assert "data.sources: required parameter is missing" in message
    message = raw_error_of(tmp_path, {"kind": "causal_lm", "model": {"name": "builtin:tiny-qwen3"}})
    assert "data: required parameter is missing" in message


def test_defaults_fill_every_section():
    source = {"path": "data/raw/alpaca.jsonl", "format": "alpaca"}
    params = kinds.get("causal_lm").Params.model_validate({"kind": "causal_lm", "data": {"sources": [source]}})
    assert params.lora.r == 16 and params.train.backend == "auto" and params.data.sources[0].weight == 1.0
    assert params.push is None and params.train.packing is False and params.evaluate.max_new_tokens == 64
    classifier = kinds.get("classifier").Params.model_validate({"kind": "classifier", "data": {"sources": [source]}})
    assert classifier.data.labels is None and classifier.export.formats == ["onnx"]


def test_a_quantization_listed_twice(tmp_path):
    message = error_of(tmp_path, export={"gguf_quantization": ["f16", "f16"]})
    assert "export.gguf_quantization: lists a quantization twice (['f16', 'f16']); list each once" in message


def test_loftq_with_a_4bit_base_is_refused(tmp_path):
    message = error_of(tmp_path, lora={"loftq": True}, model={"load_in_4bit": True})
    assert re.search("lora.loftq quantises the 16-bit base itself.*set model.load_in_4bit: false", message)


def test_push_defaults_and_its_old_place_is_gone(tmp_path):
    push = load(push={"repo_id": "me/my-model"}).push
    assert (push.repo_id, push.what, push.private, push.revision) == ("me/my-model", ["merged"], True, None)
    message = error_of(tmp_path, export={"push_to_hub": {"repo_id": "me/my-model"}})
    assert "export.push_to_hub: unknown parameter for causal_lm models" in message


@pytest.mark.parametrize(("kind", "push", "sections", "message"), [
    ("causal_lm", {"repo_id": "my-model"}, {},
     "push.repo_id: must be namespace/name: your user or organization, then the model (e.g. me/my-model)"),
    ("causal_lm", {"repo_id": "me/m", "what": ["merged", "weights"]}, {},
     "push.what[1]: must be one of 'adapter', 'merged', 'gguf' or 'onnx' (got 'weights')"),
    ("causal_lm", {"repo_id": "me/m", "what": ["merged", "merged"]}, {}, "push.what: lists an item twice; list each once"),
    ("causal_lm", {"repo_id": "me/m", "repo": "x"}, {},
     "push.repo: unknown parameter for causal_lm models; did you mean push.repo_id?"),
    ("causal_lm", {"repo_id": "me/m", "what": ["gguf"]}, {"export": {"formats": []}},
     "push.what lists gguf, but export.formats has no gguf, so no GGUF file is written; add gguf to export.formats, "
     "or remove gguf from push.what"),
    ("causal_lm", {"repo_id": "me/m", "what": ["onnx"]}, {},
     "push.what lists onnx, but export.formats has no onnx, so no ONNX file is written; add onnx to export.formats, "
     "or remove onnx from push.what"),
    ("classifier", {"repo_id": "me/m", "what": ["onnx"]}, {"export": {"formats": []}},
     "push.what lists onnx, but export.formats has no onnx"),
    ("causal_lm", {"repo_id": "me/m", "what": ["merged"]}, {"merge": {"save_method": "lora"}},
     "push.what lists merged, but merge.save_method: lora writes no merged model; push adapter instead, or set "
     "merge.save_method: merged_16bit"),
    ("vision", {"repo_id": "me/m", "what": ["adapter"]}, {"train": {"full_finetuning": True}},
     "push.what lists adapter, but train.full_finetuning: true trains no adapter; push merged instead"),
])
def test_push_is_cross_checked_against_the_other_sections(tmp_path, kind, push, sections, message):
    assert message in error_of(tmp_path, kind, push=push, **sections)


@pytest.mark.parametrize(("kind", "push"), [("causal_lm", {"repo_id": "me/m", "what": ["adapter", "merged", "gguf"]}),
                                            ("classifier", {"repo_id": "me/m", "what": ["merged", "onnx"]})])
def test_push_of_what_the_pipeline_writes_is_accepted(kind, push):
    assert load(kind, push=push).push.what == push["what"]
