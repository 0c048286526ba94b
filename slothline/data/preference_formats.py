"""Convert one row of a preference data format into canonical preference records.

- `preference` (paired): {"prompt", "chosen", "rejected"}. Each field is text or OpenAI-style messages, as in
  TRL's preference datasets: a prompt string or a conversation ending with a user turn, answers as a string or
  one assistant message. Without `prompt` (binarized feedback sets such as trl-lib/ultrafeedback_binarized),
  `chosen` and `rejected` are whole conversations whose shared opening is the prompt; with it, they may be
  too (HuggingFaceH4/ultrafeedback_binarized: the prompt's turns, then the answer).
- `kto` (unpaired): {"prompt", "completion", "label"}: one answer, labelled desirable (true) or not (false).

Each converter returns {"messages": the prompt's turns (ending with a user turn), ...the answers as text} or
raises RowError saying what is wrong with the row; the caller adds file and line.
"""

from slothline.data.formats import _text_content, message_turns, required_text
from slothline.errors import RowError

LABELS = {True: True, False: False, "true": True, "false": False, 1: True, 0: False, "1": True, "0": False}


def paired(row: dict) -> dict:
    """{"messages", "chosen", "rejected"} of a `preference` row."""
    if "chosen" not in row or "rejected" not in row:
        raise RowError(f"a preference row needs 'chosen' and 'rejected' (this row's fields: {', '.join(map(str, row))})")
    if row.get("prompt") is None:
        if isinstance(row["chosen"], str) or isinstance(row["rejected"], str):
            raise RowError(f"missing field 'prompt'; text answers need it (this row's fields: {', '.join(map(str, row))})")
        chosen, rejected = conversation(row, "chosen"), conversation(row, "rejected")
        shared = next((i for i, (a, b) in enumerate(zip(chosen, rejected)) if a != b), min(len(chosen), len(rejected)))
        if shared == 0 or chosen[shared - 1]["role"] != "user" or len(chosen) != shared + 1 or len(rejected) != shared + 1:
            raise RowError("without 'prompt', 'chosen' and 'rejected' must be conversations that share every turn up "
                           "to the last user turn and differ only in the one assistant answer after it")
        record = {"messages": chosen[:shared], "chosen": chosen[-1]["content"], "rejected": rejected[-1]["content"]}
    else:
        prompt = prompt_turns(row)
        record = {"messages": prompt, "chosen": answer(row, "chosen", prompt), "rejected": answer(row, "rejected", prompt)}
    if record["chosen"].strip() == record["rejected"].strip():
        raise RowError("'chosen' and 'rejected' are the same answer, so the pair prefers nothing; drop the row")
    return record


def unpaired(row: dict) -> dict:
    """{"messages", "completion", "label"} of a `kto` row."""
    label = row.get("label").lower() if isinstance(row.get("label"), str) else row.get("label")  # pandas: True
    if label not in LABELS or isinstance(label, float):
        raise RowError(f"field 'label' must be true (a desirable answer) or false (an undesirable one), got "
                       f"{row.get('label')!r}")
    prompt = prompt_turns(row)
    return {"messages": prompt, "completion": answer(row, "completion", prompt), "label": LABELS[label]}


def prompt_turns(row: dict) -> list[dict]:
    """The prompt as turns: a string is one user turn; a conversation must end with a user turn."""
    prompt = row.get("prompt")
    if isinstance(prompt, str):
        return [{"role": "user", "content": required_text(row, "prompt")}]
    turns = conversation(row, "prompt")
    if turns[-1]["role"] != "user":
        raise RowError(f"'prompt' ends with a {turns[-1]['role']} turn; it must end with the user turn the answers reply to")
    if any(turn["role"] == "system" for turn in turns[1:]):
        raise RowError("'prompt' has a system turn after the first; a system prompt may only come first")
    return turns


def answer(row: dict, field: str, prompt: list[dict]) -> str:
    """An answer field: text, one assistant message, or the prompt's turns followed by one assistant message."""
    value = row.get(field)
    if isinstance(value, str):
        return required_text(row, field)
    turns = conversation(row, field)
    same = lambda a, b: a["role"] == b["role"] and a["content"].strip() == b["content"].strip()
    if turns[-1]["role"] == "assistant" and len(turns) - 1 in (0, len(prompt)) and all(map(same, turns[:-1], prompt)):
        return turns[-1]["content"]
    raise RowError(f"'{field}' must be the answer: a string, one assistant message, or the prompt's turns followed "
                   f"by one assistant message; got {len(turns)} turns ({', '.join(t['role'] for t in turns)})")


def conversation(row: dict, field: str) -> list[dict]:
    """OpenAI-style turns of `field`, each with non-empty text content."""
    try:
        turns = message_turns({"messages": row.get(field)}, _text_content)
    except RowError as err:
        raise RowError(str(err).replace("messages", field)) from None
    for i, turn in enumerate(turns):
        if not isinstance(turn["content"], str) or not turn["content"].strip():
            raise RowError(f"{field}[{i}] ({turn['role']}): content must be a non-empty string")
    return turns


CONVERTERS = {"preference": paired, "kto": unpaired}
