"""Ollama Modelfiles for exported GGUF files, from the model's own files: the conversation in Ollama's template
form for the chat formats families.py knows, told by a conversation the model's chat template renders (else
left to the template embedded in the GGUF, which Ollama reads), followed by the generation prompt the model's
chat template writes; a system prompt the template inserts by default; stop tokens and sampling settings from
generation_config.json."""

import json
from pathlib import Path

from jinja2.exceptions import TemplateError

from slothline.families import ChatFormat, chat_format_of
from slothline.kinds._generative.stops import stop_ids

SAMPLING = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
            "repetition_penalty": "repeat_penalty"}  # generation_config.json key -> Ollama parameter


def modelfile(model_dir: Path, weights_dir: Path, gguf_name: str, adapter_name: str | None = None,
              projector: str | None = None, enable_thinking: bool = False) -> str:
    """An Ollama Modelfile for the GGUF file `gguf_name` beside it (and the GGUF adapter `adapter_name` applied
    to it; a vision model's `projector` named in a note for llama.cpp's multimodal tools), from the tokenizer in
    `model_dir` and the generation settings of the weights in `weights_dir`."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    generation_file = weights_dir / "generation_config.json"
    generation = json.loads(generation_file.read_text()) if generation_file.is_file() else {}
    chat = chat_format(tokenizer)
    lines = [f"FROM ./{gguf_name}", *([f"ADAPTER ./{adapter_name}"] if adapter_name else [])]
    if projector:
        lines.append(f"# images: llama.cpp's llama-mtmd-cli or llama-server -m {gguf_name} --mmproj {projector}")
    if chat and chat.ollama_turns:
        turns = chat.ollama_turns.replace("{eos}", tokenizer.eos_token or "")
        lines.append(f'TEMPLATE """{turns}{generation_prompt(tokenizer, enable_thinking)}"""')
        if system := default_system_prompt(tokenizer):
            lines.append(f'SYSTEM """{system}"""')
    else:
        lines.append(f"# no TEMPLATE: Ollama takes the chat template embedded in {gguf_name}")
    lines += [f"PARAMETER stop {json.dumps(tokenizer.convert_ids_to_tokens(i))}" for i in stop_ids(tokenizer, generation)]
    if generation.get("do_sample"):
        lines += [f"PARAMETER {name} {generation[key]}" for key, name in SAMPLING.items() if generation.get(key) is not None]
    return "\n".join(lines) + "\n"


USER_TEXT, SYSTEM_TEXT, ANSWER_TEXT = "\ue000", "\ue001", "\ue002"  # private-use characters no template writes


def render(tokenizer, messages: list[dict], enable_thinking: bool = False, generation: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation,
                                         enable_thinking=enable_thinking)


def chat_format(tokenizer) -> ChatFormat | None:
    """The known chat format whose Ollama form the tokenizer's chat template writes: a conversation it renders holds
    the format's question turn and its answer turn with the format's answer end (Zephyr's `<|assistant|>` turns
    end with `</s>`, not Phi-3's `<|end|>`). None: no template, another form, or a template that refuses it."""
    if not tokenizer.chat_template:
        return None
    try:
        text = render(tokenizer, [{"role": "user", "content": USER_TEXT}, {"role": "assistant", "content": ANSWER_TEXT}])
    except (TypeError, ValueError, TemplateError):  # Ollama reads the template embedded in the GGUF file
        return None
    chat = chat_format_of(text)
    end = chat and chat.answer_end.replace("{eos}", tokenizer.eos_token or "")
    if chat and chat.ollama_turns and chat.turns[0] + USER_TEXT in text and ANSWER_TEXT + end in text:
        return chat
    return None


def generation_prompt(tokenizer, enable_thinking: bool) -> str:
    """What the chat template writes after a conversation to start the answer (Qwen3's includes an empty
    <think> block when thinking is off)."""
    user = [{"role": "user", "content": USER_TEXT}]
    closed = render(tokenizer, user, enable_thinking)
    return render(tokenizer, user, enable_thinking, generation=True)[len(closed):]


def default_system_prompt(tokenizer) -> str | None:
    """The system prompt the chat template inserts when a conversation has none (Qwen2.5's "You are Qwen..."),
    found where a given system prompt lands; None when it inserts none or takes no system turn."""
    user = [{"role": "user", "content": USER_TEXT}]
    try:
        with_system = render(tokenizer, [{"role": "system", "content": SYSTEM_TEXT}, *user])
    except Exception:  # a template without system turns
        return None
    before, after = with_system.split(SYSTEM_TEXT, 1)
    without = render(tokenizer, user)
    ending = after.split(USER_TEXT, 1)[0]
    if not ending or not without.startswith(before) or ending not in without[len(before):]:
        return None
    return without[len(before):].split(ending, 1)[0] or None
