"""What differs between model families, as data: one record per family (a config's `model_type`) and one per
chat format (found by the special token that marks its turns). Adding a family is adding a record here.

A family record says which kind its models are, which layers `lora.target_modules: null` means, how GGUF
export writes it (llama.cpp's architecture and pre-tokenizer, Llama's rotary row order) and, for vision
models, how many tokens an image becomes. A chat format record gives the turn markers that response-only
training masks by, the Ollama template and the stop tokens.
"""

from collections.abc import Callable
from dataclasses import dataclass

DECODER_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BERT_LAYERS = ("query", "key", "value", "dense")


def qwen_vl_image_tokens(processor, width: int, height: int) -> int:
    """Qwen2-VL, Qwen2.5-VL and Qwen3-VL: one token per merge_size x merge_size block of patches."""
    image_processor = processor.image_processor
    return image_processor.get_number_of_image_patches(height, width) // image_processor.merge_size ** 2


@dataclass(frozen=True)
class Family:
    kind: str  # causal_lm | vision | classifier
    lora_targets: tuple[str, ...] | None = None  # lora.target_modules: null (None: the backend's own choice)
    gguf_arch: str | None = None  # llama.cpp's architecture name; None: GGUF export not written
    gguf_pre_tokenizer: str | None = None  # llama.cpp's pre-tokenizer name (tokenizer.ggml.pre)
    gguf_permute_rotary: bool = False  # q/k rows reordered from Hugging Face's rotary layout (Llama)
    image_tokens: Callable | None = None  # vision: (processor, width, height) -> tokens of one image


FAMILIES = {
    "qwen3": Family("causal_lm", DECODER_PROJECTIONS, gguf_arch="qwen3", gguf_pre_tokenizer="qwen2"),
    "qwen2": Family("causal_lm", DECODER_PROJECTIONS, gguf_arch="qwen2", gguf_pre_tokenizer="qwen2"),
    "llama": Family("causal_lm", DECODER_PROJECTIONS, gguf_arch="llama", gguf_pre_tokenizer="llama-bpe",
                    gguf_permute_rotary=True),
    "mistral": Family("causal_lm", DECODER_PROJECTIONS),
    "gemma3_text": Family("causal_lm", DECODER_PROJECTIONS),
    "qwen3_vl": Family("vision", image_tokens=qwen_vl_image_tokens),
    "qwen2_5_vl": Family("vision", image_tokens=qwen_vl_image_tokens),
    "qwen2_vl": Family("vision", image_tokens=qwen_vl_image_tokens),
    "modernbert": Family("classifier", ("Wqkv", "Wo", "Wi")),  # attn.Wqkv, attn.Wo, mlp.Wi, mlp.Wo
    **{name: Family("classifier", BERT_LAYERS) for name in ("bert", "roberta", "xlm-roberta", "electra")},
    **{name: Family("classifier") for name in ("deberta", "deberta-v2", "distilbert")},
}
UNKNOWN = Family(kind="")


def family(model_type: str | None) -> Family:
    """The record of `model_type`, or one that knows nothing (kind inferred from the config, no defaults)."""
    return FAMILIES.get(model_type, UNKNOWN)


@dataclass(frozen=True)
class ChatFormat:
    marker: str  # the special token that identifies the format in a vocabulary or a rendered text
    turns: tuple[str, str]  # (instruction_part, response_part), as Unsloth's train_on_responses_only takes them
    stop_tokens: tuple[str, ...]
    ollama_template: str | None = None  # the chat template in Ollama's Go-template form


CHAT_FORMATS = {
    "chatml": ChatFormat(
        "<|im_start|>", ("<|im_start|>user\n", "<|im_start|>assistant\n"), ("<|im_end|>", "<|endoftext|>"),
        "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
        "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"),
    "llama-3": ChatFormat(
        "<|start_header_id|>", ("<|start_header_id|>user<|end_header_id|>\n\n",
                                "<|start_header_id|>assistant<|end_header_id|>\n\n"), ("<|eot_id|>",),
        "{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
        "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"),
    "gemma": ChatFormat("<start_of_turn>", ("<start_of_turn>user\n", "<start_of_turn>model\n"), ("<end_of_turn>",)),
}


def chat_format_of(vocabulary) -> ChatFormat | None:
    """The chat format whose marker token the vocabulary holds, or None."""
    return next((chat for chat in CHAT_FORMATS.values() if chat.marker in vocabulary), None)
