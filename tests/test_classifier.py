"""The classifier kind: records and label errors, stratified splits, hand-worked metrics, the tiny
ModernBERT, training (LoRA and full), evaluation, merge, ONNX export, and the classifier default
(`dvc exp run -S kind=classifier`)."""

import json
import shutil
import time

import pytest
import yaml

from slothline import kinds
from slothline.artifacts import (CONFUSION_FILE, DATA_METRICS, EVAL_CHART, EVAL_METRICS, EXPORT_METRICS, MANIFEST_FILE,
                                 MERGED_DIR, ONNX_DIR, PARAMS_FILE, REPORT_FILE, TRAIN_METRICS, TUNED_DIR)
from slothline.errors import RowError, SlothlineError
from slothline.kinds import classifier, context_length
from slothline.params import load_params
from tests.conftest import ROOT, kind_defaults, load, write_params

LABELS = ("negative", "neutral", "positive")
WORDS = {"negative": ["broke", "awful", "bad"], "neutral": ["blue", "box", "grey"],
         "positive": ["love", "great", "good"]}


def reviews(count: int) -> list[dict]:
    """`count` short rows per class whose class shows in a word."""
    return [{"text": f"the {thing} is {WORDS[label][i % 3]} number {i}", "label": label}
            for label in LABELS for i, thing in zip(range(count), ["lamp", "mug", "chair", "desk", "kettle"] * count)]


def write_classifier_params(workdir, sources: list[dict], data=None, **sections) -> dict:
    """The classifier default reading `sources`, with a fifth each for val and test and short rows."""
    return write_params(workdir.path, "classifier", model={"max_seq_length": 64},
                        data={"sources": sources, "val_fraction": 0.2, "test_fraction": 0.2, **(data or {})},
                        **sections)


def prepare(workdir, rows: list[dict], **sections) -> dict:
    from stages import prepare

    source = {"path": workdir.write_jsonl("reviews.jsonl", rows), "format": "classification"}
    write_classifier_params(workdir, [source], **sections)
    prepare.main()
    return json.loads((workdir.path / DATA_METRICS).read_text())


def params_error(directory, kind, **sections) -> str:
    """The message load_params refuses `kind`'s defaults with `sections` merged in with."""
    write_params(directory, kind, **sections)
    with pytest.raises(SlothlineError) as caught:
        load_params(directory / PARAMS_FILE)
    return str(caught.value)


# records and labels


def data(labels=None):
    return load("classifier", data={"labels": labels})


@pytest.mark.parametrize("row, labels, expected", [
    ({"text": "fine", "label": "good"}, None, {"text": "fine", "label": "good"}),
    ({"text": "fine", "label": 1}, None, {"text": "fine", "label": "1"}),
    ({"text": "fine", "label": 1}, ["bad", "good"], {"text": "fine", "label": "good"}),
    ({"text": "fine", "label": "0"}, ["bad", "good"], {"text": "fine", "label": "bad"}),  # a CSV cell
    ({"text": "fine", "label": " good "}, ["bad", "good"], {"text": "fine", "label": "good"}),
    ({"text": "a", "text_pair": "b", "label": "x"}, None, {"text": "a", "text_pair": "b", "label": "x"}),
    ({"text": "a", "text_pair": "", "label": "x"}, None, {"text": "a", "label": "x"}),  # an empty CSV cell
])
def test_rows_become_text_and_label_records(row, labels, expected):
    assert classifier.to_record(row, None, data(labels), None) == (expected, {})


@pytest.mark.parametrize("row, labels, message", [
    ({"label": "x"}, None, "missing or empty field 'text'"),
    ({"text": "  ", "label": "x"}, None, "missing or empty field 'text'"),
    ({"text": "a"}, None, "missing field 'label'"),
    ({"text": "a", "label": ""}, None, "field 'label' is empty"),
    ({"text": "a", "label": 1.0}, None, "must be a class name (string) or a class id (integer), got float 1.0"),
    ({"text": "a", "label": True}, None, "got bool True"),
    ({"text": "a", "label": ["x"]}, None, "got list"),
    ({"text": "a", "text_pair": 3, "label": "x"}, None, "field 'text_pair' must be a string, got int"),
    ({"text": "a", "label": "meh"}, ["bad", "good"], "label 'meh' is neither one of data.labels (bad, good) nor a "
                                                     "class id 0..1"),
    ({"text": "a", "label": 2}, ["bad", "good"], "label 2 is neither one of data.labels"),
    ({"text": "a", "label": "²"}, ["bad", "good"], "label '²' is neither one of data.labels"),  # a digit, not a number
    ({"sentence1": "a", "sentence2": "b", "label": 1}, None,  # GLUE's field names
     "missing or empty field 'text'; every row needs a non-empty string there (this row's fields: sentence1, "
     "sentence2, label); name the text 'text' and a second text, such as GLUE's sentence2, 'text_pair'"),
])
def test_bad_rows_are_refused_with_the_field_and_the_fix(row, labels, message):
    with pytest.raises(RowError) as error:
        classifier.to_record(row, None, data(labels), None)
    assert message in str(error.value)


def test_a_bad_row_names_its_file_and_line(workdir):
    rows = reviews(3)
    rows[4] = {"text": "no label here"}
    with pytest.raises(SlothlineError, match=r"reviews.jsonl:5: missing field 'label'.*\(classification format\). "
                                             r"Fix the row, or set `on_error: skip`"):
        prepare(workdir, rows)


def test_a_csv_label_outside_data_labels_names_its_line(workdir):
    from stages import prepare as stage

    (workdir.path / "r.csv").write_text("text,label\n" + "".join(f"row {i},{i % 2}\n" for i in range(10))
                                        + "odd one,maybe\n")
    write_classifier_params(workdir, [{"path": "r.csv", "format": "classification"}], data={"labels": ["no", "yes"]})
    with pytest.raises(SlothlineError, match=r"r.csv:12: label 'maybe' is neither one of data.labels \(no, yes\)"):
        stage.main()


@pytest.mark.parametrize("stage_name", ["check_params", "prepare"])
def test_a_chat_format_is_refused_for_a_classifier(workdir, stage_name, builtin_cache):
    import importlib

    stage = importlib.import_module(f"stages.{stage_name}")
    write_classifier_params(workdir, [{"path": workdir.write_jsonl("a.jsonl", reviews(3)), "format": "alpaca"}])
    with pytest.raises(SlothlineError, match="data.sources\\[0\\].format: alpaca is not a format of classifier "
                                             "models; use one of classification"):
        stage.main()


# prepare: classes, stratified splits, label errors


def test_prepare_writes_labels_counts_and_stratified_splits(workdir):
    rows = reviews(10)[:25]  # 10 negative, 10 neutral, 5 positive
    metrics = prepare(workdir, rows)
    assert metrics["labels"] == list(LABELS)
    assert metrics["classes"] == {"train": {"negative": 6, "neutral": 6, "positive": 3},
                                  "val": {"negative": 2, "neutral": 2, "positive": 1},
                                  "test": {"negative": 2, "neutral": 2, "positive": 1}}
    train = workdir.read_split("train")
    assert set(train[0]) == {"id", "source", "text", "label", "label_id"}
    assert all(LABELS[row["label_id"]] == row["label"] for row in train)
    assert classifier.labels(train) == list(LABELS)


def test_data_labels_fix_the_order_and_name_ids(workdir):
    rows = [{"text": row["text"], "label": LABELS.index(row["label"])} for row in reviews(5)]
    metrics = prepare(workdir, rows, data={"labels": ["neg", "neu", "pos"]})
    assert metrics["labels"] == ["neg", "neu", "pos"]
    assert {row["label"]: row["label_id"] for row in workdir.read_split("train")} == {"neg": 0, "neu": 1, "pos": 2}


def test_without_data_labels_numeric_classes_sort_as_numbers(workdir):
    rows = [{"text": f"row {i} {'x' * (i % 11)}", "label": i % 11} for i in range(55)]
    assert prepare(workdir, rows)["labels"] == [str(i) for i in range(11)]


def star_reviews() -> list[dict]:
    """Five classes of star ratings labelled 0..4 (0-based ids), 8 rows each, with a word that shows the class."""
    words = ["awful", "poor", "fine", "good", "superb"]
    return [{"text": f"the {thing} is {words[stars]} really, review {i}", "label": stars}
            for stars in range(5) for i, thing in enumerate(["lamp", "mug", "chair", "desk"] * 2)]


def test_numeric_data_labels_that_are_also_ids_of_other_classes_are_refused(workdir, tmp_path):
    """data.labels 1..5 with 0-based labels in the data: 0 is the id of "1" and 1 the name "1", so two classes
    would merge. The ambiguity is refused before anything runs; the message's fixes each give five classes."""
    labels = ["1", "2", "3", "4", "5"]
    message = params_error(tmp_path, "classifier", data={"labels": labels})
    assert ("data.labels: class names and class ids collide: '1' names a class and is also the id of '2' (ids count "
            "from 0), so a label 1 in the data could mean either and two classes would merge. If the data's labels "
            "are these names, remove data.labels (numeric classes are then ordered by value); if they are ids 0..4, "
            "give data.labels non-numeric names (like 'class_1', 'class_2', ...)") in message
    with pytest.raises(SlothlineError, match="data.labels: class names and class ids collide"):
        prepare(workdir, star_reviews(), data={"labels": labels})
    named = prepare(workdir, star_reviews(), data={"labels": [f"class_{label}" for label in labels]})
    assert named["labels"] == [f"class_{label}" for label in labels]
    totals = {label: sum(counts[label] for counts in named["classes"].values()) for label in named["labels"]}
    assert totals == {f"class_{label}": 8 for label in labels}  # none merged
    as_values = prepare(workdir, star_reviews())  # without data.labels: the values are the names
    assert as_values["labels"] == ["0", "1", "2", "3", "4"]


@pytest.mark.parametrize("labels", [["a", "0"], ["x", "y", "1"], ["2", "1", "0"]])
def test_any_class_name_that_is_the_id_of_another_class_is_refused(tmp_path, labels):
    assert "class names and class ids collide" in params_error(tmp_path, "classifier", data={"labels": labels})


@pytest.mark.parametrize("labels", [["0", "1", "2"], ["10", "20"], ["neg", "pos"]])
def test_numeric_names_that_read_the_same_as_ids_are_accepted(tmp_path, labels):
    write_params(tmp_path, "classifier", data={"labels": labels})
    assert load_params(tmp_path / PARAMS_FILE).data.labels == labels


def test_yaml_booleans_as_class_names_are_refused_with_the_quoting(tmp_path):
    """`labels: [no, yes]` reads as [False, True]: the message says to quote them."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(kind_defaults("classifier")).replace(
        "labels: null", "labels: [no, yes]"))
    with pytest.raises(SlothlineError, match=r"data.labels: .*quote the class names, like \['no', 'yes'\]"):
        load_params(tmp_path / PARAMS_FILE)


def test_data_labels_with_spaces_around_them_are_refused(tmp_path):
    message = params_error(tmp_path, "classifier", data={"labels": ["bug", " feature"]})
    assert "data.labels: ' feature' has spaces around it, which every label read from the data loses; write " \
           "'feature'" in message
    message = params_error(tmp_path, "classifier", data={"labels": ["bug", ""]})
    assert "data.labels: lists an empty class name; every class needs a name" in message


def test_classes_that_differ_only_in_case_or_format_are_warned_about(workdir, capsys):
    rows = [{"text": f"report {label!r} number {i}", "label": label} for label, count in
            (("Bug", 6), ("bug", 3), (" bug ", 2), ("01", 4), ("1", 5), ("1.0", 3), ("not_spam", 5), ("Not spam", 5),
             ("other", 5))
            for i in range(count)]
    metrics = prepare(workdir, rows, data={"val_fraction": 0.0, "test_fraction": 0.0})
    assert metrics["labels"] == ["01", "1", "1.0", "Bug", "Not spam", "bug", "not_spam", "other"]  # " bug " is "bug"
    warnings = [line for line in capsys.readouterr().out.splitlines() if "differ only in case" in line]
    assert sorted(warnings) == sorted([
        "data: the classes '01' and '1' and '1.0' differ only in case or formatting, and are trained as 3 separate "
        "classes (4 and 5 and 3 rows); if they are one class, write its label one way in every row",
        "data: the classes 'Bug' and 'bug' differ only in case or formatting, and are trained as 2 separate classes "
        "(6 and 5 rows); if they are one class, write its label one way in every row",
        "data: the classes 'Not spam' and 'not_spam' differ only in case or formatting, and are trained as 2 separate "
        "classes (5 and 5 rows); if they are one class, write its label one way in every row",
    ])
    prepare(workdir, reviews(5))
    assert "differ only in case" not in capsys.readouterr().out


def test_only_ascii_digits_sort_as_numbers():
    rows = [{"label": label} for label in ("10", "b", "²", "2")]  # "²" is a digit to Python, not a number
    assert classifier.class_order(rows, None) == ["2", "10", "b", "²"]


def test_a_data_label_without_train_rows_is_refused(workdir):
    with pytest.raises(SlothlineError, match="data.labels: surprise has no rows in the train split"):
        prepare(workdir, reviews(5), data={"labels": [*LABELS, "surprise"]})


def test_a_class_with_no_train_row_names_the_row_and_label(workdir):
    rows = reviews(5) + [{"text": "a rare one", "label": "rare"}, {"text": "another rare one", "label": "rare"}]
    with pytest.raises(SlothlineError, match=r"data: the (val|test) row '(another )?a? ?rare one' \(source reviews, id "
                                             r"\w+\) has label 'rare', which no train row has: the class has 2 rows, "
                                             r"too few to split with data.val_fraction 0.4 and data.test_fraction 0.4"):
        prepare(workdir, rows, data={"val_fraction": 0.4, "test_fraction": 0.4})


def test_stratified_split_gives_every_class_every_split():
    from slothline.data.mixing import mix, split, stratified_split

    records = [{"id": f"{label}{i}", "label": label} for label, n in (("a", 30), ("b", 7), ("c", 3)) for i in range(n)]
    parts = stratified_split(records, "label", 0.1, 0.1)
    count = lambda name, label: sum(r["label"] == label for r in parts[name])
    assert [[count(name, label) for label in "abc"] for name in ("train", "val", "test")] == [[24, 5, 1], [3, 1, 1],
                                                                                              [3, 1, 1]]
    assert sorted(r["id"] for p in parts.values() for r in p) == sorted(r["id"] for r in records)
    plain = split(records, 0.1, 0.1)  # the unstratified cut leaves the small classes out of val and test
    assert {r["label"] for r in plain["test"]} == {"a"}
    mixed = mix({"s": records}, {"s": 1.0}, None, 0.1, 0.1, 7, stratify_by="label")
    assert all({r["label"] for r in mixed[name]} == set("abc") for name in ("train", "val", "test"))


def test_a_tiny_class_keeps_its_train_row():
    from slothline.data.mixing import stratified_split

    for n in (1, 2):
        parts = stratified_split([{"label": "x", "i": i} for i in range(n)], "label", 0.1, 0.1)
        assert len(parts["train"]) == 1 and len(parts["test"]) == n - 1 and not parts["val"]


# metrics


def test_metrics_worked_out_by_hand():
    from slothline.kinds.classifier.metrics import classification_metrics

    actual = ["cat", "cat", "cat", "dog", "dog", "bird"]
    predicted = ["cat", "cat", "dog", "dog", "cat", "cat"]
    # cat: tp 2, fp 2 (a dog, the bird), fn 1 -> precision 2/4, recall 2/3, F1 2*.5*.6667/1.1667 = 0.5714
    # dog: tp 1, fp 1, fn 1 -> precision 1/2, recall 1/2, F1 0.5; bird: never predicted -> 0, 0, 0
    metrics = classification_metrics(actual, predicted, ["cat", "dog", "bird"])
    assert metrics["accuracy"] == 50.0  # 3 of 6
    assert metrics["macro_f1"] == round(100 * (4 / 7 + 0.5 + 0) / 3, 2) == 35.71
    assert metrics["micro_f1"] == 50.0  # pooled: tp 3, fp 3, fn 3
    assert metrics["per_class"] == {
        "cat": {"precision": 50.0, "recall": 66.67, "f1": 57.14, "support": 3},
        "dog": {"precision": 50.0, "recall": 50.0, "f1": 50.0, "support": 2},
        "bird": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1},
    }


# the tiny model, the classifier default and LoRA targets


def test_tiny_modernbert_builds_deterministically_and_loads_as_a_classifier(tmp_path, builtin_cache):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from slothline.builtin import ensure_builtin
    from slothline.models import kind_of_config, model_config

    first = ensure_builtin("tiny-modernbert", tmp_path / "one")
    second = ensure_builtin("tiny-modernbert", tmp_path / "two")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    assert kind_of_config(model_config("builtin:tiny-modernbert")) == "classifier"
    tokenizer = AutoTokenizer.from_pretrained(first)
    encoded = tokenizer("The sloth sleeps.", "It is slow.")
    assert tokenizer.convert_ids_to_tokens(encoded["input_ids"]) == [
        "[CLS]", "the", "sloth", "sleeps", ".", "[SEP]", "it", "is", "slow", ".", "[SEP]"]
    assert set(encoded) == {"input_ids", "attention_mask"}
    model = AutoModelForSequenceClassification.from_pretrained(first, num_labels=3)
    assert model.config.model_type == "modernbert" and model.classifier.out_features == 3
    assert classifier.head_modules(model) == ["head", "classifier"]


def test_the_classifier_default_is_valid_and_sets_nothing_a_classifier_cannot_apply(tmp_path, builtin_cache):
    write_params(tmp_path, "classifier")
    params = load_params(tmp_path / PARAMS_FILE)  # every key it sets is one of the classifier's models
    assert params.kind == "classifier" and kinds.get(params.kind) is classifier
    assert params.model.name == "builtin:tiny-modernbert" and params.lora.target_modules is None
    assert params.export.formats == ["onnx"] and params.data.sources[0].format == "classification"
    kinds.check(classifier, params)  # and check_params has nothing to refuse


def cpu_load(setting):
    from slothline import backends
    from slothline.runtime import Capabilities, resolve

    return backends.load_for_training(classifier, resolve(setting, Capabilities(cuda=False)), setting, list(LABELS))


def classifier_params(**sections):
    return load("classifier", **sections)


def test_null_target_modules_are_the_family_default_and_the_head_is_trained_whole(builtin_cache):
    model, _ = cpu_load(classifier_params())
    config = model.peft_config["default"]
    assert config.target_modules == {"Wqkv", "Wo", "Wi"} and config.task_type == "SEQ_CLS"
    assert {"head", "classifier"} <= set(config.modules_to_save)
    adapted = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if hasattr(module, "lora_A")}
    assert adapted == {"Wqkv", "Wo", "Wi"}
    assert model.base_model.model.classifier.modules_to_save["default"].weight.requires_grad


@pytest.mark.parametrize("targets, unmatched", [(["q_proj", "v_proj"], "q_proj, v_proj"), (["Wqkv", "Wq"], "Wq")])
def test_target_modules_that_match_nothing_list_the_encoders_layers(targets, unmatched, builtin_cache):
    """A causal LM's names, or a typo among good ones, fail before training on either backend."""
    with pytest.raises(SlothlineError, match=rf"lora.target_modules: {unmatched} matched no layer of this model; "
                                             r"its linear layers are: Wi, Wo, Wqkv, classifier, dense; or set "
                                             r"lora.target_modules: null for the family's default \(Wqkv, Wo, Wi\)$"):
        cpu_load(classifier_params(lora={"target_modules": targets}))


# real encoder families (and a decoder classifier): tiny random checkpoints built here


def tiny_checkpoint(directory, config_class: str, auto_class: str = "AutoModelForMaskedLM", tokenizer=None,
                    max_length: int = 512, **config) -> str:
    """A tiny random checkpoint of `config_class` (hidden 32, 2 layers, 64 positions unless `config` says) saved as
    its `auto_class` model (a masked LM: no classification head, as most encoders are published), with `tokenizer`,
    by default the builtin WordPiece one (`max_length` tokens); returns its directory."""
    import torch
    import transformers

    from slothline.builtin import build_wordpiece_tokenizer

    tokenizer = tokenizer or build_wordpiece_tokenizer(max_length)
    settings = {"vocab_size": len(tokenizer), "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                "intermediate_size": 64, "max_position_embeddings": 64, "pad_token_id": tokenizer.pad_token_id,
                **config}
    torch.manual_seed(0)
    model = getattr(transformers, auto_class).from_config(getattr(transformers, config_class)(**settings))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


TEXTS = [{"text": "the lamp is great"}, {"text": "the box is grey and it is blue, and the mug is too"}]


def test_deberta_loads_and_predicts_on_eager_attention(tmp_path, builtin_cache):
    """DeBERTa (and MPNet) have no sdpa attention: they load and predict on eager, which attention_of picks."""
    from slothline.backends import hf

    name = tiny_checkpoint(tmp_path / "deberta", "DebertaV2Config", relative_attention=True,
                           position_biased_input=False, pos_att_type=["p2c", "c2p"], type_vocab_size=0)
    model, tokenizer = cpu_load(classifier_params(model={"name": name}))
    assert model.config._attn_implementation == "eager"
    hf.for_inference(model, classifier)
    assert set(classifier.predict(model, tokenizer, TEXTS, classifier_params())) <= set(LABELS)


@pytest.mark.parametrize("softcap, attention", [(50.0, "eager"), (None, "sdpa")])
def test_attention_logit_soft_capping_runs_eager(tmp_path, builtin_cache, softcap, attention):
    """sdpa would skip Gemma 2's attn_logit_softcapping without a word: such a model loads and generates on eager;
    one without soft-capping keeps sdpa (the CPU's attention for generation)."""
    from slothline.backends import ModelSpec, hf
    from slothline.builtin import build_byte_tokenizer
    from slothline.runtime import Capabilities, resolve

    causal_lm = kinds.get("causal_lm")
    name = tiny_checkpoint(tmp_path / "gemma2", "Gemma2Config", "AutoModelForCausalLM", build_byte_tokenizer(),
                           head_dim=16, num_key_value_heads=1, attn_logit_softcapping=softcap)
    model, _ = hf.load(causal_lm, ModelSpec(name, None, 64), resolve(load(), Capabilities(cuda=False)))
    assert model.config._attn_implementation == attention
    hf.for_inference(model, causal_lm)
    assert model.config._attn_implementation == attention


@pytest.mark.parametrize("head, note", [
    ({"id2label": {0: "NEGATIVE", 1: "POSITIVE"}}, "has 2 output(s) (NEGATIVE, POSITIVE); a new head for the 3 "
                                                   "classes replaces it, starting from a fixed seed"),
    ({"num_labels": 1, "problem_type": "regression"}, "has 1 output(s) (LABEL_0); a new head for the 3 classes"),
    ({"id2label": {0: "toxic", 1: "insult", 2: "threat"}, "problem_type": "multi_label_classification"},
     "was trained for other classes (toxic, insult, threat); each of the data's classes"),
    ({"num_labels": 3}, None),  # transformers' placeholder names: an untrained head of the data's size
], ids=["two-labels", "regression", "multi-label", "placeholder-names"])
def test_a_checkpoints_own_head_is_replaced_or_trained_for_one_class_per_row(tmp_path, capsys, builtin_cache, head,
                                                                              note):
    """A checkpoint with a head of another size (an SST-2 model, a regression head) gets a new head, with a note; a
    multi-label head of the same size is trained with one class per row (cross-entropy over the classes)."""
    import torch

    name = tiny_checkpoint(tmp_path / "bert", "BertConfig", "AutoModelForSequenceClassification", **head)
    model, tokenizer = cpu_load(classifier_params(model={"name": name}))
    printed = capsys.readouterr().out
    assert f"note: model.name: the checkpoint's classification head {note}" in printed if note else (
        "classification head" not in printed)
    assert model.config.problem_type == "single_label_classification"
    assert model.config.id2label == dict(enumerate(LABELS))
    inputs = tokenizer([row["text"] for row in TEXTS], padding=True, return_tensors="pt")
    assert model(**inputs, labels=torch.tensor([2, 0])).loss.ndim == 0


def test_a_decoder_classifier_without_a_pad_token_pads_with_eos(tmp_path, monkeypatch, builtin_cache):
    """Llama's tokenizer has no pad token: the classifier pads with EOS (the config's pad_token_id too, by which the
    head finds each row's last token); a tokenizer with neither is refused by check_params."""
    monkeypatch.chdir(tmp_path)  # outside the project: a local model.name need not be a dependency here
    from slothline.builtin import build_byte_tokenizer

    tokenizer = build_byte_tokenizer()
    tokenizer.pad_token = None
    name = tiny_checkpoint(tmp_path / "llama", "LlamaConfig", "AutoModelForSequenceClassification", tokenizer,
                           num_key_value_heads=1, num_labels=3)
    params = classifier_params(model={"name": name, "max_seq_length": 64})
    model, processor = cpu_load(params)
    assert processor.pad_token == processor.eos_token and model.config.pad_token_id == processor.eos_token_id
    assert set(classifier.predict(model, processor, TEXTS, params)) <= set(LABELS)
    kinds.check(classifier, params)
    tokenizer.eos_token = None
    tokenizer.save_pretrained(name)
    with pytest.raises(SlothlineError, match=r"model.name: the tokenizer of '.*llama' has neither a pad token nor an "
                                             r"EOS token, .*; set `pad_token` in its tokenizer_config.json"):
        kinds.check(classifier, params)


def test_distilbert_adapts_its_family_layers_and_a_family_without_defaults_is_refused(tmp_path, monkeypatch,
                                                                                      builtin_cache):
    """DistilBERT's layers (PEFT has no default for them) are its family record's; for a model type that neither
    families.py nor PEFT gives default layers, check_params asks for lora.target_modules, listing the layers."""
    from slothline import families

    monkeypatch.chdir(tmp_path)  # outside the project: a local model.name need not be a dependency here

    name = tiny_checkpoint(tmp_path / "distilbert", "DistilBertConfig", hidden_dim=64)
    model, _ = cpu_load(classifier_params(model={"name": name}))
    assert model.peft_config["default"].target_modules == {"q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"}
    monkeypatch.setitem(families.FAMILIES, "distilbert", families.Family("classifier"))
    with pytest.raises(SlothlineError, match=r"^lora.target_modules: null takes the default layers of the model's "
                                             r"family, but there is none for distilbert models; list the layers to "
                                             r"adapt, from its linear layers: classifier, k_lin, lin1, lin2, out_lin, "
                                             r"pre_classifier, q_lin, v_lin$"):
        kinds.check(classifier, classifier_params(model={"name": name, "max_seq_length": 64}))


@pytest.mark.parametrize("family", ["distilbert", "llama"])
def test_onnx_export_takes_only_the_inputs_the_models_forward_names(tmp_path, builtin_cache, family):
    """A BERT tokenizer returns token_type_ids, which DistilBERT's forward does not take: export and its check
    leave them out. A decoder classifier exports without its KV cache."""
    import onnxruntime

    from slothline.builtin import build_byte_tokenizer, build_wordpiece_tokenizer
    from slothline.kinds.classifier.onnx import check_onnx, write_onnx

    merged = tmp_path / "merged"
    if family == "distilbert":
        tokenizer = build_wordpiece_tokenizer(512)
        tokenizer.model_input_names = ["input_ids", "token_type_ids", "attention_mask"]
        tiny_checkpoint(merged, "DistilBertConfig", "AutoModelForSequenceClassification", tokenizer, hidden_dim=64,
                        num_labels=3)
    else:
        tiny_checkpoint(merged, "LlamaConfig", "AutoModelForSequenceClassification", build_byte_tokenizer(),
                        num_key_value_heads=1, num_labels=3)
    write_onnx(merged, tmp_path / "onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "model.onnx"))
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    assert check_onnx(tmp_path / "onnx" / "model.onnx", merged, TEXTS)["max_abs_logit_diff"] <= 1e-4


def test_roberta_positions_start_after_the_padding_id(tmp_path, monkeypatch, builtin_cache):
    """RoBERTa's position ids start at pad_token_id + 1 (here 0 + 1: 66 positions hold 65 tokens): check_params
    allows that many, and evaluate cuts a longer test row there, though the tokenizer sets no model_max_length."""
    monkeypatch.chdir(tmp_path)  # outside the project: a local model.name need not be a dependency here
    name = tiny_checkpoint(tmp_path / "roberta", "RobertaConfig", max_length=int(1e30), type_vocab_size=1,
                           max_position_embeddings=66)
    with pytest.raises(SlothlineError, match=rf"^model.max_seq_length: 66 is above the 65 positions {name} has "
                                             r"\(max_position_embeddings, less pad_token_id \+ 1: positions start "
                                             r"after it\); set it to at most 65$"):
        kinds.check(classifier, classifier_params(model={"name": name, "max_seq_length": 66}))
    params = classifier_params(model={"name": name, "max_seq_length": 65})
    kinds.check(classifier, params)
    model, tokenizer = cpu_load(params)
    assert classifier.predict(model, tokenizer, [{"text": "the lamp is great " * 40}], params)[0] in LABELS


def test_max_seq_length_above_the_tokenizers_limit_is_refused(tmp_path, monkeypatch, builtin_cache):
    """A tokenizer's model_max_length below the positions (64) is the context check_params, evaluate and the ONNX
    check share."""
    monkeypatch.chdir(tmp_path)  # outside the project: a local model.name need not be a dependency here
    from transformers import AutoConfig, AutoTokenizer

    name = tiny_checkpoint(tmp_path / "bert", "BertConfig", max_length=16)
    config, tokenizer = AutoConfig.from_pretrained(name).to_dict(), AutoTokenizer.from_pretrained(name)
    assert context_length(config, tokenizer) == 16
    with pytest.raises(SlothlineError, match=rf"^model.max_seq_length: 32 is above the 16 tokens {name}'s tokenizer "
                                             r"takes \(model_max_length\); set it to at most 16$"):
        kinds.check(classifier, classifier_params(model={"name": name, "max_seq_length": 32}))


def test_weights_the_checkpoint_lacks_are_saved_with_the_adapter(tmp_path, builtin_cache):
    """A BERT masked-LM checkpoint has no pooler, which transformers initialises at random: the adapter carries it
    (modules_to_save) with the head, so the adapter on a base loaded with any seed is the trained model."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    name = tiny_checkpoint(tmp_path / "bert", "BertConfig")
    model, tokenizer = cpu_load(classifier_params(model={"name": name}))
    assert {"classifier", "bert.pooler.dense"} <= set(model.peft_config["default"].modules_to_save)
    model.save_pretrained(tmp_path / "adapter")
    torch.manual_seed(3)
    reloaded = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(name, num_labels=3),
                                         str(tmp_path / "adapter"))
    inputs = tokenizer([row["text"] for row in TEXTS], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(**inputs).logits, model.eval()(**inputs).logits)


def test_macro_f1_averages_the_classes_the_test_split_or_the_predictions_have():
    """A class kept in train but with no test row (README: rare classes stay in train) has no F1: counting
    it as 0 would report a perfect model at 75. Predicted wrongly, it counts."""
    from slothline.kinds.classifier.metrics import classification_metrics

    labels = ["bug", "feature", "question", "praise"]
    perfect = classification_metrics(["bug", "feature", "question"] * 5, ["bug", "feature", "question"] * 5, labels)
    assert perfect["macro_f1"] == 100.0 and perfect["per_class"]["praise"]["support"] == 0
    one_wrong = classification_metrics(["bug", "feature", "question"], ["bug", "feature", "praise"], labels)
    assert one_wrong["macro_f1"] == 50.0  # bug 1, feature 1, question 0, praise 0 (predicted once, wrongly)


def test_vision_params_set_for_a_classifier_are_refused(tmp_path):
    message = params_error(tmp_path, "classifier", lora={"finetune_vision_layers": False},
                           data={"image_max_pixels": 1000})
    assert "data.image_max_pixels: unknown parameter for classifier models" in message
    assert "lora.finetune_vision_layers: unknown parameter for classifier models" in message
    message = params_error(tmp_path, "causal_lm", data={"image_min_pixels": 9})
    assert "data.image_min_pixels: unknown parameter for causal_lm models" in message


def test_check_params_refuses_what_a_later_stage_would(workdir, builtin_cache):
    """check_params runs first: a param the kind does not have, an export format it does not offer, or an
    adapter-only merge with export formats fail there, before prepare and train."""
    from stages import check_params

    for change, message in [
        ({"export": {"formats": ["gguf"]}}, "export.formats: gguf is not offered for classifier"),
        ({"train": {"packing": True}}, "train.packing: unknown parameter for classifier models"),
        ({"merge": {"save_method": "lora"}}, "merge.save_method: lora writes the adapter alone"),
    ]:
        write_params(workdir.path, "classifier", **change)
        with pytest.raises(SlothlineError, match=message):
            check_params.main()
    write_params(workdir.path, "classifier")
    check_params.main()


def test_decoder_only_params_set_in_params_yaml_are_refused(tmp_path):
    """The generating kinds' settings are not a classifier's, whatever their value; nor a classifier's
    `data.labels` a causal LM's."""
    message = params_error(tmp_path, "classifier", train={"packing": False, "train_on_responses_only": False},
                           evaluate={"max_new_tokens": 8}, export={"gguf_quantization": []})
    for key in ("train.packing", "train.train_on_responses_only", "evaluate.max_new_tokens",
                "export.gguf_quantization"):
        assert f"{key}: unknown parameter for classifier models" in message
    sources = [{**kind_defaults("classifier")["data"]["sources"][0], "template": "alpaca"}]
    message = params_error(tmp_path, "classifier", data={"sources": sources})
    assert "data.sources[0].template: unknown parameter for classifier models" in message
    message = params_error(tmp_path, "causal_lm", data={"labels": ["a", "b"]})
    assert "data.labels: unknown parameter for causal_lm models" in message


# train, evaluate, merge, export on the hf backend


@pytest.fixture(scope="module")
def trained(tmp_path_factory, builtin_cache):
    """The four-stage chain on a small sample, LoRA, in a module-wide work directory."""
    import os

    from stages import evaluate, merge, preference, prepare, train
    from tests.conftest import Workdir

    workdir = Workdir(tmp_path_factory.mktemp("classifier"))
    previous = os.getcwd()
    os.chdir(workdir.path)
    try:
        write_classifier_params(
            workdir, [{"path": workdir.write_jsonl("reviews.jsonl", reviews(20)), "format": "classification"}],
            train={"epochs": 4, "learning_rate": 0.003, "per_device_batch_size": 8, "eval_steps": 5, "warmup_steps": 2})
        for stage in (prepare, train, preference, evaluate, merge):
            stage.main()
        yield workdir
    finally:
        os.chdir(previous)


def test_training_records_the_method_and_the_evaluation_beats_the_base(trained):
    metrics = json.loads((trained.path / TRAIN_METRICS).read_text())
    assert metrics["kind"] == "classifier" and metrics["method"] == "lora"
    assert 0 < metrics["trainable_params"] < metrics["total_params"]
    assert metrics["val_loss"] is not None
    manifest = json.loads((trained.path / TUNED_DIR / MANIFEST_FILE).read_text())
    assert manifest["labels"] == list(LABELS) and manifest["method"] == "lora"
    results = json.loads((trained.path / EVAL_METRICS).read_text())
    assert results["tuned"]["accuracy"] >= results["base"]["accuracy"] + 30, results
    assert set(results["delta"]) == {"accuracy", "macro_f1", "micro_f1"}
    assert set(results["tuned"]["per_class"]) == set(LABELS)
    pairs = json.loads((trained.path / CONFUSION_FILE).read_text())
    assert len(pairs) == results["samples"] and set(pairs[0]) == {"actual", "predicted"}
    report = (trained.path / REPORT_FILE).read_text()
    assert "| accuracy |" in report and "per_class" not in report and "## Per class" in report
    assert "## Misclassified by the tuned model" in report and f"![Base vs tuned]({EVAL_CHART.name})" in report


def test_the_base_is_scored_with_the_same_untrained_head_every_time(trained):
    from stages import evaluate

    first = json.loads((trained.path / EVAL_METRICS).read_text())
    evaluate.main()
    assert json.loads((trained.path / EVAL_METRICS).read_text()) == first


def test_merged_classifier_loads_with_plain_transformers_and_matches_the_adapter(trained, tiny_modernbert):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    merged_dir = trained.path / MERGED_DIR
    merged = AutoModelForSequenceClassification.from_pretrained(merged_dir).eval()
    assert merged.config.id2label == dict(enumerate(LABELS))
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    torch.manual_seed(0)  # the base's classifier is replaced by the adapter's trained copy
    base = AutoModelForSequenceClassification.from_pretrained(tiny_modernbert, num_labels=3)
    tuned = PeftModel.from_pretrained(base, str(trained.path / TUNED_DIR)).eval()
    inputs = tokenizer(["the lamp is great", "the box is grey and blue"], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected, got = tuned(**inputs).logits, merged(**inputs).logits
        with tuned.disable_adapter():
            untrained = tuned(**inputs).logits
    assert torch.allclose(got, expected, atol=1e-4) and not torch.allclose(untrained, expected, atol=1e-2)


def test_onnx_export_matches_transformers_on_the_test_split(trained):
    from stages import export

    export.main()
    result = json.loads((trained.path / EXPORT_METRICS).read_text())["onnx"]
    assert result["rows_checked"] == len(trained.read_split("test")) and result["max_abs_logit_diff"] <= 1e-4
    assert result["same_class_rows"] == result["rows_checked"]
    exported = trained.path / ONNX_DIR
    assert {"model.onnx", "config.json", "tokenizer.json"} <= {p.name for p in exported.iterdir()}
    # README's way to use it: onnxruntime and the tokenizer and config beside the model, no torch model
    import onnxruntime
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    tokenizer, config = AutoTokenizer.from_pretrained(exported), AutoConfig.from_pretrained(exported)
    session = onnxruntime.InferenceSession(str(exported / "model.onnx"))
    texts = ["the lamp is great", "the box is grey and it is blue", "awful"]
    inputs = tokenizer(texts, padding=True, return_tensors="np")
    logits = session.run(["logits"], {i.name: inputs[i.name] for i in session.get_inputs()})[0]
    merged = AutoModelForSequenceClassification.from_pretrained(trained.path / MERGED_DIR).eval()
    with torch.no_grad():
        expected = merged(**tokenizer(texts, padding=True, return_tensors="pt")).logits.argmax(-1).tolist()
    assert [config.id2label[int(k)] for k in logits.argmax(-1)] == [config.id2label[k] for k in expected]


def test_onnx_export_is_the_same_bytes_from_every_process(trained, tmp_path):
    """ModernBERT's forward iterates `set(config.layer_types)`, whose order follows the process's string hashing:
    exports from two processes that order it differently must still write the same model.onnx (else `push`
    reruns), with no debug records, and pass the onnxruntime check."""
    import os
    import subprocess
    import sys

    import onnx

    from slothline.kinds.classifier.onnx import check_onnx, write_onnx

    layer_types = "['full_attention', 'sliding_attention']"
    here = repr(list(set(eval(layer_types))))
    other_seed = next(seed for seed in range(1, 50) if subprocess.run(
        [sys.executable, "-c", f"print(list(set({layer_types})))"], env={**os.environ, "PYTHONHASHSEED": str(seed)},
        capture_output=True, text=True, check=True).stdout.strip() != here)
    merged_dir = trained.path / MERGED_DIR
    write_onnx(merged_dir, tmp_path / "here")
    subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from slothline.kinds.classifier.onnx "
                    "import write_onnx; write_onnx(Path(sys.argv[1]), Path(sys.argv[2]))", str(merged_dir),
                    str(tmp_path / "there")], env={**os.environ, "PYTHONHASHSEED": str(other_seed)}, check=True)
    for name in ("model.onnx", "config.json", "tokenizer.json"):
        assert (tmp_path / "here" / name).read_bytes() == (tmp_path / "there" / name).read_bytes(), name
    model = onnx.load(str(tmp_path / "here" / "model.onnx"))
    assert not any(node.metadata_props for node in model.graph.node) and not model.graph.metadata_props
    assert check_onnx(tmp_path / "here" / "model.onnx", merged_dir, trained.read_split("test"))["max_abs_logit_diff"] <= 1e-4


def test_the_onnx_check_fails_on_a_model_that_differs(trained, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from slothline.kinds.classifier.onnx import check_onnx

    other = tmp_path / "other"
    model = AutoModelForSequenceClassification.from_pretrained(trained.path / MERGED_DIR)
    model.classifier.bias.data += 0.01
    model.save_pretrained(other)
    shutil.copy(trained.path / MERGED_DIR / "tokenizer.json", other)
    shutil.copy(trained.path / MERGED_DIR / "tokenizer_config.json", other)
    onnx_file = trained.path / ONNX_DIR / "model.onnx"
    if not onnx_file.is_file():
        from stages import export

        export.main()
    with pytest.raises(SlothlineError, match=r"model.onnx: failed verification: logits differ from transformers' by "
                                             r"up to 1.00e-02 \(tolerance 0.0001\)"):
        check_onnx(onnx_file, other, trained.read_split("test"))


def test_gguf_is_not_offered_for_classifiers(trained):
    from stages import check_params

    params_file = trained.path / PARAMS_FILE
    params = yaml.safe_load(params_file.read_text())
    params["export"]["formats"] = ["gguf"]
    params_file.write_text(yaml.safe_dump(params))
    try:
        with pytest.raises(SlothlineError, match="export.formats: gguf is not offered for classifier models; use onnx"):
            check_params.main()
    finally:
        params["export"]["formats"] = ["onnx"]
        params_file.write_text(yaml.safe_dump(params))


def test_full_finetuning_trains_every_weight_and_scores_against_a_fresh_base(workdir):
    from stages import evaluate, preference, train

    prepare(workdir, reviews(10), train={"full_finetuning": True, "max_steps": 6, "learning_rate": 0.001,
                                         "per_device_batch_size": 8})
    train.main()
    preference.main()
    metrics = json.loads((workdir.path / TRAIN_METRICS).read_text())
    assert metrics["method"] == "full" and metrics["trainable_params"] == metrics["total_params"]
    tuned = workdir.path / TUNED_DIR
    assert (tuned / "config.json").is_file() and not (tuned / "adapter_config.json").exists()
    assert json.loads((tuned / "config.json").read_text())["id2label"] == {"0": "negative", "1": "neutral",
                                                                           "2": "positive"}
    evaluate.main()
    assert set(json.loads((workdir.path / EVAL_METRICS).read_text())) == {"tuned", "base", "delta", "samples"}


# the classifier default, end to end


@pytest.mark.e2e
def test_classifier_default_dvc_exp_run(dvc_project, tmp_path):
    from tests.test_dvc_contract import check_import_closure, logging_imports
    from tests.conftest import dvc, ran_stages

    started = time.monotonic()  # as README says
    log = tmp_path / "imports.jsonl"
    output = dvc(dvc_project, "exp", "run", "-S", "kind=classifier", env=logging_imports(log)).stdout
    check_import_closure(dvc_project, log, "classifier")  # each stage imports only code its deps name
    assert ran_stages(output) == [
        "check_params", "prepare", "train", "preference", "evaluate", "merge", "export", "push"]
    print(f"classifier DAG: {time.monotonic() - started:.0f} s")
    assert yaml.safe_load((dvc_project / PARAMS_FILE).read_text())["kind"] == "classifier"
    data = json.loads((dvc_project / DATA_METRICS).read_text())
    assert all(count > 0 for split in data["classes"].values() for count in split.values())
    scores = json.loads((dvc_project / EVAL_METRICS).read_text())
    print(json.dumps({name: scores[name] for name in ("tuned", "base")}))
    assert scores["tuned"]["accuracy"] >= 90, scores
    assert scores["base"]["accuracy"] <= 50 and scores["tuned"]["macro_f1"] >= scores["base"]["macro_f1"] + 40
    assert json.loads((dvc_project / TRAIN_METRICS).read_text())["method"] == "lora"
    assert json.loads((dvc_project / EXPORT_METRICS).read_text())["onnx"]["max_abs_logit_diff"] <= 1e-4
    report = (dvc_project / REPORT_FILE).read_text()
    assert "| accuracy |" in report and "## Per class" in report
    assert ran_stages(dvc(dvc_project, "exp", "run", "-S", "kind=classifier").stdout) == []
    assert ran_stages(dvc(dvc_project, "repro").stdout) == []


# the GPU path (pytest -m gpu)

MERGED_AGREES = """
import json
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from slothline.artifacts import MERGED_DIR, SAMPLES_FILE, read_split
from slothline.kinds import classifier
from slothline.params import load_params
model = AutoModelForSequenceClassification.from_pretrained(MERGED_DIR)
tokenizer = AutoTokenizer.from_pretrained(MERGED_DIR)
rows = read_split("test")
predicted = classifier.predict(model, tokenizer, rows, load_params())
evaluated = [sample["tuned"] for sample in json.loads(SAMPLES_FILE.read_text())]
print(json.dumps({"labels": [model.config.id2label[i] for i in range(model.config.num_labels)],
                  "agreement": sum(a == b for a, b in zip(predicted, evaluated)) / len(rows)}))
"""


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["lora", "full"])
def test_classifier_default_on_unsloth(workdir, method):
    """The classifier default's stages as subprocesses on the unsloth backend (FastModel with
    auto_model=AutoModelForSequenceClassification): LoRA with the head in modules_to_save, and full
    fine-tuning; merged with PEFT's merge_and_unload, loaded by plain transformers, exported to ONNX."""
    from tests.test_gpu import python, stage

    source = {**kind_defaults("classifier")["data"]["sources"][0], "path": str(ROOT / "data/raw/reviews.jsonl")}
    settings = {"backend": "unsloth", "full_finetuning": method == "full"}
    if method == "full":
        settings["learning_rate"] = 5e-4
    write_params(workdir.path, "classifier", data={"sources": [source]}, train=settings)
    stage(workdir, "prepare")
    train = stage(workdir, "train")
    print(train)
    assert train["backend"] == "unsloth" and train["device"] != "cpu" and train["method"] == method
    assert (train["trainable_params"] == train["total_params"]) == (method == "full")
    stage(workdir, "preference")  # method none: passes the trained model on
    evaluation = stage(workdir, "evaluate")
    print({name: evaluation[name] for name in ("tuned", "base")})
    assert evaluation["tuned"]["accuracy"] >= evaluation["base"]["accuracy"] + 30
    if method == "lora":
        assert evaluation["tuned"]["accuracy"] >= 85
    stage(workdir, "merge")
    merged = json.loads(python(workdir, "-c", MERGED_AGREES).splitlines()[-1])
    assert merged["labels"] == ["negative", "neutral", "positive"] and merged["agreement"] >= 0.9, merged
    export = stage(workdir, "export")
    assert export["onnx"]["max_abs_logit_diff"] <= 1e-4


def test_unquoted_numeric_labels_are_class_names_and_meet_the_id_check():
    """`data.labels: [1, 2, 3, 4, 5]` (YAML ints) reads as the names "1".."5", so the collision with the ids
    0..4 is refused with its fix, not a type error."""
    from pydantic import ValidationError

    from slothline.kinds.classifier.params import ClassifierData

    source = [{"path": "a.jsonl", "format": "classification"}]
    with pytest.raises(ValidationError, match="class names and class ids collide: '1' names a class"):
        ClassifierData.model_validate({"sources": source, "labels": [1, 2, 3, 4, 5]})
    assert ClassifierData.model_validate({"sources": source, "labels": [0, 1, 2]}).labels == ["0", "1", "2"]


# --- labels as users' datasets and checkpoints hold them --------------------------------------------------------

def test_classlabel_columns_give_their_class_names(tmp_path):
    """imdb, sst2 and ag_news store labels as ClassLabel numbers: rows read from a datasets dataset carry the names
    (which then reach id2label); -1, no label, stays a number and is refused as such."""
    from datasets import ClassLabel, Dataset, Features, Value

    from slothline.data.sources import _dataset_rows

    features = Features({"text": Value("string"), "label": ClassLabel(names=["World", "Sports"])})
    dataset = Dataset.from_dict({"text": ["a", "b", "c"], "label": [1, 0, -1]}, features=features)
    assert [row["label"] for _, row in _dataset_rows("news", dataset)] == ["Sports", "World", -1]
    assert [row["label"] for _, row in _dataset_rows("news", dataset, class_names=False)] == [1, 0, -1]  # data.labels
    with pytest.raises(RowError, match="label -1 marks a row without a label"):
        classifier.label_name(-1, None)
    assert classifier.label_name(-1, ["-1", "1"]) == "-1"  # a class data.labels names
    assert classifier.look("-1") != classifier.look("1") and classifier.look("01") == classifier.look("1.0")


def test_a_checkpoints_head_keeps_its_classes_outputs(tmp_path):
    """A checkpoint whose head was trained for the data's classes keeps each class on its output (the classes
    take the head's order, not the sorted one); a head of the same size for other classes is named in a note."""
    from slothline.backends import replaced_head

    head = {"id2label": {"0": "weather", "1": "tech", "2": "sports"}, "architectures": ["BertForSequenceClassification"]}
    model = tmp_path / "bert"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "bert", **head}))
    rows = [{"label": label} for label in ("sports", "tech", "weather")]
    assert classifier.class_order(rows, None, classifier.named_head_classes(str(model), None)) == ["weather", "tech", "sports"]
    assert classifier.class_order(rows, ["tech", "sports", "weather"], ["weather", "tech", "sports"])[0] == "tech"
    assert classifier.class_order(rows + [{"label": "art"}], None, ["weather", "tech", "sports"])[0] == "art"
    plain = {"id2label": {"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"}, "architectures": head["architectures"]}
    (model / "config.json").write_text(json.dumps({"model_type": "bert", **plain}))
    assert classifier.named_head_classes(str(model), None) == []
    assert replaced_head(head, ["weather", "tech", "sports"]) is None and replaced_head(plain, ["a", "b", "c"]) is None
    assert "trained for other classes (weather, tech, sports)" in replaced_head(head, ["art", "news", "tech"])
    assert "a new head for the 2 classes replaces it" in replaced_head(head, ["art", "news"])


def test_a_class_name_with_a_pipe_keeps_the_report_table_whole():
    rows = [{"text": "a", "label": "U.S. | World"}, {"text": "b", "label": "Sports"}]
    scores = {"U.S. | World": {"support": 1, "precision": 1.0, "recall": 1.0, "f1": 1.0},
              "Sports": {"support": 1, "precision": 1.0, "recall": 1.0, "f1": 1.0}}
    section = classifier.report_sections(rows, {"tuned": ["U.S. | World", "Sports"]}, {"tuned": {"per_class": scores}})
    row = next(line for line in section.splitlines() if line.startswith("| U.S."))
    assert row.count(" | ") == 4 and "U.S. \\| World" in row


def test_mpnet_and_roberta_relatives_count_positions_after_the_padding_id():
    from slothline.families import family

    assert all(family(name).positions_after_padding and family(name).kind == "classifier"
               for name in ("mpnet", "data2vec-text", "xlm-roberta-xl", "roberta-prelayernorm"))
    assert kinds.positions({"model_type": "mpnet", "max_position_embeddings": 514, "pad_token_id": 1}) == 512


def test_a_text_under_two_classes_is_warned_about_and_counted(workdir, capsys):
    rows = [{"text": f"review {i}", "label": "pos" if i % 2 else "neg"} for i in range(20)]
    rows += [{"text": "Great  phone", "label": "pos"}, {"text": "Great phone", "label": "neg"}]
    workdir.write_params([{"path": workdir.write_jsonl("reviews.jsonl", rows), "format": "classification"}],
                         "classifier", dedupe=False)
    from stages import prepare

    prepare.main()
    assert "data: 1 text(s) appear under more than one class, e.g. 'Great phone' as neg and pos" in capsys.readouterr().out
    assert json.loads((workdir.path / DATA_METRICS).read_text())["texts_with_several_labels"] == 1
