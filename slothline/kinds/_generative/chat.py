"""Chat rendering and the answer mask, shared by the generating kinds (causal LM, vision).

`render` turns canonical messages into the training `text`, the generation `prompt` and the `reference`
answer: with the model's chat template (`chat`) or the classic Alpaca prompt (`alpaca`). `AnswerMask` is
THE answer mask: the tokens after each response marker up to and including the end of the turn, the ones
Unsloth's train_on_responses_only keeps. Training on hf, the eval loss and prepare's token statistics all
use it.
"""

from slothline.errors import RowError, SlothlineError
from slothline.families import CHAT_FORMATS

ALPACA_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\n{}\n\n### Response:\n{}"
)
# (instruction_part, response_part) of the templates whose answers can be masked
TURN_MARKERS = {**{name: chat.turns for name, chat in CHAT_FORMATS.items()},
                "alpaca": ("### Instruction:\n", "### Response:\n")}


def render(messages: list[dict], processor, template: str, enable_thinking: bool) -> dict:
    """`text` (the whole example, EOS appended), `prompt` (up to the last answer) and `reference` (the last
    answer without a leading <think> block: what evaluate scores generations against). `processor` is a
    tokenizer or a multimodal processor, whose chat template renders image parts."""
    history, answer = messages[:-1], messages[-1]["content"]
    if template == "alpaca":
        if len(messages) != 2 or messages[0]["role"] != "user":
            raise RowError("the alpaca template takes single-turn examples without a system prompt; use template: chat")
        text = ALPACA_PROMPT.format(messages[0]["content"], answer)
        prompt = ALPACA_PROMPT.format(messages[0]["content"], "")
    else:
        if not processor.chat_template:
            raise SlothlineError(
                "model.name: this tokenizer has no chat template; set `template: alpaca` on each data source "
                "or use a chat (instruct) model"
            )
        # A processor hands keyword arguments its template does not use to the tokenizer, with a warning.
        multimodal = hasattr(processor, "tokenizer")
        options = ({"enable_thinking": enable_thinking}
                   if not multimodal or "enable_thinking" in processor.chat_template else {})
        try:
            text = processor.apply_chat_template(messages, tokenize=False, **options)
            prompt = processor.apply_chat_template(history, tokenize=False, add_generation_prompt=True, **options)
        except (TypeError, ValueError) as err:  # a template that cannot render this conversation
            raise RowError(f"the model's chat template cannot render this conversation ({err})") from None
    eos_token = tokenizer_of(processor).eos_token
    return {"text": with_eos(text, eos_token), "prompt": prompt, "reference": strip_thinking(answer)}


def tokenizer_of(processor):
    """The text tokenizer of a tokenizer or a multimodal processor."""
    return getattr(processor, "tokenizer", processor)


def strip_thinking(answer: str) -> str:
    """The answer after a leading <think>...</think> block (the whole answer when there is none)."""
    return answer.split("</think>", 1)[-1].strip() if "</think>" in answer else answer.strip()


def with_eos(text: str, eos_token: str) -> str:
    """Append EOS unless the text already ends with it (chat templates often close turns with it)."""
    return text if text.rstrip().endswith(eos_token) else text + eos_token


def turn_markers(texts: list[str]) -> tuple[str, str]:
    """The (instruction_part, response_part) pair that every rendered text uses."""
    for instruction_part, response_part in TURN_MARKERS.values():
        if all(response_part in text for text in texts):
            return instruction_part, response_part
    raise SlothlineError(
        "train.train_on_responses_only: cannot find one pair of turn markers shared by every example "
        f"(known: {', '.join(TURN_MARKERS)}; sources with different templates cannot be mixed for "
        "response-only training); use one template, or set train.train_on_responses_only: false"
    )


def markers_of(text: str) -> tuple[str, str] | None:
    """The known turn markers `text` uses, or None."""
    return next((pair for pair in TURN_MARKERS.values() if pair[1] in text), None)


class AnswerMask:
    """`labels(ids)`: the ids on the answers (after each response marker, up to and including the end-of-turn
    token, or up to the next marker) and -100 elsewhere, for one tokenizer and pair of turn markers."""

    def __init__(self, processor, markers: tuple[str, str]):
        tokenizer = tokenizer_of(processor)
        encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]
        self.instruction, self.response = encode(markers[0]), encode(markers[1])
        self.eos_id = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)

    def labels(self, ids: list[int]) -> list[int]:
        at = lambda i, marker: ids[i : i + len(marker)] == marker
        targets, i = [-100] * len(ids), 0
        while i < len(ids):
            if not at(i, self.response):
                i += 1
                continue
            i += len(self.response)
            while i < len(ids) and not at(i, self.response) and not at(i, self.instruction):
                targets[i] = ids[i]
                i += 1
                if ids[i - 1] == self.eos_id:
                    break
        return targets


def token_lengths(rows: list[dict], processor, extra_tokens=lambda row: 0) -> list[tuple[int, int | None]]:
    """(length, answer start) of each row's rendered text in tokens, `extra_tokens(row)` added (the tokens an
    image placeholder expands into): the index of the first answer token (None where no known turn marker
    is found). Training cut to max_seq_length tokens keeps an answer token only when answer start is below it."""
    tokenizer = tokenizer_of(processor)
    masks = {}
    lengths = []
    for row in rows:
        ids = tokenizer(row["text"], add_special_tokens=False)["input_ids"]
        markers = markers_of(row["text"])
        start = None
        if markers:
            mask = masks.setdefault(markers, AnswerMask(processor, markers))
            labels = mask.labels(ids)
            start = next((i for i, label in enumerate(labels) if label != -100), len(ids))
        extra = extra_tokens(row)
        lengths.append((len(ids) + extra, None if start is None else start + extra))
    return lengths


def answer_cut_off(answer_start: int | None, max_length: int) -> bool:
    """Whether a row cut to `max_length` tokens keeps none of its answer tokens (see token_lengths)."""
    return answer_start is not None and answer_start >= max_length
