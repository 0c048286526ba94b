"""Ollama Modelfiles for exported GGUF files: the chat template and stop tokens of the model's chat format
(families.py), and sampling defaults."""

from pathlib import Path

from slothline.errors import SlothlineError
from slothline.families import CHAT_FORMATS, chat_format_of


def modelfile(model_dir: Path) -> str:
    """An Ollama Modelfile: the GGUF beside it, the chat template, stop tokens and sampling defaults."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    vocab = tokenizer.get_vocab()
    chat = chat_format_of(vocab)
    if chat is None or chat.ollama_template is None:
        known = ", ".join(name for name, record in CHAT_FORMATS.items() if record.ollama_template)
        raise SlothlineError(f"export: no Ollama template for the chat format of {model_dir} ({known} known)")
    stops = sorted({tokenizer.eos_token, *(t for t in chat.stop_tokens if t in vocab)})
    lines = ["FROM ./model.gguf", f'TEMPLATE """{chat.ollama_template}"""']
    lines += [f'PARAMETER stop "{stop}"' for stop in stops]
    lines += ["PARAMETER temperature 0.7", "PARAMETER top_p 0.8"]
    return "\n".join(lines) + "\n"
