import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from slothline.artifacts import DATA_METRICS, PREPARED_DIR, read_split
from slothline.errors import SlothlineError
from stages import prepare
from tests.conftest import ROOT, write_params

ALPACA = [{"instruction": f"Repeat {w}.", "input": "", "output": f"{w} {w}"} for w in ("cat", "dog", "sun", "sky")]
CHAT = [{"messages": [{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": w}]}
        for w in ("red", "blue", "green", "pink")]


def data_metrics(workdir) -> dict:
    return json.loads((workdir.path / DATA_METRICS).read_text())


def write_params_cut_to(workdir, max_seq_length: int, sources: list[dict], **data) -> dict:
    """workdir.write_params, with model.max_seq_length."""
    data_section = workdir.write_params(sources, **data)["data"]
    return write_params(workdir.path, model={"max_seq_length": max_seq_length}, data=data_section)


def prepare_error(workdir, rows, fmt="messages", **source) -> str:
    path = workdir.write_jsonl("bad.jsonl", rows)
    workdir.write_params([{"path": path, "format": fmt, **source}])
    with pytest.raises(SlothlineError) as caught:
        prepare.main()
    assert not (workdir.path / PREPARED_DIR).exists()
    return str(caught.value)


def test_writes_rendered_splits_and_metrics(workdir, tokenizer):
    workdir.write_params([{"path": workdir.write_jsonl("a.jsonl", ALPACA), "format": "alpaca"}])
    prepare.main()
    train = workdir.read_split("train")
    assert len(train) == 4 and workdir.read_split("test") == []
    record = next(r for r in train if r["messages"][0]["content"] == "Repeat cat.")
    assert record["source"] == "a"
    assert record["text"] == (
        "<|im_start|>user\nRepeat cat.<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\ncat cat<|im_end|>\n"
    )
    assert record["prompt"] == "<|im_start|>user\nRepeat cat.<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert record["reference"] == "cat cat"
    metrics = data_metrics(workdir)
    assert metrics["train_rows"] == 4 and metrics["sources"]["a"]["rows_read"] == 4
    lengths = sorted(len(tokenizer(r["text"], add_special_tokens=False)["input_ids"]) for r in train)
    assert metrics["tokens"]["train"]["max"] == lengths[-1]
    assert metrics["tokens"]["train"]["mean"] == round(sum(lengths) / 4, 1)


def test_alpaca_template_appends_eos(workdir):
    path = workdir.write_jsonl("a.jsonl", ALPACA)
    workdir.write_params([{"path": path, "format": "alpaca", "template": "alpaca"}])
    prepare.main()
    text = workdir.read_split("train")[0]["text"]
    assert text.startswith("Below is an instruction") and "### Response:\n" in text
    assert text.endswith("<|im_end|>")


def test_reasoning_reference_is_the_final_answer(workdir):
    row = {"problem": "2 + 2?", "generated_solution": "<think>\n2 + 2 = 4\n</think>\n\nThe answer is 4."}
    workdir.write_params([{"path": workdir.write_jsonl("r.jsonl", [row]), "format": "reasoning"}],
                         enable_thinking=True)
    prepare.main()
    record = workdir.read_split("train")[0]
    assert record["reference"] == "The answer is 4."
    assert record["prompt"].endswith("<|im_start|>assistant\n")
    assert "<think>\n2 + 2 = 4\n</think>\n\nThe answer is 4.<|im_end|>" in record["text"]


def test_reads_json_csv_parquet_and_save_to_disk(workdir):
    import datasets

    (workdir.path / "a.json").write_text(json.dumps(ALPACA))
    pd.DataFrame(ALPACA).to_csv(workdir.path / "a.csv", index=False)
    pd.DataFrame(ALPACA).to_parquet(workdir.path / "a.parquet")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ALPACA)}).save_to_disk(str(workdir.path / "disk"))
    sources = [{"path": p, "format": "alpaca", "name": n}
               for n, p in [("json", "a.json"), ("csv", "a.csv"), ("parquet", "a.parquet"), ("disk", "disk")]]
    workdir.write_params(sources, dedupe=False)
    prepare.main()
    counts = data_metrics(workdir)["sources"]
    assert {name: c["train_rows"] for name, c in counts.items()} == {"json": 4, "csv": 4, "parquet": 4, "disk": 4}


def test_mixing_ratio_of_total(workdir):
    alpaca = [{"instruction": f"Upper {i}", "output": f"UPPER {i}"} for i in range(100)]
    chat = [{"messages": [{"role": "user", "content": f"n{i}"}, {"role": "assistant", "content": f"{i}"}]}
            for i in range(100)]
    workdir.write_params([
        {"path": workdir.write_jsonl("reasoning.jsonl", alpaca), "format": "alpaca", "weight": 0.75},
        {"path": workdir.write_jsonl("chat.jsonl", chat), "format": "messages", "weight": 0.25},
    ], total=80, test_fraction=0.25)
    prepare.main()
    train, test = workdir.read_split("train"), workdir.read_split("test")
    assert (len(train), len(test)) == (60, 20)
    assert sum(r["source"] == "reasoning" for r in train) == 45
    assert sum(r["source"] == "reasoning" for r in test) == 15


def test_dedupe_across_sources_is_reported(workdir):
    workdir.write_params([
        {"path": workdir.write_jsonl("one.jsonl", ALPACA), "format": "alpaca"},
        {"path": workdir.write_jsonl("two.jsonl", ALPACA + [{"instruction": "New.", "output": "Row."}]),
         "format": "alpaca"},
    ])
    prepare.main()
    metrics = data_metrics(workdir)
    assert metrics["duplicates_removed"] == 4 and metrics["sources"]["two"]["duplicates_removed"] == 4


def test_output_is_byte_identical_across_runs(workdir):
    workdir.write_params([
        {"path": workdir.write_jsonl("a.jsonl", ALPACA), "format": "alpaca"},
        {"path": workdir.write_jsonl("c.jsonl", CHAT), "format": "messages"},
    ], test_fraction=0.25)
    prepare.main()
    first = {p.name: p.read_bytes() for p in (workdir.path / PREPARED_DIR).iterdir()}
    prepare.main()
    assert first == {p.name: p.read_bytes() for p in (workdir.path / PREPARED_DIR).iterdir()}


def test_truncated_rows_are_counted(workdir):
    rows = [{"instruction": "x" * 40, "output": "y"}, {"instruction": "short", "output": "y"}]
    write_params_cut_to(workdir, 50, [{"path": workdir.write_jsonl("a.jsonl", rows), "format": "alpaca"}])
    prepare.main()
    assert data_metrics(workdir)["tokens"]["train"]["truncated_rows"] == 1


@pytest.mark.parametrize("template", ["chat", "alpaca"])
def test_token_lengths_find_the_first_answer_token(tokenizer, template):
    from slothline.kinds._generative.chat import render, token_lengths

    messages = [{"role": "user", "content": "Repeat cat."}, {"role": "assistant", "content": "cat cat"}]
    row = render(messages, tokenizer, template, enable_thinking=False)
    ids = tokenizer(row["text"], add_special_tokens=False)["input_ids"]
    [(length, answer_start)] = token_lengths([row], tokenizer)
    assert length == len(ids)
    marker = "<|im_start|>assistant\n" if template == "chat" else "### Response:\n"
    assert tokenizer.decode(ids[:answer_start]).endswith(marker)
    assert tokenizer.decode(ids[answer_start:]).startswith("<think>" if template == "chat" else "cat cat")


LONG = [{"instruction": f"Spell the word {w} backwards, letter by letter, and then say it again.", "output": w[::-1]}
        for w in ("banana", "cherry", "orange", "papaya", "quince", "tomato", "walnut", "radish", "pepper", "celery")]
SHORT = [{"instruction": f"Repeat {w}.", "output": f"{w} {w}"}
         for w in ("cat", "dog", "sun", "sky", "owl", "elk", "fox", "bee", "ant", "yak")]


def test_rows_without_an_answer_token_within_max_seq_length_leave_train_and_val(workdir, capsys):
    # max 40 tokens: short rows (33 tokens) fit; long ones (61) start their answer at token 49
    write_params_cut_to(workdir, 40, [{"path": workdir.write_jsonl("a.jsonl", SHORT + LONG), "format": "alpaca"}],
                        val_fraction=0.2, test_fraction=0.2)
    prepare.main()
    metrics = data_metrics(workdir)
    is_long = lambda row: row["messages"][0]["content"].startswith("Spell")
    for name in ("train", "val"):
        assert not any(is_long(r) for r in workdir.read_split(name))
        assert metrics["tokens"][name]["rows_dropped_too_long"] == metrics["tokens"][name]["no_answer_rows"]
        assert metrics[f"{name}_rows"] + metrics["tokens"][name]["rows_dropped_too_long"] == {"train": 12, "val": 4}[name]
    test_long = sum(is_long(r) for r in workdir.read_split("test"))
    assert metrics["tokens"]["test"]["no_answer_rows"] == test_long and metrics["test_rows"] == 4
    assert metrics["tokens"]["test"]["rows_dropped_too_long"] == 0
    assert sum(metrics["tokens"][name]["no_answer_rows"] for name in ("train", "val", "test")) == 10
    assert sum(metrics["tokens"][name]["truncated_rows"] for name in ("train", "val", "test")) == 10
    counts = {name: metrics["tokens"][name]["no_answer_rows"] for name in ("train", "val", "test")}
    assert (f"model.max_seq_length 40: 10 rows are longer and get truncated (train {counts['train']}, val "
            f"{counts['val']}, test {counts['test']}); 10 have no answer token within it (dropped: train "
            f"{counts['train']}, val {counts['val']}; kept for evaluate: test {counts['test']})\n") in capsys.readouterr().out


def test_no_train_row_with_an_answer_token_within_max_seq_length_fails_with_a_fix_that_works(workdir):
    sources = [{"path": workdir.write_jsonl("a.jsonl", LONG), "format": "alpaca"}]
    write_params_cut_to(workdir, 40, sources)
    with pytest.raises(SlothlineError) as caught:
        prepare.main()
    found = re.fullmatch(r"model.max_seq_length: 40 tokens leave no answer token in any of the 10 train rows \(their "
                         r"prompts take \d+ to (\d+) tokens, whole rows up to \d+\); raise model.max_seq_length "
                         r"to at least (\d+)", str(caught.value))
    assert found and int(found[2]) == int(found[1]) + 1
    assert not (workdir.path / PREPARED_DIR).exists()
    write_params_cut_to(workdir, int(found[2]), sources)
    prepare.main()
    assert len(workdir.read_split("train")) == 10


def test_malformed_json_line_names_file_and_line(workdir):
    rows = [json.dumps(CHAT[0]), '{"messages": [', json.dumps(CHAT[1])]
    message = prepare_error(workdir, rows)
    assert message.startswith("bad.jsonl:2: malformed JSON") and "on_error: skip" in message


@pytest.mark.parametrize(("row", "expected"), [
    ({"instruction": "Hi"}, "bad.jsonl:2: missing or empty field 'output'"),
    ({"conversations": [{"from": "robot", "value": "x"}]}, "bad.jsonl:2: conversations[0]: unknown role 'robot'"),
    ({"conversations": []}, "bad.jsonl:2: field 'conversations' is an empty conversation"),
    ({"conversations": [{"from": "human", "value": "Hi"}]}, "bad.jsonl:2: no assistant turn"),
])
def test_bad_rows_name_file_and_line(workdir, row, expected):
    fmt = "alpaca" if "instruction" in row else "sharegpt"
    good = ALPACA[0] if fmt == "alpaca" else {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}
    assert expected in prepare_error(workdir, [good, row], fmt)


def test_line_separators_inside_fields_reach_train(workdir):
    rows = [{"instruction": f"Join {i}.", "output": f"a\u2028b\x85c\u2029{i}"} for i in range(20)]
    (workdir.path / "a.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                         encoding="utf-8")
    workdir.write_params([{"path": "a.jsonl", "format": "alpaca"}])
    prepare.main()
    train = read_split("train")
    assert sorted(r["reference"] for r in train) == sorted(r["output"] for r in rows)


@pytest.mark.parametrize("name", ["a.jsonl", "a.json", "a.csv"])
def test_a_byte_order_mark_is_accepted(workdir, name):
    frame = pd.DataFrame(ALPACA)
    text = {".jsonl": frame.to_json(orient="records", lines=True), ".json": frame.to_json(orient="records"),
            ".csv": frame.to_csv(index=False)}[Path(name).suffix]
    (workdir.path / name).write_text(text, encoding="utf-8-sig")
    workdir.write_params([{"path": name, "format": "alpaca"}])
    prepare.main()
    assert sorted(r["reference"] for r in workdir.read_split("train")) == sorted(r["output"] for r in ALPACA)


@pytest.mark.parametrize("name", ["a.jsonl", "a.json", "a.csv"])
def test_a_file_not_in_utf8_names_file_line_and_fix(workdir, name):
    lines = {".jsonl": ['{"instruction": "Hi", "output": "Yo"}', '{"instruction": "Hi", "output": "Yo"}',
                        '{"instruction": "Caf\u00e9", "output": "Yes"}'],
             ".json": ['[{"instruction": "Hi", "output": "Yo"},', '{"instruction": "Hi", "output": "Yo"},',
                       '{"instruction": "Caf\u00e9", "output": "Yes"}]'],
             ".csv": ["instruction,output", "Hi,Yo", "Caf\u00e9,Yes"]}[Path(name).suffix]
    (workdir.path / name).write_bytes("\n".join(lines).encode("cp1252"))
    workdir.write_params([{"path": name, "format": "alpaca"}])
    with pytest.raises(SlothlineError) as caught:
        prepare.main()
    assert str(caught.value).startswith(f"{name}:3: not UTF-8 text (byte 0xe9")
    assert "re-save the file as UTF-8" in str(caught.value)


def test_json_lines_saved_as_json_say_so(workdir):
    (workdir.path / "a.json").write_text("".join(json.dumps(r) + "\n" for r in ALPACA))
    workdir.write_params([{"path": "a.json", "format": "alpaca"}])
    with pytest.raises(SlothlineError, match=r"^a.json:2: malformed JSON \(Extra data at column 1\); "
                                             r"this looks like JSON Lines .*rename the file to .jsonl"):
        prepare.main()


def test_a_json_file_that_is_not_json(workdir):
    (workdir.path / "a.json").write_text("instruction,output\nHi,Yo\n")
    workdir.write_params([{"path": "a.json", "format": "alpaca"}])
    with pytest.raises(SlothlineError, match=r"^a.json:1: malformed JSON \(Expecting value at column 1\); fix the file"):
        prepare.main()


def test_a_truncated_line_reads_cleanly(workdir):
    message = prepare_error(workdir, [json.dumps(CHAT[0]), '{"messages": [{"role": "user", "content": "Hel'])
    assert message.startswith("bad.jsonl:2: malformed JSON (Unterminated string starting at column 43)")
    assert "at at" not in message


def test_a_corrupt_parquet_file(workdir):
    (workdir.path / "a.parquet").write_bytes(b"PAR1 not really parquet")
    workdir.write_params([{"path": "a.parquet", "format": "alpaca"}])
    with pytest.raises(SlothlineError, match=r"^a.parquet: not a readable Parquet file \(.*\); the file is damaged"):
        prepare.main()


def test_a_directory_that_is_not_a_dataset_lists_its_data_files(workdir):
    workdir.write_jsonl("raw/a.jsonl", ALPACA)
    workdir.write_params([{"path": "raw", "format": "alpaca"}])
    with pytest.raises(SlothlineError, match=r"^raw: a directory, but not a dataset written by datasets' save_to_disk; "
                                             r"point the source's path at a data file in it \(raw/a.jsonl\)"):
        prepare.main()


def test_a_damaged_dataset_directory(workdir):
    import datasets

    datasets.Dataset.from_list(ALPACA).save_to_disk(str(workdir.path / "disk"))
    (workdir.path / "disk/dataset_info.json").write_text("{garbage")
    workdir.write_params([{"path": "disk", "format": "alpaca"}])
    with pytest.raises(SlothlineError, match=r"^disk: a save_to_disk directory that cannot be loaded \(JSONDecodeError: "
                                             r".*\); write it again with save_to_disk"):
        prepare.main()


def test_three_rows_fail_in_prepare_when_a_test_split_is_asked_for(workdir):
    workdir.write_params([{"path": workdir.write_jsonl("a.jsonl", ALPACA[:3]), "format": "alpaca"}],
                         test_fraction=0.1)
    with pytest.raises(SlothlineError, match=r"^data.test_fraction: 0.1 of 3 rows gives 0 test rows; raise "
                                             r"data.test_fraction to at least 0.17, or add rows \(at least 6\)$"):
        prepare.main()
    assert not (workdir.path / PREPARED_DIR).exists()


@pytest.mark.parametrize("total", [None, 100])
def test_a_source_without_usable_rows_is_named(workdir, total):
    big = [{"instruction": f"Say {i}.", "output": str(i)} for i in range(200)]
    (workdir.path / "empty.jsonl").write_text("")
    workdir.write_params([{"path": workdir.write_jsonl("good.jsonl", big), "format": "alpaca"},
                          {"path": "empty.jsonl", "format": "alpaca"}], total=total)
    with pytest.raises(SlothlineError, match=r"^empty.jsonl: no usable rows \(0 read, 0 skipped\); remove the "
                                             r"source from data.sources or fill it$"):
        prepare.main()


def test_a_source_whose_rows_are_all_skipped_or_duplicates_is_named(workdir):
    workdir.write_params([
        {"path": workdir.write_jsonl("good.jsonl", ALPACA), "format": "alpaca"},
        {"path": workdir.write_jsonl("copy.jsonl", ALPACA[:2]), "format": "alpaca"},
    ])
    with pytest.raises(SlothlineError, match=r"^copy.jsonl: no usable rows \(2 read, 0 skipped, 2 duplicates of rows "
                                             r"in other sources\); remove the source"):
        prepare.main()
    workdir.write_params([
        {"path": "good.jsonl", "format": "alpaca"},
        {"path": workdir.write_jsonl("bad.jsonl", [{"instruction": "x"}]), "format": "alpaca", "on_error": "skip"},
    ])
    with pytest.raises(SlothlineError, match=r"^bad.jsonl: no usable rows \(1 read, 1 skipped\); .*set "
                                             r"`on_error: fail` on it to see why its rows are skipped"):
        prepare.main()


@pytest.mark.parametrize(("kind", "fmt", "formats"), [("causal_lm", "vqa", "alpaca, sharegpt, messages, reasoning"),
                                                      ("classifier", "alpaca", "classification")])
def test_a_format_of_another_kind_fails_before_any_row_is_read(workdir, kind, fmt, formats):
    workdir.write_params([{"path": workdir.write_jsonl("a.jsonl", ALPACA), "format": fmt}], kind=kind)
    with pytest.raises(SlothlineError) as caught:
        prepare.main()
    assert str(caught.value) == f"data.sources[0].format: {fmt} is not a format of {kind} models; use one of {formats}"
    assert not (workdir.path / PREPARED_DIR).exists()


def test_missing_source_file(workdir):
    workdir.write_params([{"path": "data/raw/nope.jsonl", "format": "alpaca"}])
    with pytest.raises(SlothlineError, match=r"data/raw/nope.jsonl: no such file or directory.*generate_raw.py"):
        prepare.main()
    workdir.write_params([{"path": "data/mine/nope.jsonl", "format": "alpaca"}])  # the user's own: no sample hint
    with pytest.raises(SlothlineError, match=r"data/mine/nope.jsonl: no such file or directory \(data.sources "
                                             r"path\); fix the path in params.yaml$"):
        prepare.main()


def test_too_few_rows_for_the_total(workdir):
    workdir.write_params([{"path": workdir.write_jsonl("a.jsonl", ALPACA), "format": "alpaca"}], total=10)
    with pytest.raises(SlothlineError, match="source 'a' has 4 usable rows"):
        prepare.main()


def test_on_error_skip_counts_skipped_rows(workdir):
    rows = [json.dumps(CHAT[0]), "not json", json.dumps({"messages": []}), json.dumps(CHAT[1])]
    workdir.write_params([{"path": workdir.write_jsonl("c.jsonl", rows), "format": "messages", "on_error": "skip"}])
    prepare.main()
    metrics = data_metrics(workdir)
    assert metrics["rows_skipped"] == 2 and metrics["train_rows"] == 2


def test_failed_run_leaves_previous_outputs_alone(workdir):
    workdir.write_params([{"path": workdir.write_jsonl("a.jsonl", ALPACA), "format": "alpaca"}])
    prepare.main()
    before = (workdir.path / PREPARED_DIR / "train.jsonl").read_bytes()
    workdir.write_jsonl("a.jsonl", ALPACA + ["{broken"])
    with pytest.raises(SlothlineError):
        prepare.main()
    assert (workdir.path / PREPARED_DIR / "train.jsonl").read_bytes() == before
    assert sorted(p.name for p in (workdir.path / PREPARED_DIR.parent).iterdir()) == [PREPARED_DIR.name]


def test_stage_exits_nonzero_with_one_clear_line(workdir):
    write_params(workdir.path, lora={"rnak": 3})
    result = subprocess.run([sys.executable, "-m", "stages.prepare"], capture_output=True, text=True,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "lora.rnak: unknown parameter for causal_lm models; did you mean lora.r?" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (workdir.path / PREPARED_DIR.parent).exists() and not (workdir.path / DATA_METRICS.parent).exists()
