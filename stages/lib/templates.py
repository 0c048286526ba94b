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
    (the last answer without its <think> block: what evaluate scores generations against)."""
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
        text = tokenizer.apply_chat_template(messages, tokenize=False, enable_thinking=enable_thinking)
        prompt = tokenizer.apply_chat_template(
            history, tokenize=False, add_generation_prompt=True, enable_thinking=enable_thinking
        )
    return {"text": with_eos(text, tokenizer.eos_token), "prompt": prompt, "reference": strip_thinking(answer)}


def strip_thinking(answer: str) -> str:
    """The answer after a leading <think>...</think> block (the whole answer when there is none)."""
    return answer.split("</think>", 1)[-1].strip() if "</think>" in answer else answer.strip()


def with_eos(text: str, eos_token: str) -> str:
    """Append EOS unless the text already ends with it (chat templates often close turns with it)."""
    return text if text.rstrip().endswith(eos_token) else text + eos_token
