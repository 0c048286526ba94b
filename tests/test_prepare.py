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
from slothline.params import load_params
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
    first = {p.relative_to(workdir.path): p.read_bytes() for p in (workdir.path / PREPARED_DIR).rglob("*") if p.is_file()}
    prepare.main()
    assert first == {p.relative_to(workdir.path): p.read_bytes() for p in (workdir.path / PREPARED_DIR).rglob("*") if p.is_file()}


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


def test_a_utf16_file_says_so_and_how_to_convert_it(workdir):
    (workdir.path / "a.jsonl").write_text(json.dumps(ALPACA[0]) + "\n", encoding="utf-16")  # PowerShell's `>`
    workdir.write_params([{"path": "a.jsonl", "format": "alpaca"}])
    with pytest.raises(SlothlineError, match=r"^a.jsonl: UTF-16 text .*; re-save the file as UTF-8 \(`iconv -f utf-16"):
        prepare.main()


@pytest.mark.parametrize("name", ["a.jsonl", "a.json"])
def test_half_an_emoji_in_json_is_a_row_error_that_skip_skips(workdir, name):
    rows = [json.dumps({"instruction": f"Question {i}?", "output": f"Answer {i}."}) for i in range(3)]
    rows[1] = '{"instruction": "What is 3 plus 4? \\ud83d", "output": "7 \\ud83d\\ude00"}'  # a lone high surrogate
    text = "\n".join(rows) if name.endswith(".jsonl") else "[" + ",\n".join(rows) + "]"
    (workdir.path / name).write_text(text)
    workdir.write_params([{"path": name, "format": "alpaca"}])
    with pytest.raises(SlothlineError, match=r"\b(2|row 2): a string holds '\\ud83d', half of a UTF-16 surrogate pair"):
        prepare.main()
    workdir.write_params([{"path": name, "format": "alpaca", "on_error": "skip"}])
    prepare.main()
    assert len(workdir.read_split("train")) == 2


def test_a_datasets_json_column_keeps_its_values(workdir):
    """datasets' `load_dataset("json")` makes a column whose type varies by row a Json feature: its values are the
    data (only media columns are read undecoded), so a number in an answer is still refused as one."""
    import datasets

    features = datasets.Features({"instruction": datasets.Value("string"), "output": datasets.Json()})
    datasets.Dataset.from_dict({"instruction": ["Say x.", "Six times seven?"], "output": ["x", 42]},
                               features=features).save_to_disk(str(workdir.path / "disk"))
    from slothline.data.sources import read_rows
    from slothline.params import Source

    assert [row["output"] for _, row in read_rows(Source(path="disk", format="alpaca"))] == ["x", 42]


def test_a_glob_source_path_says_to_list_the_files(workdir):
    workdir.write_params([{"path": "raw/*.jsonl", "format": "alpaca"}])
    with pytest.raises(SlothlineError, match=r"^raw/\*.jsonl: no such file or directory; a data source path names one "
                                             r"file or directory, not a pattern"):
        prepare.main()


def test_a_hub_source_reads_its_config(workdir, monkeypatch):
    import datasets

    asked = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: asked.append((args, kwargs))
                        or datasets.Dataset.from_list(ALPACA))
    workdir.write_params([{"path": "openai/gsm8k-like", "format": "alpaca", "config": "main"}])
    prepare.main()
    assert asked == [(("openai/gsm8k-like", "main"), {"split": "train"})]
    workdir.write_jsonl("a.jsonl", ALPACA)
    workdir.write_params([{"path": "a.jsonl", "format": "alpaca", "config": "main"}])
    with pytest.raises(SlothlineError, match=r"^a.jsonl: a local source takes no `config`"):
        prepare.main()


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
                                             r"source or fill it$"):
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


def test_missing_source_file(workdir, monkeypatch):
    monkeypatch.delenv("DVC_ROOT", raising=False)
    tracked = ("a queued or --temp experiment (`dvc exp run --queue`, `--temp`) gets only the files git or DVC tracks: "
               "`git add {0}` (or, for a large file, `dvc add {0}` and `git add {0}.dvc`) and run the experiment again")
    workdir.write_params([{"path": "data/raw/nope.jsonl", "format": "alpaca"}])
    with pytest.raises(SlothlineError) as caught:
        prepare.main()
    assert str(caught.value) == (
        "data/raw/nope.jsonl: no such file or directory (a data source path); fix the path in params.yaml; to "
        "regenerate the bundled samples run `python data/generate_raw.py` (chat formats) or `python "
        "data/generate_classification.py` (reviews.jsonl); if the file is in your project, "
        + tracked.format("data/raw/nope.jsonl"))
    workdir.write_params([{"path": "data/mine/nope.jsonl", "format": "alpaca"}])  # the user's own: no sample hint
    with pytest.raises(SlothlineError) as caught:
        prepare.main()
    assert str(caught.value) == ("data/mine/nope.jsonl: no such file or directory (a data source path); fix the path "
                                 "in params.yaml; if the file is in your project, " + tracked.format("data/mine/nope.jsonl"))
    outside = workdir.path.parent / "elsewhere.jsonl"  # not a file of the project: git cannot help
    workdir.write_params([{"path": str(outside), "format": "alpaca"}])
    with pytest.raises(SlothlineError) as caught:
        prepare.main()
    assert str(caught.value) == f"{outside}: no such file or directory (a data source path); fix the path in params.yaml"


def test_a_file_git_does_not_track_is_missing_from_an_experiments_copy(workdir, tmp_path_factory, monkeypatch):
    # dvc runs a queued experiment's stages in a copy of the project holding what git and DVC track, with
    # DVC_ROOT naming the project itself, where the untracked file is
    project = tmp_path_factory.mktemp("project")
    (project / "data/raw").mkdir(parents=True)
    (project / "data/raw/mine.jsonl").write_text(json.dumps(ALPACA[0]) + "\n")
    monkeypatch.setenv("DVC_ROOT", str(project))
    workdir.write_params([{"path": "data/raw/mine.jsonl", "format": "alpaca"}])
    with pytest.raises(SlothlineError) as caught:
        prepare.main()
    assert str(caught.value) == (
        f"data/raw/mine.jsonl: in the project ({project}) but not in this experiment's copy of it; a queued or "
        "--temp experiment (`dvc exp run --queue`, `--temp`) gets only the files git or DVC tracks: `git add "
        "data/raw/mine.jsonl` (or, for a large file, `dvc add data/raw/mine.jsonl` and `git add "
        "data/raw/mine.jsonl.dvc`) and run the experiment again")


@pytest.mark.e2e
def test_a_temp_experiment_on_an_untracked_data_file_says_to_git_add_it(dvc_project):
    workdir_rows = "".join(json.dumps(row) + "\n" for row in ALPACA * 5)
    (dvc_project / "data/raw/mine.jsonl").write_text(workdir_rows)  # not added to git
    done = subprocess.run(["dvc", "exp", "run", "--temp", "prepare", "-S",
                           "data.sources=[{path:'data/raw/mine.jsonl',format:alpaca}]"],
                          cwd=dvc_project, capture_output=True, text=True)
    assert done.returncode != 0
    assert (f"data/raw/mine.jsonl: in the project ({dvc_project}) but not in this experiment's copy of it; a queued "
            "or --temp experiment") in done.stdout + done.stderr
    assert "`git add data/raw/mine.jsonl`" in done.stdout + done.stderr


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


CSV_HEADER = "instruction,input,output\n"


def csv_rows(n: int) -> list[str]:
    return [f"What is {i}+{i}?,,{2 * i}\n" for i in range(n)]


@pytest.mark.parametrize(("bad", "expected"), [
    ("What is 2+2?,,Four, obviously\n",  # the unquoted comma would train on "Four"
     "a.csv:4: 4 cells where the header has 3 (instruction, input, output): the cells after 'output' (' obviously') "
     'belong to no column; quote a field that contains a comma ("Four, obviously"), or remove the stray comma '
     "(alpaca format). Fix the row, or set `on_error: skip` on this source"),
    ("What is 2+2?,Four\n",  # DictReader would give output None: "missing field 'output'" hides the cause
     "a.csv:4: 2 cells where the header has 3 (instruction, input, output): no cell for 'output'; add the missing "
     "comma(s), or quote a field that spans several lines (alpaca format)"),
    ('"What is 2+2?" she asked,,Four\n',  # a quote closed before the field ends: read as 'What is 2+2? she asked'
     "a.csv:4: malformed CSV (',' expected after '\"'); a field that starts with a quote must end with one before "
     'the next comma: quote the whole field and write each quote inside it as two ("") (alpaca format)'),
])
def test_a_csv_row_whose_cells_do_not_fit_the_header_names_file_line_and_fix(workdir, bad, expected):
    (workdir.path / "a.csv").write_text(CSV_HEADER + "".join(csv_rows(2)) + bad + "".join(csv_rows(5)))
    workdir.write_params([{"path": "a.csv", "format": "alpaca"}])
    with pytest.raises(SlothlineError) as caught:
        prepare.main()
    assert str(caught.value).startswith(expected)
    workdir.write_params([{"path": "a.csv", "format": "alpaca", "on_error": "skip"}], dedupe=False)
    prepare.main()
    metrics = data_metrics(workdir)
    assert (metrics["rows_skipped"], metrics["train_rows"]) == (1, 7)
    assert sorted(r["reference"] for r in workdir.read_split("train")) == sorted(str(2 * i) for i in [0, 1, *range(5)])


def test_a_classification_csv_with_an_unquoted_comma_makes_no_classes_of_its_fragments(workdir):
    rows = "".join(f"review {i},{('bad', 'good')[i % 2]}\n" for i in range(10))
    (workdir.path / "r.csv").write_text("text,label\n" + rows + "Great product, works well,good\n")
    workdir.write_params([{"path": "r.csv", "format": "classification"}], kind="classifier")
    with pytest.raises(SlothlineError, match=r"^r.csv:12: 3 cells where the header has 2 \(text, label\): the cells "
                                             r"after 'label' \('good'\) belong to no column; quote a field"):
        prepare.main()


def test_an_unclosed_quote_fails_where_it_opens_instead_of_swallowing_the_rest_of_the_file(workdir):
    rows = csv_rows(300)
    rows[99] = '"What is 99+99?,,198\n'  # line 101: its quote runs to the end of the file
    (workdir.path / "a.csv").write_text(CSV_HEADER + "".join(rows))
    expected = (r'^a.csv:101: a quote in the row starting on this line is never closed, so lines 101-301 \(the rest '
                r'of the file\) would read as one field; close the quote, or write a quote inside a field as two '
                r'\(""\) and quote the whole field$')
    for on_error in ("fail", "skip"):  # skipping it would lose 200 rows unnoticed
        workdir.write_params([{"path": "a.csv", "format": "alpaca", "on_error": on_error}])
        with pytest.raises(SlothlineError, match=expected):
            prepare.main()
        assert not (workdir.path / PREPARED_DIR).exists()


def test_a_quote_closed_rows_later_fails_on_the_row_where_it_opened(workdir):
    rows = csv_rows(20)
    rows[4] = '"What is 4+4?,,8\n'  # swallows lines up to the next quote, which a field then follows
    rows[8] = 'What is 8+8?,"Add",16\n'
    (workdir.path / "a.csv").write_text(CSV_HEADER + "".join(rows))
    for on_error in ("fail", "skip"):  # skipping it would lose the rows on lines 7-9 with it
        workdir.write_params([{"path": "a.csv", "format": "alpaca", "on_error": on_error}])
        with pytest.raises(SlothlineError, match=r"^a.csv:6: malformed CSV \(',' expected after '\"' on line 10\); "
                                                 r".* Lines 6-10 read as one field, so this cannot be skipped"):
            prepare.main()


def test_a_stray_quote_closed_by_another_rows_later_fails_instead_of_merging_the_rows(workdir):
    lines = ["text,label", *(f"review {i},{('pos', 'neg')[i % 2]}" for i in range(150)), '"great,pos', "bad,neg",
             'meh",neg', *(f"review {i},pos" for i in range(150, 160))]
    (workdir.path / "r.csv").write_text("\n".join(lines) + "\n")
    expected = (r"^r.csv:152: lines 152-154 read as one row, because a quote opened on line 152 closes only on line "
                r"154, yet each of those lines has the header's 2 cells as a row of its own would; remove the stray "
                r"quote")
    for on_error in ("fail", "skip"):  # skipping would lose the rows inside unnoticed
        workdir.write_params([{"path": "r.csv", "format": "classification", "on_error": on_error}], kind="classifier")
        with pytest.raises(SlothlineError, match=expected):
            prepare.main()
        assert not (workdir.path / PREPARED_DIR).exists()


def test_a_two_line_field_that_could_be_two_rows_is_read_with_a_note(workdir, capsys):
    from slothline.data.sources import read_rows
    from slothline.params import Source

    (workdir.path / "r.csv").write_text('text,label\ngood,pos\n"great,pos\nmeh",neg\n"A review\nover\nthree lines",pos\n')
    rows = [row for _, row in read_rows(Source(path="r.csv", format="classification"))]
    assert rows == [{"text": "good", "label": "pos"}, {"text": "great,pos\nmeh", "label": "neg"},
                    {"text": "A review\nover\nthree lines", "label": "pos"}]
    assert capsys.readouterr().out.startswith("note: r.csv: 1 row(s) span lines that could each be a row of 2 "
                                              "cells (lines 3-4)")


def test_an_answer_over_lines_in_a_two_column_csv_is_read_with_a_note(workdir, capsys):
    """pandas and Excel write a multi-line answer as one quoted field; in a two-column file each of its lines with
    one comma looks like a row, so only a note says so."""
    import csv

    rows = [{"instruction": f"Question {i}?", "output": f"Answer {i}."} for i in range(3)]
    rows[1]["output"] = "Here is how.\nFirst, mix the flour and water.\nThen, bake it for 40 minutes."
    with (workdir.path / "a.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, ["instruction", "output"])
        writer.writeheader()
        writer.writerows(rows)
    from slothline.data.sources import read_rows
    from slothline.params import Source

    assert [row for _, row in read_rows(Source(path="a.csv", format="alpaca"))] == rows
    assert capsys.readouterr().out.startswith("note: a.csv: 1 row(s) span lines that could each be a row of 2 cells "
                                              "(lines 3-5)")


def test_csv_quoted_fields_and_trailing_commas_are_data(workdir):
    text = (CSV_HEADER + '"Say ""hi"", then a comma, then a\nline break.",,"Hi, there.\nBye."\n'
            + "Trailing comma.,,Fine,\n")
    (workdir.path / "a.csv").write_text(text)
    workdir.write_params([{"path": "a.csv", "format": "alpaca"}])
    prepare.main()
    train = workdir.read_split("train")
    assert sorted(r["reference"] for r in train) == ["Fine", "Hi, there.\nBye."]
    first = next(r for r in train if r["reference"] == "Hi, there.\nBye.")
    assert first["messages"][0]["content"] == 'Say "hi", then a comma, then a\nline break.'


def test_a_csv_cell_beyond_the_csv_modules_field_limit_is_read(workdir):
    from slothline.data.sources import read_rows
    from slothline.params import Source

    long = "word " * 40_000  # 200,000 characters; the csv module's default limit is 131,072
    (workdir.path / "a.csv").write_text(f"{CSV_HEADER}Summarise.,{long},Words.\n")
    assert list(read_rows(Source(path="a.csv", format="alpaca"))) == [
        ("a.csv:2", {"instruction": "Summarise.", "input": long, "output": "Words."})]


def test_a_csv_row_error_names_the_line_the_row_starts_on(workdir):
    text = CSV_HEADER + "Fine,,Yes\n" + '"A question\nover two lines",,\n' + "Fine too,,Yes\n"
    (workdir.path / "a.csv").write_text(text)
    workdir.write_params([{"path": "a.csv", "format": "alpaca"}])
    with pytest.raises(SlothlineError, match=r"^a.csv:3: missing or empty field 'output'"):
        prepare.main()


QUESTIONS = [{"instruction": f"What is the capital of country number {i}?", "output": f"City {i}."} for i in range(30)]
TWINS = [{**row, "instruction": row["instruction"] + " "} for row in QUESTIONS]  # each again with a trailing space


def test_dedupe_catches_rows_that_differ_only_in_whitespace(workdir):
    workdir.write_jsonl("a.jsonl", [row for pair in zip(QUESTIONS, TWINS) for row in pair])
    workdir.write_params([{"path": "a.jsonl", "format": "alpaca"}], test_fraction=0.3)
    prepare.main()
    metrics = data_metrics(workdir)
    assert metrics["duplicates_removed"] == 30 and metrics["test_rows_in_train"] == 0
    kept = [r["messages"][0]["content"] for name in ("train", "test") for r in workdir.read_split(name)]
    assert sorted(kept) == sorted(row["instruction"] for row in QUESTIONS)  # the first of each pair, as written


def test_data_metrics_count_test_rows_whose_text_is_also_in_train(workdir):
    workdir.write_jsonl("a.jsonl", QUESTIONS + TWINS)
    workdir.write_params([{"path": "a.jsonl", "format": "alpaca"}], test_fraction=0.3, dedupe=False)
    prepare.main()
    question = lambda record: record["messages"][0]["content"].strip()
    train, test = workdir.read_split("train"), workdir.read_split("test")
    leaked = sum(question(r) in {question(t) for t in train} for r in test)
    assert leaked > 0 and data_metrics(workdir)["test_rows_in_train"] == leaked
    assert data_metrics(workdir)["duplicates_removed"] == 0


def test_a_held_out_test_source_is_the_test_split_whole(workdir):
    """data.test_sources (a dataset's own test split) goes to test whole: not sampled, split or counted in
    data.total, and a training row that repeats one of its rows is the copy dedupe drops, so the benchmark stays
    whole and does not leak into training."""
    from slothline import kinds

    train = [{"instruction": f"Say {i}.", "output": str(i)} for i in range(40)]
    test = [{"instruction": f"Say {i}.", "output": str(i)} for i in range(35, 50)]  # 35-39 also in train
    workdir.write_params([{"path": workdir.write_jsonl("train.jsonl", train), "format": "alpaca"}], total=20,
                         val_fraction=0.1, test_sources=[{"path": workdir.write_jsonl("test.jsonl", test),
                                                          "format": "alpaca", "name": "official"}])
    kinds.check(kinds.get("causal_lm"), load_params())  # test_fraction 0: the held-out source is the test split
    prepare.main()
    splits = {name: workdir.read_split(name) for name in ("train", "val", "test")}
    said = lambda rows: sorted(int(row["reference"]) for row in rows)
    assert said(splits["test"]) == list(range(35, 50)) and {row["source"] for row in splits["test"]} == {"official"}
    assert len(splits["train"]) + len(splits["val"]) == 20 and len(splits["val"]) == 2
    assert not set(said(splits["train"] + splits["val"])) & set(range(35, 50))
    metrics = json.loads((workdir.path / DATA_METRICS).read_text())
    assert metrics["test_rows"] == 15 and metrics["test_rows_in_train"] == 0
    assert metrics["sources"]["official"]["test_rows"] == 15 and metrics["sources"]["train"]["duplicates_removed"] == 5


def test_no_test_split_is_refused_unless_a_test_source_gives_one(workdir):
    from slothline import kinds

    workdir.write_params([{"path": workdir.write_jsonl("train.jsonl", ALPACA), "format": "alpaca"}])
    with pytest.raises(SlothlineError, match=r"data.test_fraction: 0 leaves no test split.*or give data.test_sources"):
        kinds.check(kinds.get("causal_lm"), load_params())
