import pytest

from slothline.data.formats import to_messages
from slothline.errors import RowError


def test_alpaca_with_and_without_input():
    with_input = to_messages({"instruction": "Uppercase the word.", "input": "apple", "output": "APPLE"}, "alpaca")
    assert with_input == [
        {"role": "user", "content": "Uppercase the word.\n\napple"},
        {"role": "assistant", "content": "APPLE"},
    ]
    without = to_messages({"instruction": "Capital of France?", "input": "", "output": "Paris."}, "alpaca")
    assert without[0] == {"role": "user", "content": "Capital of France?"}


def test_sharegpt_maps_roles():
    row = {"conversations": [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "Hi"},
        {"from": "gpt", "value": "Hello!"},
        {"from": "human", "value": "Bye"},
        {"from": "gpt", "value": "Goodbye!"},
    ]}
    assert [m["role"] for m in to_messages(row, "sharegpt")] == ["system", "user", "assistant", "user", "assistant"]


def test_messages_keep_turns_and_join_content_parts_with_newlines():
    parts = [{"type": "text", "text": "Think of the number 7."}, {"type": "input_text", "text": "Answer in one word."}]
    row = {"messages": [
        {"role": "system", "content": "S"},
        {"role": "user", "content": parts},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Seven"}], "name": "ignored", "weight": 1},
    ]}
    assert to_messages(row, "messages") == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Think of the number 7.\nAnswer in one word."},
        {"role": "assistant", "content": "Seven"},
    ]


@pytest.mark.parametrize("part", [{"type": "image_url", "image_url": {"url": "https://x/cat.png"}},
                                  {"type": "image", "image": "cat.png"}, {"type": "input_image", "image_url": "x"}])
def test_image_parts_are_refused_for_text_models_pointing_to_vision_models(part):
    row = {"messages": [{"role": "user", "content": [part, {"type": "text", "text": "What is it?"}]},
                        {"role": "assistant", "content": "A cat."}]}
    with pytest.raises(RowError) as caught:
        to_messages(row, "messages")
    assert str(caught.value) == (f"messages[0].content[0]: {part['type']!r} parts need a vision model (kind: vision, "
                                 "e.g. model.name: builtin:tiny-qwen3-vl); drop the image part or the row for this "
                                 "text model")


@pytest.mark.parametrize(("part", "expected"), [
    ({"type": "input_audio", "input_audio": {}}, "messages[0].content[1]: unknown part type 'input_audio'; "
                                                 'use text parts, like {"type": "text", "text": ...}'),
    ({"type": "text", "text": 7}, "messages[0].content[1]: 'text' must be a string, got int"),
    ("plain", "messages[0].content[1]: a content part must be an object with a 'type', like "
              '{"type": "text", "text": ...}'),
])
def test_bad_content_parts_say_which_part(part, expected):
    row = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Q"}, part]},
                        {"role": "assistant", "content": "A"}]}
    with pytest.raises(RowError) as caught:
        to_messages(row, "messages")
    assert str(caught.value) == expected


def test_an_answer_with_weight_0_is_refused_and_weight_1_accepted():
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello", "weight": 0},
             {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye!", "weight": 1}]
    with pytest.raises(RowError) as caught:
        to_messages({"messages": turns}, "messages")
    assert str(caught.value) == (
        "messages[1]: weight 0 (no loss on this answer) is not supported: every assistant answer is trained; "
        "remove the key to train on this answer too, or drop the row")
    turns[1]["weight"] = 1
    assert [m["content"] for m in to_messages({"messages": turns}, "messages")] == ["Hi", "Hello", "Bye", "Bye!"]
    turns[1]["weight"] = 0.5
    with pytest.raises(RowError, match=r"^messages\[1\]: weight must be 0 or 1 \(got 0.5\)"):
        to_messages({"messages": turns}, "messages")


def test_messages_from_a_csv_cell_are_json():
    row = {"messages": '[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}]'}
    assert to_messages(row, "messages")[1]["content"] == "Hey"


def test_reasoning_keeps_the_think_block_in_the_answer():
    solution = "<think>\n2 + 2 = 4\n</think>\n\nThe answer is 4."
    messages = to_messages({"problem": "What is 2 + 2?", "generated_solution": solution}, "reasoning")
    assert messages == [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": solution}]


def test_system_prompt_added_only_where_missing():
    row = {"instruction": "Hi", "output": "Hello"}
    assert to_messages(row, "alpaca", "Be kind.")[0] == {"role": "system", "content": "Be kind."}
    own = {"messages": [{"role": "system", "content": "Own."}, {"role": "user", "content": "Q"},
                        {"role": "assistant", "content": "A"}]}
    assert [m["content"] for m in to_messages(own, "messages", "Be kind.")] == ["Own.", "Q", "A"]


def test_llama_factory_alpaca_system_and_history_come_before_the_question():
    row = {"instruction": "And times two?", "input": "", "output": "14.", "system": "Be brief.",
           "history": [["What is 3 plus 4?", "7."]]}
    assert to_messages(row, "alpaca") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 3 plus 4?"}, {"role": "assistant", "content": "7."},
        {"role": "user", "content": "And times two?"}, {"role": "assistant", "content": "14."}]
    with pytest.raises(RowError, match=r"^history\[0\] must be a \[question, answer\] pair of strings"):
        to_messages({**row, "history": [["only a question"]]}, "alpaca")


def test_reasoning_content_opens_the_answer_as_a_think_block():
    """As Qwen3's chat template writes an assistant turn's reasoning_content."""
    row = {"messages": [{"role": "user", "content": "What is 27 + 28?"},
                        {"role": "assistant", "content": "55", "reasoning_content": " I add 27 and 28. "}]}
    assert to_messages(row, "messages")[1]["content"] == "<think>\nI add 27 and 28.\n</think>\n\n55"
    row["messages"][1]["content"] = [{"type": "text", "text": "55"}]
    assert to_messages(row, "messages")[1]["content"] == "<think>\nI add 27 and 28.\n</think>\n\n55"


def test_rows_as_parquet_and_datasets_write_them():
    """Parquet gives every message the keys any message has, None where a row had none: a weight of None is
    unset, an empty system turn is none, tool_calls of None are no call."""
    row = {"messages": [
        {"role": "system", "content": "", "weight": None, "tool_calls": None, "reasoning_content": None},
        {"role": "user", "content": "Hi", "weight": None, "tool_calls": None, "reasoning_content": None},
        {"role": "assistant", "content": "Hello", "weight": None, "tool_calls": None, "reasoning_content": None}]}
    assert to_messages(row, "messages", "Be kind.") == [
        {"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"}]
    sharegpt = {"conversations": [{"from": "system", "value": " "}, {"from": "human", "value": "Hi"},
                                  {"from": "gpt", "value": "Hello"}]}
    assert [m["role"] for m in to_messages(sharegpt, "sharegpt")] == ["user", "assistant"]


def test_tool_calls_are_refused_rather_than_dropped():
    call = [{"type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}]
    row = {"messages": [{"role": "user", "content": "2 + 3?"},
                        {"role": "assistant", "content": "Let me compute that.", "tool_calls": call}]}
    with pytest.raises(RowError) as caught:
        to_messages(row, "messages")
    assert str(caught.value) == ("messages[1]: tool_calls are not supported: answers are trained as their text, so the "
                                 "call would be lost; drop the row (`on_error: skip` on this source skips such rows)")


@pytest.mark.parametrize(("row", "fmt", "expected"), [
    ({"instruction": "Hi"}, "alpaca", "missing or empty field 'output'"),
    ({"body": "Hi", "category": "bug"}, "alpaca", "field 'instruction'; every row needs a non-empty string there "
                                                   "(this row's fields: body, category)"),
    ({"input": "x", "output": "y"}, "alpaca", "missing or empty field 'instruction'"),
    ({"instruction": "Six times seven?", "output": 42}, "alpaca", "field 'output' holds int '42', not text; store it as a string"),
    ({"instruction": ["a"], "output": "y"}, "alpaca", "field 'instruction' holds list \"['a']\", not text"),
    ({"problem": "Q"}, "reasoning", "missing or empty field 'generated_solution'"),
    ({"conversations": []}, "sharegpt", "empty conversation"),
    ({"messages": []}, "messages", "empty conversation"),
    ({"text": "hello"}, "sharegpt", "missing field 'conversations'"),
    ({"conversations": [{"from": "bot", "value": "x"}]}, "sharegpt", "unknown role 'bot'"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages", "unknown role 'tool'"),
    ({"messages": [{"role": "user", "content": "Q"}]}, "messages", "no assistant turn"),
    ({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"},
                   {"role": "user", "content": "Q2"}]}, "messages", "must end with the assistant's answer"),
    ({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": " "}]}, "messages",
     "turn 1 (assistant): content must be a non-empty string"),
    ({"messages": [{"role": "user", "content": "Q"}, {"role": "system", "content": "S"},
                   {"role": "assistant", "content": "A"}]}, "messages", "a system prompt may only come first"),
    ({"messages": "not json"}, "messages", "not a JSON list"),
    ({"messages": [{"role": "system", "content": "S"}, {"role": "assistant", "content": "A"}]}, "messages",
     "no user turn"),
    (["a", "list"], "alpaca", "expected a JSON object"),
])
def test_bad_rows_say_what_is_wrong(row, fmt, expected):
    with pytest.raises(RowError) as caught:
        to_messages(row, fmt)
    assert expected in str(caught.value)
