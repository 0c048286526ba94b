"""GGUF export of every family with a GGUF recipe, each checked by llama.cpp: tiny random checkpoints of each
family (with a tokenizer of the family's type) are exported as the export stage does, and llama.cpp must
tokenize a probe text and the chat prompt as the model's tokenizer does and generate its 16 greedy tokens."""

import dataclasses
import json
from pathlib import Path

import pytest

from slothline import families
from slothline.export import gguf_refusal
from slothline.export.gguf import export_gguf, generation_check, text_reference, write_gguf
from slothline.export import pre_tokenizer
from tests.tiny_families import byte_level_tokenizer, tiny_family_model

FAMILIES = ["gemma3_text", "mistral", "phi3", "llama"]


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request, tmp_path_factory):
    return tiny_family_model(tmp_path_factory.mktemp(request.param) / "merged", request.param)


@pytest.mark.llama_cpp
def test_each_family_exports_as_llama_cpp_computes_it(family_model, tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: pip install -e '.[test]'")
    report = export_gguf(family_model, tmp_path, ["f16", "q8_0"])
    architecture = families.family(json.loads((family_model / "config.json").read_text())["model_type"]).gguf.arch
    for quantization in ("f16", "q8_0"):
        assert report[quantization]["architecture"] == architecture
        assert report[quantization]["generation_check"] == "16 of 16 greedy tokens match transformers"
        assert (tmp_path / quantization / "Modelfile").read_text().startswith("FROM ./model.gguf\n")


@pytest.mark.llama_cpp
@pytest.mark.parametrize("model_type, change", [
    ("gemma3_text", {"norm_shift": 0.0}),  # Gemma's norms as stored, without the 1 it adds
    ("gemma3_text", {"sliding_window": False}),  # every layer attending to the whole context
    ("mistral", {"permute_rotary": False}),  # Hugging Face's rotary row order
])
def test_the_check_catches_a_family_written_wrongly(tmp_path, monkeypatch, model_type, change):
    """Each difference a recipe records changes what llama.cpp generates: the check would see it missing."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: pip install -e '.[test]'")
    model_dir = tiny_family_model(tmp_path / "merged", model_type)
    record = families.FAMILIES[model_type]
    monkeypatch.setitem(families.FAMILIES, model_type,
                        dataclasses.replace(record, gguf=dataclasses.replace(record.gguf, **change)))
    write_gguf(model_dir, tmp_path / "model.gguf", "f16")
    matching = int(generation_check(tmp_path / "model.gguf", text_reference(model_dir)).split()[0])
    assert matching < 16


def logits_both_ways(model_dir, gguf_file, text: str):
    """Transformers' and llama.cpp's logits at every position of `text`."""
    import llama_cpp
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = AutoTokenizer.from_pretrained(model_dir)(text, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        expected = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)(torch.tensor([ids])).logits[0]
    llm = llama_cpp.Llama(model_path=str(gguf_file), n_ctx=256, logits_all=True, verbose=False)
    llm.eval(ids)
    return expected.numpy(), np.array(llm.scores[: len(ids)])


@pytest.mark.llama_cpp
@pytest.mark.parametrize("model_type, scaled, unscaled", [
    ("gemma3_text",  # Gemma 3 (4B and up): linear scaling of the global layers alone
     {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 100.0},
      "sliding_attention": {"rope_type": "default", "rope_theta": 10.0}},
     {"full_attention": {"rope_type": "default", "rope_theta": 100.0},
      "sliding_attention": {"rope_type": "default", "rope_theta": 10.0}}),
    ("llama",  # Llama 3.1 and 3.2: frequency factors (written as rope_freqs)
     {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 16, "rope_theta": 100.0},
     {"rope_type": "default", "rope_theta": 100.0}),
])
def test_rope_scaling_is_computed_by_llama_cpp_as_by_transformers(tmp_path, model_type, scaled, unscaled):
    """llama.cpp's logits at every position of a 60-token text are transformers', where the scaling moves
    transformers' own logits."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: pip install -e '.[test]'")
    text = "Say hello to Anna. Hello there my friend, how are you today? The sun shines on the hills."
    scaled_dir = tiny_family_model(tmp_path / "scaled", model_type, rope_parameters=scaled)
    unscaled_dir = tiny_family_model(tmp_path / "unscaled", model_type, rope_parameters=unscaled)
    write_gguf(scaled_dir, tmp_path / "scaled.gguf", "f16")
    expected, produced = logits_both_ways(scaled_dir, tmp_path / "scaled.gguf", text)
    unscaled_expected, _ = logits_both_ways(unscaled_dir, tmp_path / "scaled.gguf", text)
    assert abs(produced - expected).max() < 0.02
    assert abs(unscaled_expected - expected).max() > 0.2


@pytest.mark.parametrize("split", list(families.PRE_TOKENIZERS))
def test_the_pre_tokenizer_is_the_one_that_splits_as_the_model_does(split):
    tokenizer_json = json.loads(byte_level_tokenizer(split).to_str())
    assert pre_tokenizer(tokenizer_json) == split


def test_a_split_llama_cpp_has_not_is_refused_before_training():
    """A byte-level tokenizer that splits words on whitespace alone: llama.cpp would tokenize otherwise."""
    from tokenizers import Regex, pre_tokenizers

    backend = byte_level_tokenizer("qwen2")
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r"\s+"), behavior="isolated"),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer_json = json.loads(backend.to_str())
    assert pre_tokenizer(tokenizer_json) is None
    problem = gguf_refusal({"model_type": "qwen3"}, tokenizer_json)
    assert problem.startswith("llama.cpp has no pre-tokenizer that splits text as this tokenizer does (tried qwen2")


@pytest.mark.parametrize("config, message", [
    ({"model_type": "phi3", "rope_parameters": {"rope_type": "longrope", "short_factor": [1.0]}}, "RoPE scaling"),
    ({"model_type": "gemma3_text", "rope_parameters": {"full_attention": {"rope_type": "yarn"}}}, "RoPE scaling"),
    ({"model_type": "gemma3_text", "attn_logit_softcapping": 50.0}, "soft-capping"),
    ({"model_type": "gemma3_text", "query_pre_attn_scalar": 100, "head_dim": 256, "num_hidden_layers": 26},
     "query_pre_attn_scalar 100 scales attention differently from llama.cpp's gemma3"),
    ({"model_type": "llama", "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "RoPE scaling"),  # hub config
    ({"model_type": "qwen3_vl", "text_config": {"model_type": "qwen3_vl_text"}, "vision_config": {"spatial_merge_size": 1}},
     "takes temporal patches of 2 frames and merges 2x2 patches, and this vision_config has temporal_patch_size 2, "
     "spatial_merge_size 1"),
])
def test_what_llama_cpp_would_compute_otherwise_is_refused(config, message):
    assert message in gguf_refusal(config, json.loads(byte_level_tokenizer("qwen2").to_str()))


def test_a_gemma3_hub_config_of_transformers_4_with_its_linear_scaling_is_accepted():
    """Gemma 3 4B's config on the hub (written before transformers 5) keeps the global layers' scaling in
    `rope_scaling`; llama.cpp computes it, so check_params lets it through (merge writes today's format)."""
    config = {"model_type": "gemma3_text", "rope_scaling": {"rope_type": "linear", "factor": 8.0}, "head_dim": 256,
              "query_pre_attn_scalar": 256, "num_hidden_layers": 34}
    assert gguf_refusal(config, json.loads(byte_level_tokenizer("qwen2").to_str())) is None


def test_the_modelfile_follows_the_models_own_files(tmp_path):
    """Stop tokens and sampling from generation_config.json, the generation prompt and a default system prompt
    from the chat template; no TEMPLATE (Ollama reads the GGUF's) for a chat format without a known form."""
    from transformers import AutoTokenizer

    from slothline.export.ollama import modelfile

    model_dir = tiny_family_model(tmp_path / "phi3", "phi3")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = ("{% if messages[0]['role'] != 'system' %}<|system|>\nYou are a helpful assistant.<|end|>\n"
                               "{% endif %}" + tokenizer.chat_template)
    tokenizer.save_pretrained(model_dir)
    (model_dir / "generation_config.json").write_text(json.dumps(
        {"do_sample": True, "temperature": 0.3, "top_k": 40, "eos_token_id": [tokenizer.convert_tokens_to_ids("<|end|>")]}))
    text = modelfile(model_dir, model_dir, "model.gguf")
    assert 'SYSTEM """You are a helpful assistant."""' in text
    assert text.count("PARAMETER stop") == 2 and 'PARAMETER stop "<|end|>"' in text
    assert "PARAMETER temperature 0.3\nPARAMETER top_k 40\n" in text and "top_p" not in text
    assert '{{ end }}<|assistant|>\n"""' in text
    mistral = tiny_family_model(tmp_path / "mistral", "mistral")
    assert 'TEMPLATE """' not in modelfile(mistral, mistral, "model.gguf")


def test_the_qwen3_modelfile_prompts_as_training_did(tiny_qwen3):
    from slothline.export.ollama import modelfile

    model_dir = Path(tiny_qwen3)
    assert '<|im_start|>assistant\n<think>\n\n</think>\n\n"""' in modelfile(model_dir, model_dir, "model.gguf")
    assert '<|im_start|>assistant\n"""' in modelfile(model_dir, model_dir, "model.gguf", enable_thinking=True)


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_an_alpaca_trained_model_gets_an_alpaca_modelfile(tmp_path, family):
    """A model trained on alpaca rows (its tokenizer saved with the alpaca chat template) is prompted with the
    alpaca prompt by Ollama too, not with the turns its vocabulary's special tokens belong to (a Llama 3 base
    model's `<|start_header_id|>`); its EOS ends an answer in the history."""
    from transformers import AutoTokenizer

    from slothline.export.ollama import modelfile
    from slothline.kinds._generative.chat import adopt_alpaca_template, render

    model_dir = tiny_family_model(tmp_path / family, family, adds_bos=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    row = render([{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}], tokenizer, "alpaca", False)
    adopt_alpaca_template(tokenizer, [row])
    tokenizer.save_pretrained(model_dir)
    text = modelfile(model_dir, model_dir, "model.gguf")
    preamble = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    assert f'{{{{ else }}}}{preamble}{{{{ end }}}}' in text and "<|start_header_id|>" not in text
    assert f'### Response:\n{{{{ .Content }}}}{tokenizer.eos_token}{{{{ end }}}}{{{{ end }}}}### Response:\n"""' in text
    assert f'SYSTEM """{preamble}"""' in text


@pytest.mark.parametrize("template", [
    # Zephyr / TinyLlama-chat: Phi-3's turn markers, answers ended by </s>
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}",
    # DeepSeek-Coder-instruct: alpaca's headers, its own preamble and turn end
    "You are an AI programming assistant.\n{% for m in messages %}{% if m['role'] == 'user' %}### Instruction:\n"
    "{{ m['content'] }}\n{% else %}### Response:\n{{ m['content'] }}\n<|EOT|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}### Response:\n{% endif %}",
], ids=["zephyr", "deepseek-coder"])
def test_a_template_that_only_resembles_a_known_format_gets_no_ollama_template(tmp_path, tokenizer, template):
    """Markers alone do not make a format: a template that ends answers otherwise is left to the GGUF's own."""
    import copy

    from slothline.export.ollama import modelfile

    model_dir = tmp_path / "model"
    other = copy.deepcopy(tokenizer)
    other.chat_template = template
    other.save_pretrained(model_dir)
    assert 'TEMPLATE """' not in modelfile(model_dir, model_dir, "model.gguf")


@pytest.mark.llama_cpp
@pytest.mark.parametrize("model_type, rslora", [("llama", False), ("gemma3_text", True), ("phi3", False)])
def test_a_lora_adapter_exports_as_a_gguf_adapter_on_its_base(tmp_path, model_type, rslora):
    """merge.save_method: lora with GGUF export: the base model's GGUF and a GGUF adapter that llama.cpp applies
    to it, generating what transformers generates with the adapter merged (which differs from the base's)."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: pip install -e '.[test]'")
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slothline.artifacts import Manifest
    from slothline.export.gguf import greedy_tokens

    base_dir = tiny_family_model(tmp_path / "base", model_type)
    targets = families.family(model_type).lora_targets
    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules=list(targets), use_rslora=rslora,
                                      init_lora_weights=False))
    adapter_dir = tmp_path / "merged"
    model.save_pretrained(adapter_dir)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(adapter_dir)
    Manifest(kind="causal_lm", method="lora", base_model=str(base_dir), revision=None, backend="hf",
             precision="float32", load_in_4bit=False, max_seq_length=512).write(adapter_dir)

    (tmp_path / "export").mkdir()
    report = export_gguf(adapter_dir, tmp_path / "export", ["f16"])
    folder = tmp_path / "export" / "f16"
    assert sorted(p.name for p in folder.iterdir()) == ["Modelfile", "adapter.gguf", "base.gguf"]
    assert report["f16"]["generation_check"] == "16 of 16 greedy tokens match transformers"
    assert (folder / "Modelfile").read_text().startswith("FROM ./base.gguf\nADAPTER ./adapter.gguf\n")
    prompt = [5, 6, 7, 8]
    merged = model.merge_and_unload()
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    assert greedy_tokens(merged, prompt, 8) != greedy_tokens(base, prompt, 8)  # the adapter is seen


@pytest.mark.parametrize("settings, reason", [
    ({"use_dora": True}, "DoRA"),
    ({"bias": "all"}, "biases trained"),
    ({"target_modules": ["q_proj", "lm_head"]}, "embeddings or the output layer"),
    ({"modules_to_save": ["lm_head"]}, "whole modules saved"),
])
def test_what_a_gguf_adapter_cannot_hold_is_refused(settings, reason):
    from slothline.export import lora_gguf_refusal

    assert reason in lora_gguf_refusal({"target_modules": ["q_proj"], **settings})
    assert lora_gguf_refusal({"target_modules": ["q_proj", "v_proj"], "bias": "none"}) is None


@pytest.mark.llama_cpp
def test_a_vision_model_exports_a_text_gguf_and_an_mmproj_llama_cpp_answers_images_with(tiny_qwen3_vl, tmp_path):
    """Qwen3-VL: the language model's GGUF and the vision encoder's mmproj; llama.cpp's multimodal library
    (mtmd) answers an image question with transformers' greedy tokens, and the text prompt likewise."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: pip install -e '.[test]'")
    import gguf

    report = export_gguf(Path(tiny_qwen3_vl), tmp_path, ["f16"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f16", "mmproj.gguf"]
    assert report["f16"]["architecture"] == "qwen3vl"
    assert report["f16"]["generation_check"] == "16 of 16 greedy tokens match transformers"
    assert report["f16"]["image_check"] == "16 of 16 greedy tokens match transformers"
    projector = gguf.GGUFReader(str(tmp_path / "mmproj.gguf"))
    assert bytes(projector.fields["clip.projector_type"].parts[-1]).decode() == "qwen3vl_merger"
    assert "--mmproj ../mmproj.gguf" in (tmp_path / "f16" / "Modelfile").read_text()


def test_the_image_check_sees_a_wrong_vision_encoder(tiny_qwen3_vl, tmp_path, monkeypatch):
    """With its position embeddings in reverse order the vision encoder sees the patches elsewhere, and the
    answer differs from transformers'."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: pip install -e '.[test]'")
    from slothline.export import gguf_vision

    original = gguf_vision.read_tensor
    swapped = lambda shard, name: original(shard, name)[::-1] if name.endswith("pos_embed.weight") \
        else original(shard, name)
    monkeypatch.setattr(gguf_vision, "read_tensor", swapped)
    gguf_vision.write_mmproj(Path(tiny_qwen3_vl), tmp_path / "mmproj.gguf")
    write_gguf(Path(tiny_qwen3_vl), tmp_path / "model.gguf", "f16")
    reference = gguf_vision.image_reference(Path(tiny_qwen3_vl))
    matching = int(gguf_vision.vision_check(tmp_path / "model.gguf", tmp_path / "mmproj.gguf", reference).split()[0])
    assert matching < 16


@pytest.mark.llama_cpp
@pytest.mark.parametrize("model_type", ["gemma3_text", "mistral", "phi3"])
def test_the_merge_and_export_stages_write_each_family(workdir, model_type):
    """As `dvc repro` runs them after training a LoRA adapter on the family's model: check_params accepts GGUF
    export of it, merge folds the adapter in, export writes the file that llama.cpp computes the same logits
    with."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: pip install -e '.[test]'")
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slothline import kinds
    from slothline.artifacts import EXPORT_DIR, EXPORT_METRICS, MERGED_DIR, TUNED_DIR, Manifest
    from stages import export, merge
    from tests.conftest import load, write_params

    base = tiny_family_model(workdir.path / "base", model_type)
    sections = dict(model={"name": str(base)}, lora={"target_modules": None}, export={"gguf_quantization": ["f16"]})
    kinds.check(kinds.get("causal_lm"), load(**sections))  # check_params' own refusals, GGUF's included
    torch.manual_seed(0)
    targets = list(families.family(model_type).lora_targets)
    tuned = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False))
    tuned.save_pretrained(workdir.path / TUNED_DIR)
    AutoTokenizer.from_pretrained(base).save_pretrained(workdir.path / TUNED_DIR)
    Manifest(kind="causal_lm", method="lora", base_model=str(base), revision=None, backend="hf",
             precision="float32", load_in_4bit=False, max_seq_length=512).write(workdir.path / TUNED_DIR)
    write_params(workdir.path, **sections)
    merge.main()
    export.main()
    report = json.loads((workdir.path / EXPORT_METRICS).read_text())
    assert report["f16"]["generation_check"].endswith(" of 16 greedy tokens match transformers")
    # greedy parity over 16 tokens depends on the margins of this random model (0.005 at some steps);
    # the logits themselves must agree
    expected, produced = logits_both_ways(workdir.path / MERGED_DIR, workdir.path / EXPORT_DIR / "f16" / "model.gguf",
                                          "Say hello to Anna. Hello there my friend, how are you today?")
    assert abs(produced - expected).max() < 0.02


@pytest.mark.llama_cpp
def test_a_prompt_llama_cpp_tokenizes_otherwise_is_reported_not_refused(tmp_path):
    """transformers' legacy=False Mistral tokenizer adds no space after [INST]; llama.cpp's SentencePiece adds
    one after every special token. The file is right (the probe text tokenizes alike, generation from the
    same tokens matches), so export succeeds and says where llama.cpp's own prompt tokens differ."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: pip install -e '.[test]'")
    model_dir = tiny_family_model(tmp_path / "merged", "mistral", legacy=False)
    write_gguf(model_dir, tmp_path / "model.gguf", "f16")
    result = generation_check(tmp_path / "model.gguf", text_reference(model_dir))
    assert result.startswith("16 of 16 greedy tokens match transformers, from transformers' prompt tokens: "
                             "llama.cpp's own tokens of the chat prompt differ from token 2 ")


def test_a_base_model_with_a_transformers_4_config_and_other_formats_beside_it_is_written_as_today(tmp_path):
    """A hub snapshot (the base model of a GGUF adapter): Llama 3.1's scaling under `rope_scaling`, Gemma 3's
    layers under `sliding_window_pattern`, and Mistral's consolidated.safetensors beside the model's own
    shards (not read)."""
    import gguf

    llama = tiny_family_model(tmp_path / "llama", "llama", rope_parameters={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16, "rope_theta": 100.0})
    config = json.loads((llama / "config.json").read_text())
    rope = config.pop("rope_parameters")
    (llama / "config.json").write_text(json.dumps({**config, "rope_theta": rope.pop("rope_theta"), "rope_scaling": rope}))
    (llama / "consolidated.safetensors").write_bytes((llama / "model.safetensors").read_bytes())
    write_gguf(llama, tmp_path / "llama.gguf", "f16")
    assert "rope_freqs.weight" in {t.name for t in gguf.GGUFReader(str(tmp_path / "llama.gguf")).tensors}

    gemma = tiny_family_model(tmp_path / "gemma", "gemma3_text", num_hidden_layers=7,
                              layer_types=["sliding_attention"] * 5 + ["full_attention", "sliding_attention"])
    config = json.loads((gemma / "config.json").read_text())
    for key in ("layer_types", "rope_parameters"):
        config.pop(key)
    (gemma / "config.json").write_text(json.dumps({**config, "sliding_window_pattern": 6, "rope_theta": 1e6,
                                                   "rope_local_base_freq": 1e4}))
    write_gguf(gemma, tmp_path / "gemma.gguf", "f16")
    fields = gguf.GGUFReader(str(tmp_path / "gemma.gguf")).fields
    assert list(fields["gemma3.attention.sliding_window_pattern"].data) and [
        bool(fields["gemma3.attention.sliding_window_pattern"].parts[i][0])
        for i in fields["gemma3.attention.sliding_window_pattern"].data] == [True] * 5 + [False, True]


@pytest.mark.llama_cpp
def test_sentencepiece_user_defined_tokens_are_matched_and_printed_as_text(tmp_path):
    """Gemma's added whitespace-run tokens: llama.cpp matches them in the raw text and prints spaces (as its
    converter writes them), not `▁`."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: pip install -e '.[test]'")
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    from slothline.export.checkpoint import load_without_weight_repacking
    import llama_cpp

    model_dir = tiny_family_model(tmp_path / "gemma", "gemma3_text")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.add_tokens([AddedToken("▁▁▁▁", normalized=True, special=False)])
    tokenizer.save_pretrained(model_dir)
    write_gguf(model_dir, tmp_path / "model.gguf", "f16")
    llm = load_without_weight_repacking(llama_cpp, tmp_path / "model.gguf")
    text = "Hello    world, a    b"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    run = tokenizer.convert_tokens_to_ids("▁▁▁▁")
    assert run in ids and llm.tokenize(text.encode(), add_bos=False, special=True) == ids
    assert llm.detokenize([run]).decode() == tokenizer.decode([run]) == "    "


def test_the_gguf_names_the_model_it_was_trained_from(tmp_path):
    """general.name: llama.cpp applies Phi-3's own tokenizer rules by it."""
    import gguf

    from slothline.artifacts import Manifest

    model_dir = tiny_family_model(tmp_path / "merged", "phi3")
    Manifest(kind="causal_lm", method="full", base_model="microsoft/Phi-3-mini-4k-instruct", revision=None,
             backend="hf", precision="float32", load_in_4bit=False, max_seq_length=512).write(model_dir)
    (tmp_path / "export").mkdir()
    export_gguf(model_dir, tmp_path / "export", ["f16"])
    fields = gguf.GGUFReader(str(tmp_path / "export" / "f16" / "model.gguf")).fields
    assert bytes(fields["general.name"].parts[-1]).decode() == "microsoft/Phi-3-mini-4k-instruct"


def test_a_gguf_file_llama_cpp_cannot_load_is_a_clear_error(tmp_path):
    """llama-cpp-python says only "Failed to load model from file": the export names the file and the way on."""
    from types import SimpleNamespace

    from slothline.errors import SlothlineError
    from slothline.export.checkpoint import load_without_weight_repacking

    def refuse(**kwargs):
        raise ValueError(f"Failed to load model from file: {kwargs['model_path']}")

    fake = SimpleNamespace(llama_cpp=SimpleNamespace(llama_model_default_params=lambda: SimpleNamespace()), Llama=refuse)
    with pytest.raises(SlothlineError, match=r"model.gguf: llama.cpp cannot load the file written .*export.formats: \[\]"):
        load_without_weight_repacking(fake, tmp_path / "model.gguf")
