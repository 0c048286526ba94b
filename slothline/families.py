"""What differs between model families, as data: one record per family (a config's `model_type`) and one per
chat format (found by the response marker in a rendered conversation). Adding a family is adding a record here.

A family record says which kind its models are, which layers `lora.target_modules: null` means, how GGUF
export writes it (a `GGUFRecipe`: llama.cpp's architecture and what differs from Hugging Face's layout),
for vision models how many tokens an image becomes, and for encoders whether positions start after the padding
id. A chat format record gives the turn markers that response-only training masks by and the conversation in
Ollama's template form (stop tokens come from the model's own files). `PRE_TOKENIZERS` are llama.cpp's
byte-level pre-tokenizers, told apart by what each makes of a probe text.
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
class GGUFRecipe:
    """How llama.cpp's architecture `arch` differs from the Hugging Face checkpoint (llama.cpp's converter
    does the same per family)."""
    arch: str  # llama.cpp's architecture name (general.architecture)
    permute_rotary: bool = False  # q/k rows reordered from Hugging Face's rotary layout (Llama, Mistral)
    norm_shift: float = 0.0  # added to every norm weight: Gemma stores w - 1 and computes x * (1 + w)
    sliding_window: bool = False  # writes the window and which layers use it (Gemma 3 alternates them)
    rope_types: tuple[str, ...] = ("default",)  # RoPE types llama.cpp computes as transformers does (llama3:
    # through the frequency factors written as rope_freqs)
    attention_scale: Callable | None = None  # config -> the query scale llama.cpp uses; refused where it differs
    original_context: bool = False  # writes original_max_position_embeddings (Phi-3)
    text_prefix: str | None = None  # a vision-language checkpoint's language model (its text GGUF)...
    mmproj: str | None = None  # ...and llama.cpp's projector type of its vision encoder (the mmproj GGUF)


def gemma3_query_scale(config: dict) -> float:
    """llama.cpp's Gemma 3 query scale: 1/sqrt(head_dim), except 1/sqrt(hidden/heads) for the 62-layer 27B."""
    if config["num_hidden_layers"] == 62:
        return (config["hidden_size"] / config["num_attention_heads"]) ** -0.5
    return config.get("head_dim", 256) ** -0.5


@dataclass(frozen=True)
class Family:
    kind: str  # causal_lm | vision | classifier
    lora_targets: tuple[str, ...] | None = None  # lora.target_modules: null (None: the backend's own choice)
    gguf: GGUFRecipe | None = None  # None: GGUF export not written
    image_tokens: Callable | None = None  # vision: (processor, width, height) -> tokens of one image
    positions_after_padding: bool = False  # position ids start at pad_token_id + 1 (RoBERTa's 514 hold 512 tokens)


FAMILIES = {
    "qwen3": Family("causal_lm", DECODER_PROJECTIONS, gguf=GGUFRecipe("qwen3")),
    "qwen2": Family("causal_lm", DECODER_PROJECTIONS, gguf=GGUFRecipe("qwen2")),
    "llama": Family("causal_lm", DECODER_PROJECTIONS, gguf=GGUFRecipe(
        "llama", permute_rotary=True, rope_types=("default", "llama3"))),  # Llama 3.1 and 3.2 scale RoPE
    "mistral": Family("causal_lm", DECODER_PROJECTIONS, gguf=GGUFRecipe("llama", permute_rotary=True)),
    "gemma3_text": Family("causal_lm", DECODER_PROJECTIONS, gguf=GGUFRecipe(
        "gemma3", norm_shift=1.0, sliding_window=True, rope_types=("default", "linear"),
        attention_scale=gemma3_query_scale)),
    "phi3": Family("causal_lm", ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
                   gguf=GGUFRecipe("phi3", original_context=True)),
    "qwen3_vl": Family("vision", (*DECODER_PROJECTIONS, "qkv", "proj", "linear_fc1", "linear_fc2"),
                       image_tokens=qwen_vl_image_tokens, gguf=GGUFRecipe(
        "qwen3vl", text_prefix="model.language_model.", mmproj="qwen3vl_merger")),
    "qwen2_5_vl": Family("vision", (*DECODER_PROJECTIONS, "qkv", "proj"), image_tokens=qwen_vl_image_tokens),
    "qwen2_vl": Family("vision", (*DECODER_PROJECTIONS, "qkv", "proj", "fc1", "fc2"),
                       image_tokens=qwen_vl_image_tokens),
    "modernbert": Family("classifier", ("Wqkv", "Wo", "Wi")),  # attn.Wqkv, attn.Wo, mlp.Wi, mlp.Wo
    **{name: Family("classifier", BERT_LAYERS) for name in ("bert", "electra")},
    **{name: Family("classifier", BERT_LAYERS, positions_after_padding=True)
       for name in ("roberta", "xlm-roberta", "camembert", "xlm-roberta-xl", "roberta-prelayernorm", "data2vec-text")},
    "mpnet": Family("classifier", positions_after_padding=True),
    "distilbert": Family("classifier", ("q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2")),
    **{name: Family("classifier") for name in ("deberta", "deberta-v2")},
}
UNKNOWN = Family(kind="")


def family(model_type: str | None) -> Family:
    """The record of `model_type`, or one that knows nothing (kind inferred from the config, no defaults)."""
    return FAMILIES.get(model_type, UNKNOWN)


@dataclass(frozen=True)
class ChatFormat:
    turns: tuple[str, str]  # (instruction_part, response_part), as Unsloth's train_on_responses_only takes them
    ollama_turns: str | None = None  # the conversation in Ollama's Go-template form (the model's own chat
    # template then gives the generation prompt that follows it); `{eos}` stands for the tokenizer's EOS token
    answer_end: str = ""  # what ends an answer in `ollama_turns`: a template must write it so to take that form


ALPACA_PREAMBLE = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                   "the request.")
CHAT_FORMATS = {  # Ollama keeps system messages in .Messages and also sets .System: the turns skip them
    "chatml": ChatFormat(
        ("<|im_start|>user\n", "<|im_start|>assistant\n"),
        "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
        "{{- range .Messages }}{{- if ne .Role \"system\" }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
        "{{ end }}{{ end }}", "<|im_end|>"),
    "llama-3": ChatFormat(
        ("<|start_header_id|>user<|end_header_id|>\n\n", "<|start_header_id|>assistant<|end_header_id|>\n\n"),
        "{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
        "{{- range .Messages }}{{- if ne .Role \"system\" }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
        "{{ .Content }}<|eot_id|>{{ end }}{{ end }}", "<|eot_id|>"),
    "gemma": ChatFormat(  # Gemma has no system turn: its template puts the system prompt before the first question
        ("<start_of_turn>user\n", "<start_of_turn>model\n"),
        "{{- $system := .System }}{{- range .Messages }}{{- if eq .Role \"user\" }}<start_of_turn>user\n"
        "{{ if $system }}{{ $system }}\n\n{{ $system = \"\" }}{{ end }}{{ .Content }}<end_of_turn>\n"
        "{{ else if eq .Role \"assistant\" }}<start_of_turn>model\n{{ .Content }}<end_of_turn>\n{{ end }}{{ end }}",
        "<end_of_turn>"),
    "phi-3": ChatFormat(
        ("<|user|>\n", "<|assistant|>\n"),
        "{{- if .System }}<|system|>\n{{ .System }}<|end|>\n{{ end }}"
        "{{- range .Messages }}{{- if ne .Role \"system\" }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}{{ end }}",
        "<|end|>"),
    # Mistral's and Llama 2's [INST] templates differ in spaces from version to version: Ollama takes the
    # template embedded in the GGUF file
    "mistral": ChatFormat(("[INST]", "[/INST]")),
    # the classic Alpaca prompt (data.sources[].template: alpaca); a system prompt replaces its preamble
    "alpaca": ChatFormat(
        ("### Instruction:\n", "### Response:\n"),
        f"{{{{ if .System }}}}{{{{ .System }}}}{{{{ else }}}}{ALPACA_PREAMBLE}{{{{ end }}}}"
        "{{- range .Messages }}{{- if eq .Role \"user\" }}\n\n### Instruction:\n{{ .Content }}\n\n"
        "{{ else if eq .Role \"assistant\" }}### Response:\n{{ .Content }}{eos}{{ end }}{{ end }}", "{eos}"),
}


def chat_format_of(text: str) -> ChatFormat | None:
    """The chat format whose response marker a rendered conversation holds, or None."""
    return next((chat for chat in CHAT_FORMATS.values() if chat.turns[1] in text), None)


PROBE_TEXT = ("Digits 3 33 333 3333 3.14 and 1,000,000; runs of spaces:  two   three    four\t\ttabs\n\n\nlines. "
              "Accents: café naïve Ångström Über. CJK: 我想在apple工作1314151天 日本語のテキスト. "
              "Emoji: 🚀 😶\u200d🌫️ ✅🦙🦙. Punctuation: ------======= '''```\"\"\"......!!!!!!?????? "
              "I've been 'told he's there, 'RE you sure? HELLOWorld helloWORLD CamelCase snake_case")

# llama.cpp's byte-level pre-tokenizers (tokenizer.ggml.pre), each by the split of its tokenizer.json,
# and the first that splits PROBE_TEXT as a model's own pre-tokenizer does is the one written.
PRE_TOKENIZERS = {
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "llama-bpe": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "tekken": r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?"
              r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "gpt-2": r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
}
