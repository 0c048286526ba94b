"""Encoder sequence classifiers (ModernBERT, BERT): `text` (and an optional `text_pair`) with a class
label, a sequence-classification head trained with transformers' Trainer (LoRA with the head in
`modules_to_save`, or full fine-tuning), batched prediction, and accuracy, F1 and a confusion matrix."""

import inspect
import re

from slothline.errors import RowError, SlothlineError
from slothline.kinds import Evaluation, context_length, with_base
from slothline.kinds.classifier.metrics import classification_metrics
from slothline.kinds.classifier.params import Params, is_number  # noqa: F401 (Params: the protocol's name)

NAME = "classifier"
AUTO_CLASS = "AutoModelForSequenceClassification"
PEFT_TASK_TYPE = "SEQ_CLS"
FORMATS = ("classification",)
EXPORT_FORMATS = ("onnx",)
VAL_METRICS = ("accuracy", "loss", "macro_f1", "micro_f1")  # measured on the val split; accuracy is `auto`
STRATIFY_BY = "label"
PREFERENCE = None  # no preference tuning for these models
REPORT_MISCLASSIFIED = 10


def check(params) -> None:
    """Beyond what the classifier params models refuse: `lora.target_modules: null` where no default names the
    layers to adapt, a tokenizer that cannot pad, and model.max_seq_length above the tokenizer's model_max_length
    (kinds.check refused it above the positions already)."""
    from slothline.models import model_config, resolve_model

    config = model_config(params.model.name, params.model.revision)
    if not params.lora.target_modules and not params.train.full_finetuning:
        check_default_targets(params, config)
    tokenizer = load_processor(resolve_model(params.model.name), params.model.revision)
    context = context_length(config, tokenizer)
    if context and params.model.max_seq_length > context:
        raise SlothlineError(f"model.max_seq_length: {params.model.max_seq_length} is above the {context} tokens "
                             f"{params.model.name}'s tokenizer takes (model_max_length); set it to at most {context}")


def check_default_targets(params, config: dict) -> None:
    """Refuse `lora.target_modules: null` for a model type that neither its family record (families.py) nor PEFT
    gives default layers, listing the model's linear layers (read from its config on the meta device)."""
    import torch
    import transformers
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

    from slothline.backends.lora import linear_layer_names
    from slothline.families import family
    from slothline.models import resolve_model

    model_type = config.get("model_type")
    if family(model_type).lora_targets or model_type in PEFT_DEFAULTS:
        return
    with torch.device("meta"):
        model = getattr(transformers, AUTO_CLASS).from_config(
            transformers.AutoConfig.from_pretrained(resolve_model(params.model.name), revision=params.model.revision))
    raise SlothlineError(f"lora.target_modules: null takes the default layers of the model's family, but there is "
                         f"none for {model_type} models; list the layers to adapt, from its linear layers: "
                         f"{', '.join(linear_layer_names(model))}")


def load_processor(source: str, revision: str | None):
    """The tokenizer; one without a pad token (Llama's) pads with its EOS token, as the generating kinds do."""
    from slothline.models import load_tokenizer

    tokenizer = load_tokenizer(source, revision)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise SlothlineError(f"model.name: the tokenizer of {source!r} has neither a pad token nor an EOS token, "
                                 "and batches of rows of different lengths need one to pad with; set `pad_token` in "
                                 "its tokenizer_config.json")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def to_record(row: dict, source, params, tokenizer) -> tuple[dict, dict]:
    """Canonical `text`, `text_pair` (when the row has one) and `label` (a class name)."""
    if not isinstance(row, dict):
        raise RowError(f"expected an object with 'text' and 'label', got {type(row).__name__}")
    text = row.get("text")
    if not isinstance(text, str) or not text.strip():
        fields = "" if "text" in row else (f" (this row's fields: {', '.join(map(str, row))}); name the text 'text' "
                                           "and a second text, such as GLUE's sentence2, 'text_pair'")
        raise RowError(f"missing or empty field 'text'; every row needs a non-empty string there{fields}")
    record = {"text": text}
    pair = row.get("text_pair")
    if pair not in (None, ""):
        if not isinstance(pair, str):
            raise RowError(f"field 'text_pair' must be a string, got {type(pair).__name__}")
        record["text_pair"] = pair
    record["label"] = label_name(row.get("label"), params.data.labels)
    return record, {}


def label_name(value, labels: list[str] | None) -> str:
    """The class a row's label names: a name, or an id (an integer, or digits in CSV) into `data.labels`;
    without data.labels every value is a name of its own (the id 1 is the class "1"). data.labels whose names
    are also ids of other classes are refused by the params models, so no value is read both ways."""
    if value is None:
        raise RowError("missing field 'label'; every row needs a class name or id there")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise RowError(f"field 'label' must be a class name (string) or a class id (integer), "
                       f"got {type(value).__name__} {value!r}")
    name = str(value).strip()
    if not name:
        raise RowError("field 'label' is empty; every row needs a class name or id there")
    if name == "-1" and (labels is None or name not in labels):
        raise RowError("label -1 marks a row without a label (as GLUE's test splits and datasets' ClassLabel columns "
                       "write it); drop such rows, or, where -1 is a class, list the classes in data.labels (e.g. "
                       "['0', '1', '-1'])")
    if labels is None or name in labels:
        return name
    if is_number(name) and int(name) < len(labels):
        return labels[int(name)]
    raise RowError(f"label {value!r} is neither one of data.labels ({', '.join(labels)}) nor a class id "
                   f"0..{len(labels) - 1}; fix the row, or add the class to data.labels")


def finish_splits(splits: dict[str, list[dict]], tokenizer, params, out_dir) -> dict:
    """Fix the classes (data.labels, else the train split's, sorted), refuse a val or test row whose class
    train lacks, add each row's `label_id`, and return the classes, their counts per split, the texts found under
    more than one class (with a warning) and token lengths."""
    labels = class_order(splits["train"], params.data.labels, named_head_classes(params.model.name, params.model.revision))
    conflicting = conflicting_texts(splits)
    for warning in look_alike_classes(splits, labels) + conflicting_note(conflicting):
        print(warning)
    ids = {label: i for i, label in enumerate(labels)}
    for name, rows in splits.items():
        for row in rows:
            if row["label"] not in ids:
                raise SlothlineError(unseen_label(row, name, splits, params.data))
            row["label_id"] = ids[row["label"]]
    max_length = params.model.max_seq_length
    tokens = {}
    for name, rows in splits.items():
        lengths = [len(encoded["input_ids"]) for encoded in encode(tokenizer, rows, max_length=None)]
        if lengths:
            tokens[name] = {"mean": round(sum(lengths) / len(lengths), 1), "max": max(lengths),
                            "truncated_rows": sum(length > max_length for length in lengths)}
    if any(split["truncated_rows"] for split in tokens.values()):
        print(f"model.max_seq_length {max_length}: rows longer than it are truncated: "
              + ", ".join(f"{name} {split['truncated_rows']}" for name, split in tokens.items()))
    counts = {name: {label: sum(row["label"] == label for row in rows) for label in labels}
              for name, rows in splits.items()}
    return {"labels": labels, "classes": counts, "texts_with_several_labels": len(conflicting), "tokens": tokens}


def conflicting_texts(splits: dict[str, list[dict]]) -> dict[tuple[str, str], set[str]]:
    """The texts (and pairs), as dedupe compares them, that rows of any split give more than one class."""
    from slothline.data.mixing import normalised

    classes = {}
    for rows in splits.values():
        for row in rows:
            classes.setdefault((normalised(row["text"]), normalised(row.get("text_pair") or "")), set()).add(row["label"])
    return {text: labels for text, labels in classes.items() if len(labels) > 1}


def conflicting_note(conflicting: dict[tuple[str, str], set[str]]) -> list[str]:
    if not conflicting:
        return []
    (text, _), labels = next(iter(conflicting.items()))
    return [f"data: {len(conflicting)} text(s) appear under more than one class, e.g. {text[:60]!r} as "
            f"{' and '.join(sorted(labels))}; the model cannot learn both, and such a test row counts as a miss "
            "whatever it predicts: fix the labels, or drop the copies you do not mean"]


def named_head_classes(name: str, revision: str | None) -> list[str]:
    """The classes of the checkpoint's classification head in output order ([] without a head, or with
    transformers' placeholder names LABEL_0, LABEL_1, ...)."""
    from slothline.models import head_classes, model_config, placeholder_classes

    names = head_classes(model_config(name, revision))
    return [] if placeholder_classes(names) else names


def class_order(train_rows: list[dict], fixed: list[str] | None, head: list[str] = ()) -> list[str]:
    """`data.labels` when given (each needs train rows), else the train split's classes: in the order of the
    checkpoint's head where it has these classes (each keeps its output), else sorted (numerically where all are
    numbers)."""
    seen = {row["label"] for row in train_rows}
    if fixed:
        missing = [label for label in fixed if label not in seen]
        if missing:
            raise SlothlineError(f"data.labels: {', '.join(missing)} {'has' if len(missing) == 1 else 'have'} no rows "
                                 "in the train split, so the model could not learn them; add rows, or remove them "
                                 "from data.labels")
        return list(fixed)
    if len(seen) < 2:
        raise SlothlineError(f"data: the train split has {len(seen)} class ({', '.join(seen)}); a classifier needs "
                             "at least two: check the sources' `label` fields")
    if set(head) == seen:
        return list(head)
    return sorted(seen, key=lambda label: (not is_number(label), int(label) if is_number(label) else 0, label))


def look_alike_classes(splits: dict[str, list[dict]], labels: list[str]) -> list[str]:
    """A warning for each group of classes whose names differ only in case or formatting (`Bug`/`bug`,
    `01`/`1`, `not_spam`/`not spam`): each is a class of its own, which is rarely what the data meant."""
    counts = {label: 0 for label in labels}
    for rows in splits.values():
        for row in rows:
            counts[row["label"]] = counts.get(row["label"], 0) + 1
    groups = {}
    for label in counts:
        groups.setdefault(look(label), []).append(label)
    return [f"data: the classes {' and '.join(repr(name) for name in names)} differ only in case or formatting, and "
            f"are trained as {len(names)} separate classes ({' and '.join(str(counts[name]) for name in names)} "
            "rows); if they are one class, write its label one way in every row"
            for names in groups.values() if len(names) > 1]


def look(label: str) -> str:
    """A class name as a reader sees it: case, surrounding spaces, runs of spaces, `_` and `-` ignored, and a
    number as its value (`01`, `1` and `1.0` look alike)."""
    if re.fullmatch(r"\s*[-+]?(\d+(\.\d*)?|\.\d+)\s*", label):  # a number, its sign kept
        return format(float(label), "g")
    return re.sub(r"[\s_-]+", " ", label).strip().casefold()


def unseen_label(row: dict, split_name: str, splits: dict, data) -> str:
    if row["source"] in {source.label for source in data.test_sources}:
        return (f"data.test_sources: the row {row['text'][:60]!r} (source {row['source']}, id {row['id']}) has label "
                f"{row['label']!r}, which no train row has, so the model cannot predict it; add training rows of that "
                "class to data.sources, or drop the row")
    total = sum(r["label"] == row["label"] for rows in splits.values() for r in rows)
    return (f"data: the {split_name} row {row['text'][:60]!r} (source {row['source']}, id {row['id']}) has label "
            f"{row['label']!r}, which no train row has: the class has {total} rows, too few to split with "
            f"data.val_fraction {data.val_fraction} and data.test_fraction {data.test_fraction}; add rows of that "
            "class, lower the fractions, or drop its rows")


def labels(rows: list[dict]) -> list[str]:
    """The classes of the prepared train rows in label_id order (prepare numbered them)."""
    return [label for _, label in sorted({(row["label_id"], row["label"]) for row in rows})]


def forward_inputs(model, inputs) -> dict:
    """The tokenizer's `inputs` that the model's forward names (DistilBERT's takes no token_type_ids); a PEFT
    model's are its base model's."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    taken = inspect.signature(base.forward).parameters
    return {name: value for name, value in inputs.items() if name in taken}


def encode(tokenizer, rows: list[dict], max_length: int | None) -> list[dict]:
    """The model inputs of each row's text (and text_pair), cut to `max_length` tokens (None: not cut)."""
    return [dict(tokenizer(row["text"], row.get("text_pair"), truncation=max_length is not None,
                           max_length=max_length)) for row in rows]


def batch(tokenizer, encoded: list[dict]):
    """Right-padded tensors: pooling (the first token, or the mean over the mask) must see the text itself."""
    tokenizer.padding_side = "right"
    return tokenizer.pad(encoded, return_tensors="pt")


def lora_extras(params, model) -> dict:
    """The classification head is trained whole (PEFT's `modules_to_save`)."""
    return {"modules_to_save": head_modules(model)}


def head_modules(model) -> list[str]:
    """The modules with weights outside the encoder (ModernBERT's `head` and `classifier`, BERT's `classifier`), and
    those holding weights the checkpoint lacks (`new_weights`, from the hf backend's load: BERT's pooler after a
    masked-LM checkpoint), so that the adapter holds every weight the base's files do not."""
    outside = [name for name, child in model.named_children()
               if name != model.base_model_prefix and list(child.parameters())]
    new = {key.rpartition(".")[0] for key in getattr(model, "new_weights", ())}
    return outside + sorted(name for name in new if name and name.split(".")[0] not in outside)


def build_trainer(backend, runtime, params, model, tokenizer, train_rows: list[dict], val_rows: list[dict],
                  output_dir: str, callbacks: list):
    """transformers' Trainer configured from `train.*`, on the rows cut to model.max_seq_length and padded
    per batch, with the val loss every `train.eval_steps`."""
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from slothline.training import training_config

    def dataset(rows):
        encoded = encode(tokenizer, rows, params.model.max_seq_length)
        return Dataset.from_list([{**inputs, "labels": row["label_id"]} for inputs, row in zip(encoded, rows)])

    tokenizer.padding_side = "right"
    return Trainer(
        model=model,
        args=training_config(TrainingArguments, backend, runtime, params, output_dir, evaluate=bool(val_rows),
                             default_metric=VAL_METRICS[0], label_names=["labels"]),
        compute_metrics=val_metrics(model),
        train_dataset=dataset(train_rows),
        eval_dataset=dataset(val_rows) if val_rows else None,
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        callbacks=callbacks,
    )


def loss_coverage(model, tokenizer, params, train_rows: list[dict], val_rows: list[dict]) -> dict:
    """The loss is on each row's class: truncation shortens the text, never what is scored."""
    return {"loss_on": "labels"}


def val_metrics(model):
    """The Trainer's compute_metrics: accuracy and F1 on the val split, beside its loss (what
    train.metric_for_best_model may name)."""
    def compute(prediction) -> dict:
        names = [model.config.id2label[i] for i in range(len(model.config.id2label))]
        actual = [names[i] for i in prediction.label_ids]
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        predicted = [names[i] for i in logits.argmax(-1)]
        return {k: v for k, v in classification_metrics(actual, predicted, names).items() if k != "per_class"}

    return compute


def predict(model, tokenizer, rows: list[dict], params) -> list[str]:
    """The predicted class of each row (batches of `evaluate.batch_size`, longest first), each row whole up
    to the model's context."""
    import torch
    from tqdm.auto import tqdm

    encoded = encode(tokenizer, rows, context_length(model.config, tokenizer))
    order = sorted(range(len(rows)), key=lambda i: -len(encoded[i]["input_ids"]))
    names = model.config.id2label
    predicted = [""] * len(rows)
    model.eval()
    batch_size = params.evaluate.batch_size
    for start in tqdm(range(0, len(order), batch_size), desc="predictions"):
        chunk = order[start : start + batch_size]
        inputs = forward_inputs(model, batch(tokenizer, [encoded[i] for i in chunk]).to(model.device))
        with torch.inference_mode():
            classes = model(**inputs).logits.argmax(-1).tolist()
        for i, k in zip(chunk, classes):
            predicted[i] = names[k]
    return predicted


def evaluate(model, tokenizer, rows: list[dict], params, base, media_dir) -> Evaluation:
    """Accuracy, macro and micro F1, and each class's precision, recall, F1 and support (scores 0-100) of the
    tuned (and base) model's predictions; the tuned model's confusion pairs; per-class tables for the report."""
    labels = [model.config.id2label[i] for i in range(len(model.config.id2label))]
    actual = [row["label"] for row in rows]

    def run(scored_model):
        predicted = predict(scored_model, tokenizer, rows, params)
        return predicted, classification_metrics(actual, predicted, labels)

    results = with_base(model, base, run)
    predicted = {name: classes for name, (classes, _) in results.items()}
    metrics = {name: scores for name, (_, scores) in results.items()}
    samples = [sample(row, {name: predicted[name][i] for name in predicted}) for i, row in enumerate(rows)]
    return Evaluation(metrics=metrics, samples=samples, confusion={name: confusion(rows, classes) for name, classes in predicted.items()},
                      report_sections=report_sections(rows, predicted, metrics), settings={})


def sample(row: dict, predicted: dict[str, str]) -> dict:
    text = f"{row['text']} [SEP] {row['text_pair']}" if "text_pair" in row else row["text"]
    return {"id": row["id"], "prompt": text, "reference": row["label"], **predicted}


def confusion(rows: list[dict], predicted: list[str]) -> list[dict]:
    return [{"actual": row["label"], "predicted": label} for row, label in zip(rows, predicted)]


def report_sections(rows: list[dict], predicted: dict[str, list[str]], results: dict) -> str:
    """Per-class scores of each model, and test rows the tuned model gets wrong."""
    from slothline.report import markdown_cell

    models = [name for name in ("base", "tuned") if name in predicted]
    columns = [f"{name} {score}" for name in models for score in ("precision", "recall", "f1")]
    lines = ["", "## Per class", "", "| class | support | " + " | ".join(columns) + " |",
             "|---" * (len(columns) + 2) + "|"]
    for label, tuned in results["tuned"]["per_class"].items():
        cells = [f"{results[name]['per_class'][label][score]:g}" for name in models
                 for score in ("precision", "recall", "f1")]
        lines.append(f"| {markdown_cell(label)} | {tuned['support']} | " + " | ".join(cells) + " |")
    wrong = [i for i, row in enumerate(rows) if predicted["tuned"][i] != row["label"]]
    lines += ["", f"## Misclassified by the tuned model ({len(wrong)} of {len(rows)}"
              + (f", first {REPORT_MISCLASSIFIED}" if len(wrong) > REPORT_MISCLASSIFIED else "") + ")", ""]
    if wrong:
        lines += ["| text | actual | " + " | ".join(models) + " |", "|---" * (len(models) + 2) + "|"]
        for i in wrong[:REPORT_MISCLASSIFIED]:
            cells = [sample(rows[i], {})["prompt"], rows[i]["label"], *(predicted[name][i] for name in models)]
            lines.append("| " + " | ".join(markdown_cell(c) for c in cells) + " |")
    else:
        lines.append("None.")
    return "\n".join(lines) + "\n"


def export(formats: list[str], model_dir, out_dir, params) -> dict:
    """models/export/onnx/: model.onnx with its tokenizer and config, checked with onnxruntime on the test split."""
    from slothline.artifacts import ONNX_DIR, read_split
    from slothline.kinds.classifier.onnx import check_onnx, write_onnx

    folder = out_dir / ONNX_DIR.name
    write_onnx(model_dir, folder)
    return {"onnx": check_onnx(folder / "model.onnx", model_dir, read_split("test"))}
