from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from slothline.builtin import ensure_builtin
from slothline.errors import SlothlineError
from slothline.models import kind_of_config, model_config, resolve_model

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "<think>\nadd them\n</think>\n\nThe answer is 4."},
]


def test_builtin_is_deterministic(tmp_path):
    first = ensure_builtin("tiny-qwen3", tmp_path / "one")
    second = ensure_builtin("tiny-qwen3", tmp_path / "two")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes()


def test_builtin_loads_like_any_local_checkpoint(tiny_qwen3):
    path = tiny_qwen3
    assert resolve_model("builtin:tiny-qwen3") == path
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert model.config.model_type == "qwen3"
    assert model.config.eos_token_id == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.pad_token == "<|endoftext|>"
    assert resolve_model(path) == path


def test_byte_level_tokenizer_round_trips_any_text(tokenizer):
    text = "Ünïcödé, 数字 123 and emoji 🦥\n\ttabs"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert len(tokenizer("<|im_start|><think>")["input_ids"]) == 2


def test_chat_template_matches_qwen3(tokenizer):
    text = tokenizer.apply_chat_template(CHAT, tokenize=False)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nadd them\n</think>\n\nThe answer is 4.<|im_end|>\n"
    )


def test_chat_template_thinking_switch(tokenizer):
    prompt = lambda thinking: tokenizer.apply_chat_template(
        CHAT[:2], tokenize=False, add_generation_prompt=True, enable_thinking=thinking
    )
    assert prompt(True).endswith("<|im_start|>assistant\n")
    assert prompt(False).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_earlier_turns_drop_their_reasoning(tokenizer):
    chat = CHAT + [{"role": "user", "content": "And 3 + 3?"}, {"role": "assistant", "content": "6."}]
    text = tokenizer.apply_chat_template(chat, tokenize=False)
    assert "add them" not in text
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n6.<|im_end|>\n")


def test_unknown_builtin_and_bad_local_path(tmp_path):
    with pytest.raises(SlothlineError, match="unknown builtin model 'builtin:huge'"):
        resolve_model("builtin:huge")
    with pytest.raises(SlothlineError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_a_model_name_that_is_neither_a_directory_nor_reachable(monkeypatch):
    """A mistyped local path reads like a hub id ("models/nope"): the message says it is no local directory."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(SlothlineError, match=r"model.name: 'models/nope' is no local directory, and its config could "
                                             r"not be fetched from the hub \(.*\); use a local model directory"):
        model_config("models/nope")


def test_a_model_directory_whose_config_is_not_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(SlothlineError, match=r"model.name: '.*''s config.json is not readable JSON \(JSONDecodeError"):
        model_config(str(tmp_path))


def test_each_builtin_config_is_of_its_kind(tiny_qwen3, tiny_qwen3_vl, tiny_modernbert):
    assert [kind_of_config(model_config(name)) for name in (tiny_qwen3, tiny_qwen3_vl, tiny_modernbert)] == [
        "causal_lm", "vision", "classifier"]
    assert kind_of_config(model_config("builtin:tiny-modernbert")) == "classifier"


@pytest.mark.parametrize(("config", "kind"), [
    ({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, "causal_lm"),
    ({"model_type": "qwen2_5_vl", "architectures": ["Qwen2_5_VLForConditionalGeneration"]}, "vision"),
    ({"model_type": "bert", "architectures": ["BertForMaskedLM"]}, "classifier"),
    ({"model_type": "deberta-v2"}, "classifier"),  # the family says so, without architectures
    # families without a record: the architecture or a vision tower tells
    ({"model_type": "newencoder", "architectures": ["NewEncoderForSequenceClassification"]}, "classifier"),
    ({"model_type": "newvlm", "architectures": ["NewVlmForConditionalGeneration"], "vision_config": {}}, "vision"),
    ({"model_type": "newdecoder", "architectures": ["NewDecoderForCausalLM"]}, "causal_lm"),
    ({"model_type": "newthing", "architectures": ["NewThingModel"]}, None),
    ({}, None),
])
def test_kind_of_config(config, kind):
    assert kind_of_config(config) == kind


def test_a_hub_model_not_in_the_offline_cache_is_named_as_such(monkeypatch):
    """Offline, a file the local cache lacks is not a file the model lacks (which would silently mean, say, no
    generation_config.json stop tokens): the error says what to do."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError

    from slothline.models import model_file

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("Cannot find the requested files in the disk cache")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *args, **kwargs: None)  # never fetched
    with pytest.raises(SlothlineError, match=r"'org/some-model' is no local directory, and its config.json is neither "
                                             r"in the local Hugging Face cache nor reachable on the hub"):
        model_file("org/some-model", "config.json")
    with pytest.raises(SlothlineError, match="its generation_config.json is neither"):
        model_file("org/some-model", "generation_config.json")
    cached = lambda repo, filename, **kwargs: f"/cache/{repo}/{filename}" if filename == "config.json" else None
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", cached)  # fetched, without that file
    assert model_file("org/some-model", "generation_config.json") is None

    class Response:  # what the hub answers for a file the repository does not hold
        status_code, headers, request = 404, {}, None

    def absent(*args, **kwargs):
        raise RemoteEntryNotFoundError("404 Client Error: Entry Not Found", response=Response())

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", absent)
    assert model_file("org/some-model", "generation_config.json") is None


def test_a_tokenizer_shipped_as_a_sentencepiece_model_alone_loads(tmp_path):
    """DeBERTa-v3 checkpoints ship spm.model without a tokenizer.json: transformers converts it through
    sentencepiece, a dependency of the project (without it the error blamed tiktoken)."""
    import json

    import sentencepiece
    from transformers import DebertaV2Config

    from slothline.models import load_tokenizer

    corpus = Path(__file__).parents[1] / "slothline" / "builtin" / "tokenizer_corpus.txt"
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(tmp_path / "spm"), vocab_size=200, pad_id=0, unk_id=1, bos_id=-1,
        eos_id=-1, pad_piece="[PAD]", unk_piece="[UNK]", user_defined_symbols=["[CLS]", "[SEP]", "[MASK]"],
        minloglevel=2)
    model = tmp_path / "deberta-v3"
    DebertaV2Config(vocab_size=200, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=64).save_pretrained(model)
    (tmp_path / "spm.model").rename(model / "spm.model")
    (model / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "DebertaV2Tokenizer"}))
    tokenizer = load_tokenizer(str(model))
    ids = tokenizer("hello world")["input_ids"]
    assert ids[0] == tokenizer.convert_tokens_to_ids("[CLS]") and ids[-1] == tokenizer.convert_tokens_to_ids("[SEP]")
    assert tokenizer.decode(ids[1:-1]) == "hello world"
