"""Render canonical messages into training text and generation prompts.

`chat` uses the model's own chat template (Qwen3's for the builtin model); `alpaca` uses the
classic Alpaca prompt, for sources that ask for it. Training text always ends with EOS.
"""

from stages.lib.errors import SlothlineError
from stages.lib.formats import RowError

ALPACA_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\n{}\n\n### Response:\n{}"
)


def render(messages: list[dict], tokenizer, template: str, enable_thinking: bool) -> dict:
    """`text` (the whole example, EOS appended), `prompt` (up to the last answer) and `reference`
    (the last answer without its <think> block: what evaluate scores generations against). `tokenizer`
    may be a multimodal processor, whose chat template renders image parts."""
    history, answer = messages[:-1], messages[-1]["content"]
    if template == "alpaca":
        if len(messages) != 2 or messages[0]["role"] != "user":
            raise RowError("the alpaca template takes single-turn examples without a system prompt; use template: chat")
        text = ALPACA_PROMPT.format(messages[0]["content"], answer)
        prompt = ALPACA_PROMPT.format(messages[0]["content"], "")
    else:
        if not tokenizer.chat_template:
            raise SlothlineError(
                "model.name: this tokenizer has no chat template; set `template: alpaca` on each data source "
                "or use a chat (instruct) model"
            )
        # A processor hands keyword arguments its template does not use to the tokenizer, with a warning.
        processor = hasattr(tokenizer, "tokenizer")
        options = {"enable_thinking": enable_thinking} if not processor or "enable_thinking" in tokenizer.chat_template else {}
        text = tokenizer.apply_chat_template(messages, tokenize=False, **options)
        prompt = tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True, **options)
    eos_token = getattr(tokenizer, "tokenizer", tokenizer).eos_token
    return {"text": with_eos(text, eos_token), "prompt": prompt, "reference": strip_thinking(answer)}


def strip_thinking(answer: str) -> str:
    """The answer after a leading <think>...</think> block (the whole answer when there is none)."""
    return answer.split("</think>", 1)[-1].strip() if "</think>" in answer else answer.strip()


def with_eos(text: str, eos_token: str) -> str:
    """Append EOS unless the text already ends with it (chat templates often close turns with it)."""
    return text if text.rstrip().endswith(eos_token) else text + eos_token


# (instruction_part, response_part) of the templates we can mask; Unsloth's train_on_responses_only takes the same pair.
TURN_MARKERS = {
    "chatml": ("<|im_start|>user\n", "<|im_start|>assistant\n"),
    "llama-3": ("<|start_header_id|>user<|end_header_id|>\n\n", "<|start_header_id|>assistant<|end_header_id|>\n\n"),
    "gemma": ("<start_of_turn>user\n", "<start_of_turn>model\n"),
    "alpaca": ("### Instruction:\n", "### Response:\n"),
}


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


def response_spans(text: str, markers: tuple[str, str], eos_token: str) -> list[tuple[int, int]]:
    """Character spans of the assistant answers: after each response marker, up to and including
    EOS, or up to the next turn marker when no EOS closes the answer."""
    instruction_part, response_part = markers
    spans, start = [], text.find(response_part)
    while start != -1:
        begin = start + len(response_part)
        ends = [text.find(eos_token, begin) + len(eos_token)] if eos_token in text[begin:] else []
        ends += [pos for pos in (text.find(instruction_part, begin), text.find(response_part, begin)) if pos != -1]
        end = min(ends, default=len(text))
        spans.append((begin, end))
        start = text.find(response_part, end)
    return spans


def assistant_mask(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """1 for each token (given by its character offsets) that lies inside an answer span, else 0."""
    return [int(any(begin <= start and end <= stop for begin, stop in spans)) for start, end in offsets]


def token_lengths(rows: list[dict], tokenizer) -> list[tuple[int, int | None]]:
    """(length, answer start) of each row's rendered text, in tokens: the index of its first answer token
    (the first one the response-only mask keeps; None where no known turn marker is found). Training
    cut to max_seq_length tokens keeps an answer token only when answer start < max_seq_length."""
    texts = [row["text"] for row in rows]
    if not texts:  # the tokenizer refuses an empty batch
        return []
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    lengths = []
    for text, offsets in zip(texts, encoded["offset_mapping"]):
        markers = next((pair for pair in TURN_MARKERS.values() if pair[1] in text), None)
        mask = assistant_mask(offsets, response_spans(text, markers, tokenizer.eos_token)) if markers else []
        lengths.append((len(offsets), mask.index(1) if 1 in mask else None))
    return lengths


def answer_cut_off(answer_start: int | None, max_length: int) -> bool:
    """Whether a row cut to `max_length` tokens keeps none of its answer tokens (see token_lengths)."""
    return answer_start is not None and answer_start >= max_length


def tokenize_for_training(rows: list[dict], tokenizer, markers: tuple[str, str] | None):
    """A `datasets.Dataset` of `input_ids`, plus `assistant_masks` (TRL's response-only labels) when
    `markers` are given. The rendered text already holds its special tokens and EOS."""
    from datasets import Dataset

    texts = [row["text"] for row in rows]
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=markers is not None)
    columns = {"input_ids": encoded["input_ids"]}
    if markers:
        columns["assistant_masks"] = [
            assistant_mask(offsets, response_spans(text, markers, tokenizer.eos_token))
            for text, offsets in zip(texts, encoded["offset_mapping"])
        ]
    return Dataset.from_dict(columns)
