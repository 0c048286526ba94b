"""Export of merged models to GGUF, for llama.cpp and Ollama (the writer in `gguf`, the Modelfile in `ollama`).
This module holds what check_params needs before anything trains: the export params, the quantizations on
offer and whether a model's family and tokenizer can be written."""

import json
import math
import shutil
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from slothline.errors import SlothlineError
from slothline.families import FAMILIES, PRE_TOKENIZERS, PROBE_TEXT, family
from slothline.params import ExportParams

PYTHON_QUANTIZATIONS = ("f16", "bf16", "q8_0")  # written in Python by the gguf package
LLAMA_CPP_QUANTIZATIONS = ("q4_k_m", "q5_k_m", "q6_k", "q4_0", "q5_0")  # an f16 file through llama-quantize


class GGUFExport(ExportParams):
    formats: list[str] = ["gguf"]
    gguf_quantization: list[Literal[PYTHON_QUANTIZATIONS + LLAMA_CPP_QUANTIZATIONS]] = Field(["q8_0"], min_length=1)

    @field_validator("gguf_quantization", mode="before")
    @classmethod
    def _lower_case(cls, quantizations):
        """llama.cpp writes them upper case (Q8_0, Q4_K_M): either case is the same quantization."""
        return [q.lower() if isinstance(q, str) else q for q in quantizations] if isinstance(quantizations, list) else quantizations

    @field_validator("gguf_quantization")
    @classmethod
    def _each_once(cls, quantizations: list[str]) -> list[str]:
        if len(set(quantizations)) != len(quantizations):
            raise ValueError(f"lists a quantization twice ({quantizations}); list each once")
        return quantizations


def text_config(config: dict) -> dict:
    """The language model's settings: a vision-language model's text_config (with the model's type, embedding
    tying and vision settings), else the config itself."""
    if "text_config" not in config:
        return config
    return {**config["text_config"], "model_type": config["model_type"],
            "tie_word_embeddings": config.get("tie_word_embeddings", False), "vision_config": config["vision_config"]}


BYTE_LEVEL, SENTENCEPIECE = "gpt2", "llama"  # llama.cpp's tokenizer.ggml.model


def tokenizer_type(tokenizer_json: dict) -> str | None:
    """`gpt2` (byte-level BPE), `llama` (SentencePiece-style BPE with byte fallback) or None (neither)."""
    model = tokenizer_json.get("model", {})
    if model.get("type") != "BPE":
        return None
    if model.get("byte_fallback"):
        return SENTENCEPIECE
    return BYTE_LEVEL if "Ġ" in model.get("vocab", {}) else None


def pre_tokenizer(tokenizer_json: dict) -> str | None:
    """llama.cpp's name for the byte-level pre-tokenizer that splits PROBE_TEXT as this tokenizer does (None:
    none of PRE_TOKENIZERS does, so llama.cpp would split words, digits or spaces differently)."""
    from gguf.vocab import bytes_to_unicode
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(json.dumps(tokenizer_json))
    text = tokenizer.normalizer.normalize_str(PROBE_TEXT) if tokenizer.normalizer else PROBE_TEXT
    if tokenizer.pre_tokenizer is None:
        return None
    own = [piece for piece, _ in tokenizer.pre_tokenizer.pre_tokenize_str(text)]
    to_unicode = bytes_to_unicode()
    as_byte_level = lambda piece: "".join(to_unicode[b] for b in piece.encode())
    return next((name for name, pattern in PRE_TOKENIZERS.items()
                 if [as_byte_level(p) for p in split(pattern, text)] == own), None)


def split(pattern: str, text: str) -> list[str]:
    """`text` cut at the matches of `pattern`, the text between matches kept as pieces of its own (as llama.cpp
    and tokenizers' isolated Split do)."""
    import regex

    pieces, end = [], 0
    for match in regex.finditer(pattern, text):
        pieces += [text[end : match.start()], match.group()] if match.start() > end else [match.group()]
        end = match.end()
    return pieces + ([text[end:]] if end < len(text) else [])


def rope_of(config: dict, layer_type: str) -> dict:
    """The RoPE parameters of `layer_type` layers: Gemma 3 keeps one set per layer type, others one for all."""
    rope = config.get("rope_parameters") or {}
    return rope[layer_type] if isinstance(rope.get(layer_type), dict) else rope


def gguf_refusal(config: dict, tokenizer: dict | None) -> str | None:
    """Why the GGUF writer cannot write a model of this config and tokenizer.json so that llama.cpp computes
    what transformers does (None: it can)."""
    vision = config.get("vision_config") or {}
    config = text_config(config)
    model_type = config.get("model_type")
    recipe = family(model_type).gguf
    if not recipe:
        written = ", ".join(name for name, record in FAMILIES.items() if record.gguf)
        return f"the GGUF writer supports {written} models, not {model_type!r}"
    patches = (vision.get("temporal_patch_size", 2), vision.get("spatial_merge_size", 2))
    if recipe.mmproj and patches != (2, 2):  # llama.cpp asserts on other shapes, after training
        return (f"llama.cpp's Qwen-VL vision encoder (mmproj.gguf) takes temporal patches of 2 frames and merges 2x2 "
                f"patches, and this vision_config has temporal_patch_size {patches[0]}, spatial_merge_size {patches[1]}")
    legacy = config.get("rope_scaling") or {}  # a config written before transformers 5 (a base model on the hub)
    rope_types = {rope_of(config, layer).get("rope_type", "default") for layer in ("full_attention", "sliding_attention")}
    rope_types |= {legacy.get("rope_type") or legacy.get("type")} if legacy else set()
    if not rope_types <= set(recipe.rope_types):
        return (f"RoPE scaling {sorted(rope_types - {'default'})} (e.g. YaRN, Phi-3's long-context longrope) is not "
                "written by this converter; convert with llama.cpp's convert_hf_to_gguf.py instead")
    if recipe.attention_scale and config.get("query_pre_attn_scalar") and not math.isclose(
            config["query_pre_attn_scalar"] ** -0.5, recipe.attention_scale(config)):
        return (f"query_pre_attn_scalar {config['query_pre_attn_scalar']} scales attention differently from "
                f"llama.cpp's {recipe.arch} (which uses the head size)")
    if config.get("attn_logit_softcapping"):
        return f"attention logit soft-capping is not computed by llama.cpp's {recipe.arch}"
    kind = tokenizer_type(tokenizer or {})
    if kind is None:
        return ("the GGUF writer supports BPE tokenizers (byte-level as Qwen's and Llama 3's, or with byte fallback "
                "as Gemma's and Mistral's), not this one; convert with llama.cpp's convert_hf_to_gguf.py instead")
    if kind != SENTENCEPIECE and pre_tokenizer(tokenizer) is None:
        return ("llama.cpp has no pre-tokenizer that splits text as this tokenizer does (tried "
                f"{', '.join(PRE_TOKENIZERS)}), so it would tokenize differently from training")
    return None


def lora_gguf_refusal(settings: dict) -> str | None:
    """Why a LoRA adapter of these settings (adapter_config.json's keys) cannot be written as a GGUF adapter that
    llama.cpp applies as PEFT does (None: it can)."""
    targets = settings.get("target_modules") or []
    reasons = {
        "DoRA (use_dora)": settings.get("use_dora"),
        f"biases trained (lora.bias: {settings.get('bias')})": settings.get("bias", "none") != "none",
        "LoftQ, which changes the base weights (lora.loftq)": settings.get("init_lora_weights") == "loftq",
        "whole modules saved beside the adapter (modules_to_save)": settings.get("modules_to_save"),
        "ranks or alphas that differ by layer": settings.get("rank_pattern") or settings.get("alpha_pattern"),
        "embeddings or the output layer among lora.target_modules": any(
            name in ("embed_tokens", "lm_head") for name in ([targets] if isinstance(targets, str) else targets)),
    }
    found = [reason for reason, present in reasons.items() if present]
    if found:
        return (f"a GGUF adapter holds plain LoRA on linear layers, and this one has {', '.join(found)}; set "
                "merge.save_method: merged_16bit to export the merged model instead")
    return None


def check_gguf(params) -> None:
    """Refuse `export.formats: [gguf]` for a model the writer cannot write, and k-quants without llama-quantize."""
    from slothline.models import model_config, model_file

    if "gguf" not in params.export.formats:
        return
    config = model_config(params.model.name, params.model.revision)  # a clear error when it cannot be read
    tokenizer_file = model_file(params.model.name, "tokenizer.json", params.model.revision)
    tokenizer = json.loads(Path(tokenizer_file).read_text()) if tokenizer_file else None
    problem = gguf_refusal(config, tokenizer)
    if problem:
        raise SlothlineError(f"export.formats: gguf: {problem}; set export.formats: [] (models/merged/ is a "
                             "Hugging Face directory that transformers loads)")
    problem = k_quant_refusal(params.export.gguf_quantization)
    if problem:
        raise SlothlineError(problem)
    lora = params.lora
    if params.merge.save_method == "lora" and (problem := lora_gguf_refusal(
            {"bias": lora.bias, "init_lora_weights": "loftq" if lora.loftq else True,
             "target_modules": lora.target_modules})):
        raise SlothlineError(f"export.formats: gguf with merge.save_method: lora: {problem}")


def k_quant_refusal(quantizations: list[str]) -> str | None:
    """Why `quantizations` cannot be written here: k-quants without llama.cpp's quantizer on PATH (None: they can).
    Export asks again: it may run where check_params did not (`dvc repro export` in another environment)."""
    k_quants = [q for q in quantizations if q in LLAMA_CPP_QUANTIZATIONS]
    if k_quants and not shutil.which("llama-quantize"):
        return (f"export.gguf_quantization: {', '.join(k_quants)} need llama.cpp's quantizer: put `llama-quantize` on "
                f"PATH (build llama.cpp, or install its release), or use {', '.join(PYTHON_QUANTIZATIONS)}, which need "
                "nothing else")
    return None
