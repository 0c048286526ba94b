"""The model's stop tokens: its tokenizer's EOS and every eos_token_id of its generation config, and the
turn end its chat template writes (refused where the tokenizer has no single token for it)."""

import re

from slothline.errors import SlothlineError
from slothline.kinds._generative.tokens import tokenizer_of


def turn_end(processor) -> str | None:
    """The marker the chat template writes right after an answer (`<|im_end|>`, `<end_of_turn>`): a `<...>`
    tag before any text; None when it writes none or cannot render a plain exchange."""
    answer = "\ue000answer\ue000"
    try:
        text = processor.apply_chat_template([{"role": "user", "content": "question"},
                                              {"role": "assistant", "content": answer}], tokenize=False)
    except Exception:  # a template with its own rules (system prompt required, ...): nothing learned here
        return None
    if answer not in text:
        return None
    found = re.match(r"\s*(<[^\s<>]+>)", text.split(answer, 1)[1])
    return found and found.group(1)


def check_turn_end(processor) -> None:
    """Refuse a chat template whose turn end the tokenizer does not have as one token: the model could not
    learn it as one step nor stop on it."""
    tokenizer = tokenizer_of(processor)
    end = turn_end(processor)
    if end is None:
        return
    pieces = tokenizer(end, add_special_tokens=False)["input_ids"]
    if len(pieces) != 1:
        raise SlothlineError(
            f"model.name: the chat template ends each answer with {end}, which this tokenizer has no token for "
            f"(it becomes {len(pieces)} tokens), so the model can neither learn it as one token nor stop on it; "
            "use the model's own tokenizer and chat template (tokenizer.json and tokenizer_config.json from the "
            "same model), or set `template: alpaca` on each data source"
        )


def stop_ids(processor, generation_config=None) -> list[int]:
    """The model's stop tokens: its tokenizer's EOS, every eos_token_id of its generation config (a
    GenerationConfig or generation_config.json as a dict; Gemma 3 lists <end_of_turn> there) and the turn end
    its chat template writes (a base model's files may name only <|endoftext|>, or a wrong EOS, while the
    template ends answers with <|im_end|>: the tuned model then stops where it learned to)."""
    tokenizer = tokenizer_of(processor)
    eos = tokenizer.convert_tokens_to_ids(tokenizer.eos_token) if tokenizer.eos_token else None
    configured = (generation_config.get("eos_token_id") if isinstance(generation_config, dict)
                  else getattr(generation_config, "eos_token_id", None))
    configured = configured if isinstance(configured, list | tuple) else [configured]
    end = turn_end(processor)  # the template's own turn end: what every trained answer ends with
    end_ids = tokenizer(end, add_special_tokens=False)["input_ids"] if end else []
    turn = end_ids[0] if len(end_ids) == 1 else None
    return list(dict.fromkeys(i for i in (eos, *configured, turn) if i is not None))


def model_stop_tokens(processor, name: str, revision: str | None = None) -> tuple[str, ...]:
    """The special tokens among `stop_ids` of `model.name`, as strings, from its generation_config.json
    (prepare has no model loaded): what `render` needs not to append EOS after a turn that ends with one."""
    tokenizer = tokenizer_of(processor)
    added = getattr(tokenizer, "added_tokens_decoder", {})
    ids = stop_ids(processor, _generation_config(name, revision))
    return tuple(added[i].content for i in ids if i in added and added[i].special)


_GENERATION_CONFIGS: dict = {}


def _generation_config(name: str, revision: str | None) -> dict | None:
    """generation_config.json of `model.name` as a dict (None without one), read once per file version."""
    import json
    from pathlib import Path

    from slothline.models import model_file, resolve_model

    source = resolve_model(name)
    local = Path(source) / "generation_config.json"
    key = (source, revision, local.stat().st_mtime_ns if local.is_file() else None)
    if key not in _GENERATION_CONFIGS:
        try:
            path = model_file(name, "generation_config.json", revision)
            _GENERATION_CONFIGS[key] = json.loads(Path(path).read_text()) if path else None
        except Exception as err:  # the hub client raises many types; all mean "cannot get it"
            raise SlothlineError(f"model.name: cannot read the generation_config.json of {name!r} "
                                 f"({err.__class__.__name__}: {err}); it names the model's stop tokens") from None
    return _GENERATION_CONFIGS[key]
