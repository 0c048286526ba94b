"""Causal language models (Qwen3, Llama): chat records rendered with the model's chat template,
response-only masks, TRL's SFTTrainer, batched generation, and text metrics plus the loss on the
reference answers."""

import numpy as np

from stages.lib.errors import SlothlineError
from stages.lib.formats import CONVERTERS, to_messages
from stages.lib.generate import generation_settings as evaluation_settings  # noqa: F401 (the protocol's name)
from stages.lib.params import VISION_LORA_FLAGS
from stages.lib.training import sft_config, sft_trainer_class
from stages.lib.templates import answer_cut_off, render, token_lengths, tokenize_for_training, turn_markers

NAME = "causal_lm"
AUTO_CLASS = "AutoModelForCausalLM"
PEFT_TASK_TYPE = "CAUSAL_LM"
DATA_FORMATS = tuple(CONVERTERS)
VAL_METRICS = ("loss",)  # what the trainer measures on the val split (train.metric_for_best_model)
EXPORT_FORMATS = ("gguf",)
STRATIFY_BY = None
INAPPLICABLE_PARAMS = ("data.labels", "data.image_min_pixels", "data.image_max_pixels")


def load_processor(source: str, revision: str | None):
    from stages.lib.models import load_tokenizer

    return load_tokenizer(source, revision)


def to_record(row: dict, source, data, tokenizer) -> tuple[dict, dict]:
    """Canonical `messages`, and the rendered `text`, `prompt` and `reference`."""
    messages = to_messages(row, source.format, data.system_prompt)
    return {"messages": messages}, render(messages, tokenizer, source.template, data.enable_thinking)


def finish_splits(splits: dict[str, list[dict]], tokenizer, params, out_dir) -> dict:
    """Rows whose first answer token lies beyond model.max_seq_length would train on nothing once cut
    to that length: they leave train and val (test keeps them; evaluate scores generations). Returns
    token statistics per split, taken before that drop."""
    max_length = params.model.max_seq_length
    lengths = {name: token_lengths(rows, tokenizer) for name, rows in splits.items()}
    check_answers_fit(lengths["train"], max_length)
    dropped = {}
    for name in ("train", "val"):
        kept = [row for row, (_, start) in zip(splits[name], lengths[name]) if not answer_cut_off(start, max_length)]
        dropped[name], splits[name] = len(splits[name]) - len(kept), kept
    tokens = {}
    for name, split_lengths in lengths.items():
        if not split_lengths:
            continue
        counts = np.array([length for length, _ in split_lengths])
        tokens[name] = {
            "mean": round(float(counts.mean()), 1),
            "p50": int(np.percentile(counts, 50)),
            "p95": int(np.percentile(counts, 95)),
            "max": int(counts.max()),
            "truncated_rows": int((counts > max_length).sum()),
            "no_answer_rows": sum(answer_cut_off(start, max_length) for _, start in split_lengths),
            "rows_dropped_too_long": dropped.get(name, 0),
        }
    if any(split["truncated_rows"] for split in tokens.values()):
        print(length_note(tokens, max_length))
    return {"tokens": tokens}


def check_answers_fit(train_lengths: list[tuple[int, int | None]], max_length: int) -> None:
    """Fail when cutting train rows to max_length tokens would leave an answer token in none of them."""
    if not all(answer_cut_off(start, max_length) for _, start in train_lengths):
        return
    starts = [start for _, start in train_lengths]
    raise SlothlineError(
        f"model.max_seq_length: {max_length} tokens leave no answer token in any of the {len(starts)} train rows "
        f"(their prompts take {min(starts)} to {max(starts)} tokens, whole rows up to "
        f"{max(length for length, _ in train_lengths)}); raise model.max_seq_length to at least {max(starts) + 1}"
    )


def length_note(tokens: dict, max_length: int) -> str:
    """One line on the rows model.max_seq_length cuts: truncated, and without an answer token (dropped or kept)."""
    count = lambda key: sum(split[key] for split in tokens.values())
    of = lambda key, names: ", ".join(f"{name} {tokens[name][key] if name in tokens else 0}" for name in names)
    return (f"model.max_seq_length {max_length}: {count('truncated_rows')} rows are longer and get truncated "
            f"({of('truncated_rows', ('train', 'val', 'test'))}); {count('no_answer_rows')} have no answer token "
            f"within it (dropped: {of('rows_dropped_too_long', ('train', 'val'))}; "
            f"kept for evaluate: {of('no_answer_rows', ('test',))})")


def labels(rows: list[dict]) -> None:
    """No classes: generated text."""
    return None


def lora_kwargs(params, model, backend: str) -> dict:
    scoped = [name for name in VISION_LORA_FLAGS if not getattr(params.lora, name)]
    if scoped:
        raise SlothlineError(f"lora.{scoped[0]}: false only means something for vision models (model.kind: vision); "
                             "a causal LM's LoRA layers are chosen by lora.target_modules alone")
    return {}


def build_trainer(runtime, params, model, tokenizer, train_rows: list[dict], val_rows: list[dict],
                  output_dir: str, callbacks: list):
    """TRL's SFTTrainer configured from `train.*`, on the rendered `text` of the prepared rows, with the
    val loss every `train.eval_steps`.

    Response-only loss (`train.train_on_responses_only`): on hf through the dataset's `assistant_masks`;
    on unsloth through Unsloth's own train_on_responses_only, given the same turn markers.
    """
    config = sft_config(runtime, params, output_dir, evaluate=bool(val_rows))
    markers = turn_markers([r["text"] for r in train_rows]) if params.train.train_on_responses_only else None
    dataset_markers = markers if runtime.backend == "hf" else None
    train_dataset = tokenize_for_training(train_rows, tokenizer, dataset_markers)
    eval_dataset = tokenize_for_training(val_rows, tokenizer, dataset_markers) if val_rows else None
    trainer_class = sft_trainer_class(runtime)
    trainer = trainer_class(
        model=model,
        args=config,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    if runtime.backend == "unsloth" and markers:
        from unsloth.chat_templates import train_on_responses_only

        trainer = train_on_responses_only(trainer, instruction_part=markers[0], response_part=markers[1])
    return trainer


def predict(model, tokenizer, rows: list[dict], settings, desc: str) -> list[str]:
    """Generated answers to the rows' prompts (batched, left-padded, decoded as `evaluate.*` ask)."""
    from stages.lib.generate import decoding, generate

    return generate(model, tokenizer, [r["prompt"] for r in rows], settings.batch_size, settings.max_new_tokens,
                    decoding(settings, model.generation_config), settings.seed, desc=desc)


def score(model, tokenizer, rows: list[dict], answers: list[str], settings) -> dict:
    """Text metrics of the answers against the references, and the teacher-forced loss on the reference
    answers' tokens (on the whole text where no known chat markers tell where answers are), each row
    whole up to the model's context: a metric that means the same whatever training's max_seq_length."""
    from stages.lib.generate import answer_loss
    from stages.lib.metrics import loss_metrics, text_metrics

    texts = [r["text"] for r in rows]
    try:
        markers = turn_markers(texts)
    except SlothlineError:
        markers = None
    dataset = tokenize_for_training(rows, tokenizer, markers)
    context = getattr(model.config, "max_position_embeddings", None) or max(len(ids) for ids in dataset["input_ids"])
    total, count = answer_loss(model, dataset, tokenizer.pad_token_id, settings.batch_size, context)
    return {**text_metrics(answers, [r["reference"] for r in rows]), **loss_metrics(total, count),
            "loss_tokens": count, "loss_on": "answers" if markers else "whole text"}


def sample(row: dict, answers: dict[str, str], media_dir) -> dict:
    question = next(m["content"] for m in reversed(row["messages"]) if m["role"] == "user")
    return {"id": row["id"], "prompt": question, "reference": row["reference"], **answers}


def confusion(rows: list[dict], answers: list[str]) -> list[dict]:
    """No classes, so no confusion plot."""
    return []


def report_sections(rows: list[dict], answers: dict[str, list[str]], results: dict) -> str:
    """Nothing beyond the metrics and samples every report has."""
    return ""
