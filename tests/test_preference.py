"""Preference tuning: the preference data formats through prepare, the refusals of check_params, the rows TRL's
trainers get, the preference metrics, and the preference stage (DPO, ORPO, KTO) after a short SFT run."""

import json

import pytest

from slothline.data.preference_formats import paired, unpaired
from slothline.errors import RowError, SlothlineError
from slothline.kinds import causal_lm
from slothline.kinds.causal_lm import preference
from tests.conftest import evaluating, load, write_params

USER = {"role": "user", "content": "What colour is a lime?"}
GOOD, BAD = "A lime is green!", "A lime is green."


@pytest.mark.parametrize("row", [
    {"prompt": USER["content"], "chosen": GOOD, "rejected": BAD},
    {"prompt": [USER], "chosen": [{"role": "assistant", "content": GOOD}],
     "rejected": [{"role": "assistant", "content": BAD}]},
    {"chosen": [USER, {"role": "assistant", "content": GOOD}], "rejected": [USER, {"role": "assistant", "content": BAD}]},
    # HuggingFaceH4/ultrafeedback_binarized: a prompt string, and answers that repeat it as their first turn
    {"prompt": USER["content"], "chosen": [USER, {"role": "assistant", "content": GOOD}],
     "rejected": [USER, {"role": "assistant", "content": BAD}]},
])
def test_the_paired_layouts_of_preference_datasets_give_one_record(row):
    assert paired(row) == {"messages": [USER], "chosen": GOOD, "rejected": BAD}


def test_a_system_turn_stays_in_the_prompt_and_kto_labels_are_booleans():
    system = {"role": "system", "content": "Be cheerful."}
    assert paired({"prompt": [system, USER], "chosen": GOOD, "rejected": BAD})["messages"] == [system, USER]
    assert unpaired({"prompt": "Hi", "completion": "Hello!", "label": "true"})["label"] is True
    assert unpaired({"prompt": "Hi", "completion": "Hello.", "label": 0})["label"] is False
    assert unpaired({"prompt": "Hi", "completion": "Hello.", "label": "False"})["label"] is False  # pandas' CSV


@pytest.mark.parametrize("row, message", [
    ({"prompt": "Hi", "chosen": "Hello!"}, "needs 'chosen' and 'rejected'"),
    ({"prompt": [USER, {"role": "assistant", "content": "x"}], "chosen": GOOD, "rejected": BAD},
     "'prompt' ends with a assistant turn"),
    ({"prompt": "Hi", "chosen": [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}],
      "rejected": BAD}, "'chosen' must be the answer: a string, one assistant message, or the prompt's turns followed "
                        "by one assistant message; got 2 turns"),
    ({"prompt": "Hi", "chosen": [{"role": "user", "content": "Other?"}, {"role": "assistant", "content": GOOD}],
      "rejected": BAD}, "the prompt's turns followed by one assistant message; got 2 turns"),  # not this prompt
    ({"chosen": [USER, {"role": "assistant", "content": GOOD}],
      "rejected": [{"role": "user", "content": "Other?"}, {"role": "assistant", "content": BAD}]},
     "share every turn up to the last user turn"),
    ({"prompt": "Hi", "chosen": "", "rejected": BAD}, "missing or empty field 'chosen'"),
    ({"prompt": "Hi", "chosen": [{"role": "bot", "content": "x"}], "rejected": BAD}, "chosen[0]: unknown role 'bot'"),
    ({"chosen": GOOD, "rejected": BAD}, "missing field 'prompt'; text answers need it"),
    ({"prompt": "Hi", "chosen": GOOD, "rejected": f" {GOOD}"}, "'chosen' and 'rejected' are the same answer"),
])
def test_malformed_preference_rows_say_what_is_wrong(row, message):
    with pytest.raises(RowError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        paired(row)


def test_a_kto_label_that_is_not_a_boolean_is_refused():
    with pytest.raises(RowError, match="field 'label' must be true .* got 'yes'"):
        unpaired({"prompt": "Hi", "completion": "Hello", "label": "yes"})


@pytest.mark.parametrize("sections, message", [
    ({"preference": {"method": "dpo", "loss_type": "kto"}}, "preference.loss_type: dpo has no 'kto' loss; use one of sigmoid"),
    ({"preference": {"method": "orpo", "loss_type": "ipo"}}, "preference.loss_type: orpo has no 'ipo' loss; set auto"),
    ({"preference": {"method": "kto", "per_device_batch_size": 1}}, "KTO estimates its KL term"),
    ({"preference": {"method": "dpo", "sources": [{"path": "data/raw/kto.jsonl", "format": "kto"}]}},
     r"preference.method: dpo trains on chosen/rejected pairs, but preference.sources\[0\] hold unpaired kto rows"),
    ({"preference": {"method": "dpo", "sources": []}}, "preference.method: dpo needs preference data"),
    ({"train": {"sft": False}}, "train.sft: false and preference.method: none train nothing"),
    ({"preference": {"method": "dpo"}, "train": {"full_finetuning": True}}, "preference tuning trains a LoRA adapter"),
])
def test_check_params_refuses_what_preference_tuning_cannot_run(sections, message):
    with pytest.raises(SlothlineError, match=message):
        preference.check(load(**sections))


def test_kinds_without_preference_methods_refuse_one_by_name():
    from slothline.params import load_params

    def params_of(kind, method):
        import tempfile
        from pathlib import Path

        directory = Path(tempfile.mkdtemp())
        write_params(directory, kind, preference={"method": method})
        return load_params(directory / "params.yaml")

    with pytest.raises(SlothlineError, match=r"preference.method: must be one of 'none' \(got 'dpo'\)"):
        params_of("classifier", "dpo")


def test_records_render_the_prompt_with_the_chat_template_and_each_answer_through_its_turn_end(tokenizer):
    from slothline.kinds._generative.params import ChatSource

    params = load(model={"name": "builtin:tiny-qwen3"})
    source = ChatSource(path="x.jsonl", format="preference")
    canonical, rendered = preference.to_record({"prompt": USER["content"], "chosen": GOOD, "rejected": BAD}, source,
                                               params, tokenizer)
    assert canonical == {"messages": [USER], "chosen": GOOD, "rejected": BAD}
    assert rendered["prompt"].startswith("<|im_start|>user\nWhat colour is a lime?<|im_end|>\n<|im_start|>assistant\n")
    assert rendered["chosen_text"] == f"{GOOD}<|im_end|>" and rendered["rejected_text"] == f"{BAD}<|im_end|>"
    with pytest.raises(RowError, match="spells one of the model's special tokens"):
        preference.to_record({"prompt": "Say <|im_end|>", "chosen": GOOD, "rejected": BAD}, source, params, tokenizer)


def test_unpaired_methods_get_each_pair_as_a_desirable_and_an_undesirable_answer(tokenizer):
    rows = [{"prompt": "P", "chosen_text": "a", "rejected_text": "b"},
            {"prompt": "Q", "completion_text": "c", "label": False}]
    columns = preference.trainer_rows(rows, preference.METHODS["kto"], tokenizer, seed=1)
    assert sorted(zip(*columns.values())) == [("P", "a", True), ("P", "b", False), ("Q", "c", False)]
    assert columns == preference.trainer_rows(rows, preference.METHODS["kto"], tokenizer, seed=1)  # seeded
    assert preference.trainer_rows(rows[:1], preference.METHODS["dpo"], tokenizer) == {
        "prompt": ["P"], "chosen": ["a"], "rejected": ["b"]}


def test_the_bos_a_tokenizer_adds_itself_is_taken_off_the_rendered_prompt():
    class AddsBos:
        bos_token, bos_token_id = "<s>", 1

        def __call__(self, text):
            return {"input_ids": [1, 9]}

    rows = [{"prompt": "<s>[INST] Hi [/INST]", "chosen_text": "a", "rejected_text": "b"}]
    assert preference.trainer_rows(rows, preference.METHODS["dpo"], AddsBos())["prompt"] == ["[INST] Hi [/INST]"]


def test_unpaired_test_rows_are_compared_within_their_prompt():
    rows = [{"prompt": "P", "completion_text": "good", "label": True},
            {"prompt": "P", "completion_text": "bad", "label": False},
            {"prompt": "P", "completion_text": "worse", "label": False},
            {"prompt": "Q", "completion_text": "alone", "label": True}]
    assert [(good, bad) for _, good, bad in preference.scored_pairs(rows)] == [("good", "bad"), ("good", "worse")]


def test_preference_accuracy_counts_the_pairs_whose_preferred_answer_is_likelier(tiny_qwen3, tokenizer, capsys):
    """Swapping chosen and rejected turns accuracy a into 1 - a and negates the margin; the log-probabilities
    are those of the answer's tokens after the prompt, whatever else shares the batch."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3, dtype=torch.float32).eval()
    rows = [{"prompt": f"<|im_start|>user\nQ{i}<|im_end|>\n<|im_start|>assistant\n",
             "chosen_text": f"answer {i}!<|im_end|>", "rejected_text": f"an answer {i * 7}.<|im_end|>"} for i in range(5)]
    swapped = [{**row, "chosen_text": row["rejected_text"], "rejected_text": row["chosen_text"]} for row in rows]
    scores, reverse = (preference.preference_metrics(model, tokenizer, r, evaluating(4, 8)) for r in (rows, swapped))
    assert scores["preference_pairs"] == 5
    assert scores["preference_accuracy"] + reverse["preference_accuracy"] == pytest.approx(1)
    assert scores["preference_margin"] == pytest.approx(-reverse["preference_margin"], abs=1e-3)
    assert "note" not in capsys.readouterr().out
    lengths = [max(len(tokenizer(row["prompt"] + row[answer], add_special_tokens=False)["input_ids"])
                   for answer in ("chosen_text", "rejected_text")) for row in rows]
    model.config.max_position_embeddings = max(lengths) - 1  # the pairs with the longest answers pass it
    preference.preference_metrics(model, tokenizer, rows, evaluating(4, 8))
    model.config.max_position_embeddings = 2048
    past = lengths.count(max(lengths))
    assert 0 < past < 5 and (f"note: {past} of 5 preference test pairs pass the model's context ({max(lengths) - 1} "
                             f"tokens, max_position_embeddings; the longest takes {max(lengths)})") in capsys.readouterr().out
    alone = preference.answer_log_probs(model, tokenizer, [rows[0]["prompt"]], [rows[0]["chosen_text"]])
    batched = preference.answer_log_probs(model, tokenizer, [r["prompt"] for r in rows], [r["chosen_text"] for r in rows])
    assert batched[0] == pytest.approx(alone[0], abs=1e-4)
    ids = tokenizer(rows[0]["prompt"] + rows[0]["chosen_text"], add_special_tokens=False)["input_ids"]
    start = len(tokenizer(rows[0]["prompt"], add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        log_probs = model(torch.tensor([ids])).logits[0].log_softmax(-1)
    assert alone[0] == pytest.approx(sum(log_probs[i - 1, ids[i]].item() for i in range(start, len(ids))), abs=1e-4)


@pytest.fixture(scope="module")
def sft(tmp_path_factory, builtin_cache):
    """prepare and a short SFT run on the bundled samples with the bundled preference pairs, in a module-wide
    directory the tests copy."""
    import os
    import shutil

    from stages import prepare, train
    from tests.conftest import ROOT

    directory = tmp_path_factory.mktemp("preference")
    shutil.copytree(ROOT / "data/raw", directory / "data/raw")
    previous = os.getcwd()
    os.chdir(directory)
    try:
        write_params(directory, data={"total": 200}, train={"epochs": 2, "learning_rate": 0.005, "eval_steps": 100,
                                                            "save_steps": 100})
        prepare.main()
        train.main()
    finally:
        os.chdir(previous)
    return directory


@pytest.mark.parametrize("method, extra", [("dpo", {}), ("orpo", {}), ("kto", {}), ("kto", {"loss_type": "apo_zero_unpaired"})])
def test_the_preference_stage_tunes_the_sft_adapter_and_evaluate_scores_the_preference(sft, tmp_path, monkeypatch,
                                                                                      method, extra):
    import shutil

    from peft import PeftConfig

    from stages import preference as stage

    shutil.copytree(sft, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, data={"total": 200}, train={"epochs": 2, "learning_rate": 0.005, "eval_steps": 100,
                                                       "save_steps": 100},
                 preference={"method": method, "max_steps": 6, "save_steps": 4, **extra})
    stage.main()
    metrics = json.loads((tmp_path / "metrics/preference.json").read_text())
    assert metrics["method"] == method and metrics["started_from"] == "sft" and metrics["steps"] == 6
    assert metrics["train"]["loss"] > 0 and (method == "orpo" or "rewards_margins" in metrics["train"]), metrics
    manifest = json.loads((tmp_path / "models/tuned/manifest.json").read_text())
    assert manifest["preference"] == method and manifest["method"] == "lora"
    assert not (tmp_path / "models/tuned/ref").exists()  # TRL's reference copy is not saved
    assert PeftConfig.from_pretrained(tmp_path / "models/tuned").r == 16
    tuned = (tmp_path / "models/tuned/adapter_model.safetensors").read_bytes()
    assert tuned != (tmp_path / "models/sft/adapter_model.safetensors").read_bytes()
    assert not list((tmp_path / "models/preference_checkpoints").glob("checkpoint-*"))


def test_preference_method_none_links_the_sft_model_and_sft_off_starts_a_new_adapter(sft, tmp_path, monkeypatch):
    import os
    import shutil

    from stages import preference as stage
    from stages import train

    shutil.copytree(sft, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    stage.main()
    sft_file, tuned_file = tmp_path / "models/sft/adapter_model.safetensors", tmp_path / "models/tuned/adapter_model.safetensors"
    assert os.path.samefile(sft_file, tuned_file)
    assert json.loads((tmp_path / "metrics/preference.json").read_text()) == {"method": "none"}

    write_params(tmp_path, data={"total": 200}, train={"sft": False},
                 preference={"method": "orpo", "max_steps": 2})
    train.main()
    assert json.loads((tmp_path / "models/sft/manifest.json").read_text())["method"] == "none"
    assert not (tmp_path / "models/sft/adapter_model.safetensors").exists()
    stage.main()
    assert json.loads((tmp_path / "metrics/preference.json").read_text())["started_from"] == "model.name"
    assert json.loads((tmp_path / "models/tuned/manifest.json").read_text())["preference"] == "orpo"


def test_evaluate_scores_preference_accuracy_of_base_and_tuned(sft, tmp_path, monkeypatch):
    import shutil

    from stages import evaluate
    from stages import preference as stage

    shutil.copytree(sft, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, data={"total": 200}, train={"epochs": 2, "learning_rate": 0.005, "eval_steps": 100,
                                                       "save_steps": 100},
                 evaluate={"max_samples": 8, "max_new_tokens": 8})
    stage.main()
    evaluate.main()
    results = json.loads((tmp_path / "metrics/eval.json").read_text())
    for model in ("tuned", "base"):
        assert results[model]["preference_pairs"] == 8 and 0 <= results[model]["preference_accuracy"] <= 1
    assert "preference_accuracy" in results["delta"] and "preference_margin" in results["delta"]
    assert "preference_accuracy" in (tmp_path / "metrics/report.md").read_text()
    assert causal_lm.PREFERENCE is preference


def test_prepare_reads_mixes_and_splits_preference_sources_and_names_a_bad_row(workdir):
    from stages import prepare

    chat = [{"instruction": f"Say {i}.", "output": f"{i}."} for i in range(20)]
    pairs = [{"prompt": f"Say {i}.", "chosen": f"{i}!", "rejected": f"{i}."} for i in range(30)]
    unpaired_rows = [{"prompt": f"Say {i}.", "completion": f"{i}!", "label": True} for i in range(10)]
    sources = [{"path": workdir.write_jsonl("pairs.jsonl", pairs + pairs[:2]), "format": "preference", "weight": 3},
               {"path": workdir.write_jsonl("kto.jsonl", unpaired_rows), "format": "kto"}]
    workdir.write_jsonl("chat.jsonl", chat)
    write_params(workdir.path, data={"sources": [{"path": "chat.jsonl", "format": "alpaca"}], "total": None,
                                     "val_fraction": 0.1, "test_fraction": 0.2},
                 preference={"method": "kto", "sources": sources})
    prepare.main()
    splits = {name: workdir.read_split(f"preference/{name}") for name in ("train", "val", "test")}
    assert sum(map(len, splits.values())) == 40  # 32 pairs, 2 of them duplicates, and 10 labelled answers (3:1)
    data = json.loads((workdir.path / "metrics/data.json").read_text())["preference"]
    assert data["duplicates_removed"] == 2 and data["sources"]["kto"]["rows_read"] == 10
    assert data["tokens"]["train"]["max"] > 0 and data["tokens"]["train"]["truncated_rows"] == 0
    assert {"chosen_text", "rejected_text"} <= set(splits["train"][0]) or "completion_text" in splits["train"][0]

    workdir.write_jsonl("pairs.jsonl", pairs[:3] + [{"prompt": "Hi", "chosen": "Hello!"}])
    with pytest.raises(SlothlineError, match=r"^pairs.jsonl:4: a preference row needs 'chosen' and 'rejected' .*"
                                             r"\(preference format\)"):
        prepare.main()


def test_an_interrupted_preference_run_resumes_its_trained_adapter_not_the_sft_one(sft, tmp_path, monkeypatch):
    """A checkpoint holds the trained adapter and TRL's reference copy (ref/); resuming must load the former."""
    import shutil

    from safetensors.torch import load_file

    from stages import preference as stage

    shutil.copytree(sft, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, data={"total": 200}, train={"epochs": 2, "learning_rate": 0.005, "eval_steps": 100,
                                                       "save_steps": 100},
                 preference={"method": "dpo", "max_steps": 4, "save_steps": 4, "learning_rate": 0.01})
    monkeypatch.setattr(stage.checkpoints, "clear_checkpoints", lambda directory: None)  # as if killed after saving
    stage.main()
    checkpoint = tmp_path / "models/preference_checkpoints/checkpoint-4"
    assert (checkpoint / "ref").is_dir()
    trained = load_file(checkpoint / "adapter_model.safetensors")
    shutil.rmtree(tmp_path / "models/tuned")
    stage.main()  # finds checkpoint-4 of this run: nothing left to train, the trained adapter is the result
    resumed = load_file(tmp_path / "models/tuned/adapter_model.safetensors")
    sft_weights = load_file(tmp_path / "models/sft/adapter_model.safetensors")
    name = next(iter(trained))
    assert all((resumed[key] == trained[key]).all() for key in trained)
    assert not (resumed[name] == sft_weights[name]).all()


def test_unpaired_answers_to_one_prompt_stay_in_one_split_and_evaluate_compares_them(workdir, tiny_qwen3, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    from stages import prepare

    workdir.write_jsonl("chat.jsonl", [{"instruction": f"Say {i}.", "output": f"{i}."} for i in range(20)])
    answers = [{"prompt": f"Say {i}.", "completion": f"{i}{end}", "label": end == "!"} for i in range(40) for end in "!."]
    write_params(workdir.path, data={"sources": [{"path": "chat.jsonl", "format": "alpaca"}], "total": None,
                                     "val_fraction": 0.1, "test_fraction": 0.2},
                 preference={"method": "kto", "sources": [{"path": workdir.write_jsonl("kto.jsonl", answers),
                                                           "format": "kto"}]})
    prepare.main()
    splits = {name: workdir.read_split(f"preference/{name}") for name in ("train", "val", "test")}
    prompts = {name: {row["prompt"] for row in rows} for name, rows in splits.items()}
    assert not prompts["test"] & prompts["train"] and not prompts["val"] & prompts["train"]
    assert len(splits["test"]) == 16 and len(prompts["test"]) == 8  # 20% of the 40 prompts, both answers each
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3, dtype=torch.float32).eval()
    assert preference.preference_metrics(model, tokenizer, splits["test"], evaluating(8, 8))["preference_pairs"] == 8


def test_the_alpaca_template_of_a_preference_source_refuses_a_system_prompt(builtin_cache):
    params = load(data={"system_prompt": "Be brief."},
                  preference={"sources": [{"path": "p.jsonl", "format": "preference", "template": "alpaca"}]})
    with pytest.raises(SlothlineError, match=r"the alpaca template has no place for a system prompt "
                                             r"\(preference.sources\[0\] use template: alpaca\)"):
        causal_lm.check(params)
