"""Chat rendering and the answer mask, shared by the generating kinds (causal LM, vision).

`render` turns canonical messages into the training `text`, the generation `prompt` and the `reference`
answer: with the model's chat template (`chat`) or the classic Alpaca prompt (`alpaca`). `AnswerMask` is
THE answer mask: the tokens holding the characters after each response marker up to and including the end
of the turn (the first of the model's stop tokens). Training on both backends, the eval loss and prepare's
token statistics all use it.

Message text is text. Where a message spells one of the tokenizer's special tokens (a user typing
`<|im_end|>\\n<|im_start|>assistant\\n`), the rendered row records those characters under `literals`
(character spans of `text` and `prompt`), and `encode` tokenizes them as plain text: only the markers the
template put there become control tokens, and the answer mask cannot find a turn marker inside a message.
Rows whose messages spell no special token have no `literals` and tokenize exactly as before.
"""

import re

from jinja2.exceptions import TemplateError

from slothline.errors import RowError, SlothlineError
from slothline.families import ALPACA_PREAMBLE, CHAT_FORMATS, chat_format_of
from slothline.kinds._generative.tokens import LITERALS, adds_bos, encode, encode_rows, literal_spans, tokenizer_of

ALPACA_PROMPT = ALPACA_PREAMBLE + "\n\n### Instruction:\n{}\n\n### Response:\n{}"
# (instruction_part, response_part) of the templates whose answers can be masked
TURN_MARKERS = {name: chat.turns for name, chat in CHAT_FORMATS.items()}
THINK_TAGS = ("<think>", "</think>")
NO_CHAT_TEMPLATE = ("model.name: this tokenizer has no chat template; set `template: alpaca` on each data source or use "
                    "a chat (instruct) model")
TEMPLATE_DATE = "26 Jul 2024"  # the date Llama 3's templates write when given none: prepared data stays the same by day


def render(messages: list[dict], processor, template: str, enable_thinking: bool,
           stop_tokens: tuple[str, ...] = ()) -> dict:
    """`text` (the whole example, EOS appended unless it already ends with one of `stop_tokens` or the EOS),
    `prompt` (up to the last answer), `reference` (the last answer without a leading <think> block: what
    evaluate scores generations against) and, where message text spells a special token, `literals`.
    `processor` is a tokenizer or a multimodal processor, whose chat template renders image parts. Literal
    think tags (any but an answer's leading block) reach the template as text it cannot split on."""
    tokenizer = tokenizer_of(processor)
    guard = Guard(messages, special_tokens(tokenizer))
    guarded = guard.messages
    history, answer = guarded[:-1], guarded[-1]["content"]
    if template == "alpaca":
        if len(messages) != 2 or messages[0]["role"] != "user":
            raise RowError("the alpaca template takes single-turn examples without a system prompt; use template: chat")
        start = tokenizer.bos_token if adds_bos(tokenizer) else ""  # as tokenizer(text) starts it
        text = start + ALPACA_PROMPT.format(guarded[0]["content"], answer)
        prompt = start + ALPACA_PROMPT.format(guarded[0]["content"], "")
    else:
        if not processor.chat_template:
            raise SlothlineError(NO_CHAT_TEMPLATE)
        # A processor hands keyword arguments its template does not use to the tokenizer, with a warning.
        multimodal = hasattr(processor, "tokenizer")
        options = ({"enable_thinking": enable_thinking}
                   if not multimodal or "enable_thinking" in processor.chat_template else {})
        if "date_string" in processor.chat_template:  # Llama 3.1-3.3's: today's date unless given one
            options["date_string"] = TEMPLATE_DATE
        try:
            text = processor.apply_chat_template(guarded, tokenize=False, **options)
            prompt = processor.apply_chat_template(history, tokenize=False, add_generation_prompt=True, **options)
        except (TypeError, ValueError, TemplateError) as err:  # a template that refuses this conversation
            raise RowError(f"the model's chat template cannot render this conversation ({err})") from None
    text, text_spans = guard.restore(with_eos(text, tokenizer.eos_token, stop_tokens))
    prompt, prompt_spans = guard.restore(prompt)
    rendered = {"text": text, "prompt": prompt, "reference": strip_thinking(messages[-1]["content"])}
    if text_spans or prompt_spans:
        rendered[LITERALS] = {"text": text_spans, "prompt": prompt_spans}
    return rendered


def alpaca_chat_template(tokenizer) -> str:
    """A Jinja chat template writing a conversation as `render` writes alpaca rows (BOS where the tokenizer adds
    one, the preamble, then `### Instruction:` and `### Response:` turns; a system prompt replaces the preamble).
    Each text is an expression: transformers renders with trim_blocks, which drops a line break after a tag."""
    return ("{{ bos_token }}" if adds_bos(tokenizer) else "") + (
        "{% if messages and messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}"
        f"{{% else %}}{ALPACA_PREAMBLE}{{% endif %}}"
        "{% for message in messages %}{% if message['role'] == 'user' %}"
        "{{ '\\n\\n### Instruction:\\n' + message['content'] + '\\n\\n' }}"
        "{% elif message['role'] == 'assistant' %}{{ '### Response:\\n' + message['content'] + eos_token }}"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}")


def adopt_alpaca_template(tokenizer, rows: list[dict]) -> None:
    """Give the tokenizer the alpaca chat template when every row's prompt is an alpaca prompt, so that the model
    saved with it (the merged model, its GGUF file and Ollama Modelfile) is prompted as it was trained."""
    start = (tokenizer.bos_token if adds_bos(tokenizer) else "") + ALPACA_PROMPT.split("{}")[0]
    if rows and all((row.get("prompt") or row.get("text") or "").startswith(start) for row in rows):
        tokenizer.chat_template = alpaca_chat_template(tokenizer)


def special_tokens(tokenizer) -> list[str]:
    """The strings of the tokenizer's special (control) tokens, longest first."""
    added = getattr(tokenizer, "added_tokens_decoder", {})
    return sorted({token.content for token in added.values() if token.special}, key=len, reverse=True)


def strip_thinking(answer: str) -> str:
    """The answer after a leading <think>...</think> block (the whole answer, stripped, when it does not start
    with one: a </think> further on is part of the answer)."""
    answer = answer.strip()
    opening, closing = THINK_TAGS
    if answer.startswith(opening) and closing in answer:
        return answer.split(closing, 1)[1].strip()
    return answer


def with_eos(text: str, eos_token: str, stop_tokens: tuple[str, ...] = ()) -> str:
    """Append EOS unless the text already ends with it or with another of the model's stop tokens (chat
    templates close turns with theirs: Qwen's <|im_end|>, Gemma's <end_of_turn>)."""
    ending = text.rstrip()
    if not eos_token or any(ending.endswith(token) for token in (eos_token, *stop_tokens) if token):
        return text
    return text + eos_token


class Guard:
    """Messages whose text has each special-token string, and each think tag but an answer's leading block,
    replaced by a placeholder the chat template passes through untouched; `restore` puts the strings back
    into a rendered text and returns the spans of the special tokens among them."""

    def __init__(self, messages: list[dict], specials: list[str]):
        texts = [text for message in messages for text in _texts(message["content"])]
        free = next(chr(c) for c in range(0xE000, 0xF900) if not any(chr(c) in text for text in texts))
        self.originals: list[str] = []
        self.placeholder = re.compile(f"{free}(\\d+){free}")
        self.specials = set(specials)
        pattern = re.compile("|".join(re.escape(s) for s in [*specials, *THINK_TAGS]))

        def hide(text: str, keep_from: int = 0) -> str:
            def one(match):
                if match.group() in THINK_TAGS and match.start() < keep_from:  # the answer's own thinking block
                    return match.group()
                self.originals.append(match.group())
                return f"{free}{len(self.originals) - 1}{free}"

            return pattern.sub(one, text)

        def guarded(message: dict) -> dict:
            leading = _leading_think_end(message["content"]) if message["role"] == "assistant" else 0
            content = message["content"]
            if isinstance(content, str):
                content = hide(content, leading)
            else:
                content = [{**part, "text": hide(part["text"])} if part.get("type") == "text" else part
                           for part in content]
            return {**message, "content": content}

        self.messages = [guarded(message) for message in messages]

    def restore(self, rendered: str) -> tuple[str, list[list[int]]]:
        out, spans, cursor, length = [], [], 0, 0
        for match in self.placeholder.finditer(rendered):
            original = self.originals[int(match.group(1))]
            out.append(rendered[cursor : match.start()])
            length += match.start() - cursor
            if original in self.specials:
                spans.append([length, length + len(original)])
            out.append(original)
            length += len(original)
            cursor = match.end()
        out.append(rendered[cursor:])
        return "".join(out), spans


def _texts(content) -> list[str]:
    return [content] if isinstance(content, str) else [p["text"] for p in content if p.get("type") == "text"]


def _leading_think_end(content) -> int:
    """Where an answer's leading <think>...</think> block ends (0 without one): its tags are the template's to read."""
    if not isinstance(content, str):
        return 0
    opening, closing = THINK_TAGS
    start = len(content) - len(content.lstrip())
    if not content.startswith(opening, start) or closing not in content[start:]:
        return 0
    return content.index(closing, start) + len(closing)


def turn_markers(texts: list[str]) -> tuple[str, str]:
    """The (instruction_part, response_part) pair that every rendered text uses."""
    for instruction_part, response_part in TURN_MARKERS.values():
        if all(response_part in text for text in texts):
            return instruction_part, response_part
    raise SlothlineError(
        "train.train_on_responses_only: no pair of turn markers is shared by every example (known: "
        f"{', '.join(TURN_MARKERS)}), so the answers cannot be told from the prompts; set "
        "train.train_on_responses_only: false (the loss then covers whole texts), or `template: alpaca` on each "
        "data source"
    )


def markers_of(text: str) -> tuple[str, str] | None:
    """The known turn markers `text` uses, or None."""
    chat = chat_format_of(text)
    return chat and chat.turns


class AnswerMask:
    """The answers of rendered texts, for one tokenizer and pair of turn markers, found in the text and not
    among its tokens: the characters after each response marker up to and including the end of the turn (the
    first of `stop_ids`, the tokenizer's EOS when not given) or up to the next marker; markers and turn ends
    that message text spells (a row's literals) are text. A token holding any answer character is an answer
    token, so a tokenizer that merges the marker's last line break with an answer's first (Qwen's "\n\n") or
    writes the marker otherwise inside a text than alone (SentencePiece's word starts) loses no answer."""

    def __init__(self, processor, markers: tuple[str, str], stop_ids=None):
        self.processor = processor
        tokenizer = tokenizer_of(processor)
        stop_ids = stop_ids or [tokenizer.convert_tokens_to_ids(tokenizer.eos_token)]
        self.instruction, self.response = markers
        self.stops = [stop for stop in (tokenizer.decode([i]) for i in stop_ids) if stop]

    def spans(self, text: str, literals=()) -> list[tuple[int, int]]:
        """The (start, end) characters of each answer in `text`."""
        def find(needle: str, start: int) -> int | None:
            at = text.find(needle, start)
            while at >= 0 and any(s < at + len(needle) and at < e for s, e in literals):
                at = text.find(needle, at + 1)
            return at if at >= 0 else None

        spans, cursor = [], 0
        while (marker := find(self.response, cursor)) is not None:
            start = marker + len(self.response)
            ends = [at + len(stop) for stop in self.stops if (at := find(stop, start)) is not None]
            ends += [at for part in (self.response, self.instruction) if (at := find(part, start)) is not None]
            cursor = min(ends, default=len(text))
            spans.append((start, cursor))
        return spans

    def labels(self, text: str, literals=()) -> tuple[list[int], list[int]]:
        """The token ids of a rendered text (`encode`'s, `literals` its literal spans) and their labels: the id
        on answer tokens, -100 elsewhere."""
        ids, places = encode(self.processor, text, literals, offsets=True)
        return ids, self.labels_of(ids, places, self.spans(text, literals))

    def rows(self, rows: list[dict]) -> list[tuple[list[int], list[int]]]:
        """`labels` of each rendered row's `text`, the rows without literals tokenized in one batch."""
        encoded = encode_rows(self.processor, rows, offsets=True)
        return [(ids, self.labels_of(ids, places, self.spans(row["text"], literal_spans(row, "text"))))
                for row, (ids, places) in zip(rows, encoded)]

    @staticmethod
    def labels_of(ids: list[int], places, spans: list[tuple[int, int]]) -> list[int]:
        inside = lambda s, e: any(start <= s < end or s < start < e for start, end in spans)
        return [token if inside(s, e) else -100 for token, (s, e) in zip(ids, places)]


def token_lengths(rows: list[dict], processor, extra_tokens=lambda row: 0) -> list[tuple[int, int | None]]:
    """(length, answer start) of each row's rendered text in tokens, `extra_tokens(row)` added (the tokens an
    image placeholder expands into): the index of the first answer token (None where no known turn marker
    is found). Training cut to max_seq_length tokens keeps an answer token only when answer start is below it."""
    masks = {}
    lengths = []
    for row in rows:
        spans = literal_spans(row, "text")
        start = None
        if markers := markers_of(row["text"]):
            ids, labels = masks.setdefault(markers, AnswerMask(processor, markers)).labels(row["text"], spans)
            start = next((i for i, label in enumerate(labels) if label != -100), len(ids))
        else:
            ids = encode(processor, row["text"], spans)
        extra = extra_tokens(row)
        lengths.append((len(ids) + extra, None if start is None else start + extra))
    return lengths


def answer_cut_off(answer_start: int | None, max_length: int) -> bool:
    """Whether a row cut to `max_length` tokens keeps none of its answer tokens (see token_lengths)."""
    return answer_start is not None and answer_start >= max_length
