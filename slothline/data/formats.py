"""Convert one row of a chat data format (alpaca, sharegpt, messages, reasoning) into canonical messages.

Every converter returns `[{"role", "content"}, ...]` ending with an assistant turn, or raises
RowError saying what is wrong with the row and how to fix it; the caller adds file and line.
"""

import json

from slothline.errors import RowError

ROLES = {"system", "user", "assistant"}
TEXT_PARTS = {"text", "input_text", "output_text"}  # Chat Completions; Responses API
IMAGE_PARTS = {"image_url", "image", "input_image"}
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


def alpaca(row: dict) -> list[dict]:
    """{"instruction", "input" (optional), "output"}: instruction and input become the user turn. LLaMA-Factory's
    optional `system` (a system turn) and `history` (earlier [question, answer] pairs, oldest first) come before."""
    instruction = required_text(row, "instruction")
    extra = row.get("input") or ""
    if not isinstance(extra, str):
        raise RowError(f"field 'input' must be a string, got {type(extra).__name__}")
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    system = row.get("system") or ""
    if not isinstance(system, str):
        raise RowError(f"field 'system' must be a string, got {type(system).__name__}")
    turns = [{"role": "system", "content": system}] if system.strip() else []
    for i, pair in enumerate(row.get("history") or []):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(text, str) for text in pair)):
            raise RowError(f"history[{i}] must be a [question, answer] pair of strings")
        turns += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return _checked([*turns, {"role": "user", "content": user},
                     {"role": "assistant", "content": required_text(row, "output")}])


def sharegpt(row: dict) -> list[dict]:
    """{"conversations": [{"from": human|gpt|system, "value"}, ...]} (Vicuna/ShareGPT style)."""
    turns = _list(row, "conversations")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise RowError(f"conversations[{i}] must be an object with 'from' and 'value'")
        role = SHAREGPT_ROLES.get(turn["from"])
        if role is None:
            raise RowError(
                f"conversations[{i}]: unknown role {turn['from']!r}; use one of {', '.join(SHAREGPT_ROLES)}"
            )
        if role != "system" or not _blank(turn["value"]):  # an empty system prompt is none
            messages.append({"role": role, "content": turn["value"]})
    return _checked(messages)


def messages(row: dict) -> list[dict]:
    """OpenAI style: {"messages": [{"role": system|user|assistant, "content"}, ...]}; content is a string
    or a list of text parts, joined with newlines. An assistant turn's `weight` (OpenAI fine-tuning:
    0 = no loss on it) may only be 1, since every answer is trained; its `reasoning_content` (as Qwen3's and
    DeepSeek-R1's datasets hold the thinking) opens its answer as a <think> block, as Qwen3's template writes it."""
    return _checked(message_turns(row, _text_content))


def message_turns(row: dict, convert_content) -> list[dict]:
    """The {role, content} turns of an OpenAI-style row, each content passed through
    `convert_content(content, where)`; roles, assistant weights and tool calls checked, reasoning_content put in
    the answer (see `messages`), an empty system turn dropped."""
    turns = _list(row, "messages")
    converted = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
            raise RowError(f"messages[{i}] must be an object with 'role' and 'content'")
        if turn["role"] not in ROLES:
            raise RowError(f"messages[{i}]: unknown role {turn['role']!r}; use one of {', '.join(sorted(ROLES))}")
        if turn["role"] == "system" and _blank(turn["content"]):  # an empty system prompt is none
            continue
        weight = turn.get("weight") if turn["role"] == "assistant" and turn.get("weight") is not None else 1
        if weight == 0:
            raise RowError(f"messages[{i}]: weight 0 (no loss on this answer) is not supported: every assistant answer "
                           "is trained; remove the key to train on this answer too, or drop the row")
        if weight != 1:
            raise RowError(f"messages[{i}]: weight must be 0 or 1 (got {weight!r})")
        calls = [key for key in ("tool_calls", "function_call") if turn.get(key)]
        if calls:
            raise RowError(f"messages[{i}]: {calls[0]} are not supported: answers are trained as their text, so the "
                           "call would be lost; drop the row (`on_error: skip` on this source skips such rows)")
        content = convert_content(turn["content"], f"messages[{i}]")
        reasoning = turn.get("reasoning_content") if turn["role"] == "assistant" else None
        if reasoning is not None and not _blank(reasoning):
            content = _with_thinking(reasoning, content, f"messages[{i}]")
        converted.append({"role": turn["role"], "content": content})
    return converted


def _with_thinking(reasoning, content, where: str):
    """An answer's `content` (a string or content parts) opened by its reasoning as a <think> block."""
    if not isinstance(reasoning, str):
        raise RowError(f"{where}: 'reasoning_content' must be a string, got {type(reasoning).__name__}")
    block = f"<think>\n{reasoning.strip()}\n</think>\n\n"
    if isinstance(content, list):
        return [{"type": "text", "text": block[:-1]}, *content]  # parts are joined with a newline
    if content is not None and not isinstance(content, str):
        return content  # the caller's checks name its type
    return block + (content or "").lstrip()


def _blank(content) -> bool:
    """Whether turn content is empty: None, or a string of whitespace."""
    return content is None or isinstance(content, str) and not content.strip()


def _text_content(content, where: str):
    if isinstance(content, list):
        return "\n".join(_part_text(part, f"{where}.content[{j}]") for j, part in enumerate(content))
    return content


def _part_text(part, where: str) -> str:
    """The text of one OpenAI content part; image and other parts are refused."""
    text_part = '{"type": "text", "text": ...}'
    check_part(part, where)
    if part["type"] in IMAGE_PARTS:
        raise RowError(f"{where}: {part['type']!r} parts need a vision model (kind: vision, e.g. "
                       "model.name: builtin:tiny-qwen3-vl); drop the image part or the row for this text model")
    if part["type"] not in TEXT_PARTS:
        raise RowError(f"{where}: unknown part type {part['type']!r}; use text parts, like {text_part}")
    if not isinstance(part.get("text"), str):
        raise RowError(f"{where}: 'text' must be a string, got {type(part.get('text')).__name__}")
    return part["text"]


def check_part(part, where: str) -> None:
    if not isinstance(part, dict) or "type" not in part:
        raise RowError(f"{where}: a content part must be an object with a 'type', like " + '{"type": "text", "text": ...}')


def reasoning(row: dict) -> list[dict]:
    """{"problem", "generated_solution"}: the solution (with its <think> block) is the answer."""
    return _checked([
        {"role": "user", "content": required_text(row, "problem")},
        {"role": "assistant", "content": required_text(row, "generated_solution")},
    ])


CONVERTERS = {"alpaca": alpaca, "sharegpt": sharegpt, "messages": messages, "reasoning": reasoning}


def to_messages(row: dict, format_name: str, system_prompt: str | None = None, converters: dict = CONVERTERS) -> list[dict]:
    """Canonical messages of `row` (by one of `converters`); `system_prompt` is added where the row has no
    system turn."""
    if not isinstance(row, dict):
        raise RowError(f"expected a JSON object, got {type(row).__name__}")
    converted = converters[format_name](row)
    if system_prompt and converted[0]["role"] != "system":
        converted.insert(0, {"role": "system", "content": system_prompt})
    return converted


def required_text(row: dict, field: str) -> str:
    value = row.get(field)
    if value is not None and not isinstance(value, str):
        raise RowError(f"field {field!r} holds {type(value).__name__} {str(value)[:40]!r}, not text; store it as a "
                       "string (quoted in JSON, a string column in CSV or parquet)")
    if not value or not value.strip():
        fields = f" (this row's fields: {', '.join(map(str, row))})" if field not in row else ""
        raise RowError(f"missing or empty field {field!r}; every row needs a non-empty string there{fields}")
    return value


def _list(row: dict, field: str) -> list:
    value = row.get(field)
    if isinstance(value, str):  # CSV cells hold JSON-encoded lists
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise RowError(f"field {field!r} is a string that is not a JSON list")
    if value is None:
        raise RowError(f"missing field {field!r}")
    if not isinstance(value, list):
        raise RowError(f"field {field!r} must be a list of turns, got {type(value).__name__}")
    if not value:
        raise RowError(f"field {field!r} is an empty conversation; drop the row or fill it")
    return value


def _checked(turns: list[dict]) -> list[dict]:
    for i, turn in enumerate(turns):
        if not isinstance(turn["content"], str) or not turn["content"].strip():
            raise RowError(f"turn {i} ({turn['role']}): content must be a non-empty string")
    return check_turn_order(turns)


def check_turn_order(turns: list[dict]) -> list[dict]:
    """The turns as {role, content}, after checking their order: a system turn only first, at least one
    user turn, ending with the assistant's answer."""
    for i, turn in enumerate(turns):
        if turn["role"] == "system" and i > 0:
            raise RowError(f"turn {i} is a system turn; a system prompt may only come first")
    if not any(turn["role"] == "assistant" for turn in turns):
        raise RowError("no assistant turn; a training example needs at least one answer")
    if turns[-1]["role"] != "assistant":
        raise RowError(f"the last turn is {turns[-1]['role']!r}; a conversation must end with the assistant's answer")
    if not any(turn["role"] == "user" for turn in turns):
        raise RowError("no user turn; the assistant's answer needs a question before it")
    return [{"role": t["role"], "content": t["content"]} for t in turns]
