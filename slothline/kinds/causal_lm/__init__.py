"""Causal language models (Qwen3, Llama, Gemma): chat records rendered with the model's chat template, TRL's
SFTTrainer with response-only loss, preference tuning (DPO, ORPO, KTO: `preference`), batched generation, text
metrics, the loss on the reference answers and preference accuracy, and GGUF export."""

from slothline.artifacts import PREFERENCE_SPLITS_DIR, read_split
from slothline.data.formats import CONVERTERS, to_messages
from slothline.errors import SlothlineError
from slothline.export import check_gguf
from slothline.kinds import _generative
from slothline.kinds._generative.chat import (AnswerMask, adopt_alpaca_template, answer_cut_off, render, token_lengths,
                                             turn_markers)
from slothline.kinds._generative.stops import check_turn_end, model_stop_tokens, stop_ids
from slothline.kinds._generative.tokens import encode_rows, literal_spans
from slothline.kinds.causal_lm import preference as PREFERENCE  # noqa: N812 (the protocol's name)
from slothline.kinds.causal_lm.params import Params  # noqa: F401 (the protocol's name)

NAME = "causal_lm"
AUTO_CLASS = "AutoModelForCausalLM"
PEFT_TASK_TYPE = "CAUSAL_LM"
FORMATS = tuple(CONVERTERS)
EXPORT_FORMATS = ("gguf",)
VAL_METRICS = ("loss",)
STRATIFY_BY = None


def check(params) -> None:
    """What the sources' templates and the model's chat template allow, preference tuning, what GGUF export can
    write and the KV cache."""
    templates = {source.template for source in params.data.sources}
    if len(templates) > 1 and params.train.train_on_responses_only:
        raise SlothlineError("data.sources: chat and alpaca templates mixed, but train.train_on_responses_only masks "
                             "every row by one pair of turn markers; give every source the same template, or set "
                             "train.train_on_responses_only: false")
    if unlike := {source.template for source in params.data.test_sources} - templates:
        raise SlothlineError(f"data.test_sources: template {', '.join(sorted(unlike))}, which no source of data.sources "
                             "uses: the model would be scored on prompts of a form it was not trained on; give the "
                             "test sources the template of the training sources")
    alpaca = [where for where, source in [*params.data.located_sources(),
                                          *((f"preference.sources[{i}]", s) for i, s in enumerate(params.preference.sources))]
              if source.template == "alpaca"]
    if alpaca and params.data.system_prompt:
        raise SlothlineError(f"data.system_prompt: the alpaca template has no place for a system prompt "
                             f"({', '.join(alpaca)} use template: alpaca); remove data.system_prompt, or use "
                             "template: chat")
    PREFERENCE.check(params)
    check_gguf(params)
    _generative.check_kv_cache(params)
    _generative.check_turn_markers(load_processor, params)


def load_processor(source: str, revision: str | None):
    from slothline.models import load_tokenizer

    return load_tokenizer(source, revision)


def to_record(row: dict, source, params, tokenizer) -> tuple[dict, dict]:
    """Canonical `messages`, and the rendered `text`, `prompt` and `reference` (and `literals`, where message
    text spells special tokens); no EOS is appended to a turn that ends with one of the model's stop tokens."""
    messages = to_messages(row, source.format, params.data.system_prompt)
    stops = model_stop_tokens(tokenizer, params.model.name, params.model.revision)
    return {"messages": messages}, render(messages, tokenizer, source.template, params.data.enable_thinking, stops)


def finish_splits(splits: dict[str, list[dict]], tokenizer, params, out_dir) -> dict:
    """Rows whose first answer token lies beyond model.max_seq_length would train on nothing once cut to that
    length: they leave train and val. Returns token statistics per split, taken before that drop. A chat
    template whose turn end the tokenizer has no token for is refused."""
    if any(source.template == "chat" for source in params.data.sources):
        check_turn_end(tokenizer)
    max_length = params.model.max_seq_length
    lengths = {name: token_lengths(rows, tokenizer) for name, rows in splits.items()}
    keep = lambda length, start: not answer_cut_off(start, max_length)
    starts = [start or 0 for _, start in lengths["train"]]
    none_kept = (f"model.max_seq_length: {max_length} tokens leave no answer token in any of the {len(starts)} train "
                 f"rows (their prompts take {min(starts, default=0)} to {max(starts, default=0)} tokens, whole rows up "
                 f"to {max((length for length, _ in lengths['train']), default=0)}); raise model.max_seq_length to at "
                 f"least {max(starts, default=0) + 1}")
    tokens = _generative.finish_lengths(splits, lengths, max_length, keep, none_kept)
    if any(split["truncated_rows"] for split in tokens.values()):
        print(length_note(tokens, max_length))
    return {"tokens": tokens}


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


def lora_extras(params, model) -> dict:
    return {}


def build_trainer(backend, runtime, params, model, tokenizer, train_rows: list[dict], val_rows: list[dict],
                  output_dir: str, callbacks: list):
    """TRL's SFTTrainer configured from `train.*`, on the token ids of the prepared rows' `text`, with the val loss
    every `train.eval_steps`; response-only loss (`train.train_on_responses_only`) by the answer mask, which both
    backends' trainers turn into labels."""
    from slothline.training import sft_config, sft_trainer_class

    markers = turn_markers([r["text"] for r in train_rows]) if params.train.train_on_responses_only else None
    args = sft_config(backend, runtime, params, output_dir, bool(val_rows), VAL_METRICS[0], params.train.packing)
    adopt_alpaca_template(tokenizer, train_rows)  # saved with the model: merge and export prompt as it trained
    stops = stop_ids(tokenizer, model.generation_config)
    return sft_trainer_class(runtime)(
        model=model,
        args=args,
        train_dataset=tokenized(train_rows, tokenizer, markers, stops, params.model.max_seq_length),
        eval_dataset=tokenized(val_rows, tokenizer, markers, stops, params.model.max_seq_length) if val_rows else None,
        processing_class=tokenizer,
        callbacks=callbacks,
    )


def loss_coverage(model, tokenizer, params, train_rows: list[dict], val_rows: list[dict]) -> dict:
    """The tokens the losses cover, and those model.max_seq_length cuts off (rows are truncated to it)."""
    max_length = params.model.max_seq_length
    coverage = _generative.loss_coverage(tokenizer, model, params, {"train": train_rows, "val": val_rows}, max_length)
    if note := _generative.coverage_note(coverage, max_length):
        print(note)
    return coverage


def tokenized(rows: list[dict], tokenizer, markers: tuple[str, str] | None, stop_ids: list[int] | None = None,
              max_length: int | None = None):
    """A `datasets.Dataset` of `input_ids` cut to `max_length`, plus `assistant_masks` (the answer mask, each
    answer ending at the first of `stop_ids`) when `markers` are given: TRL's SFTTrainer and Unsloth's build the
    labels from them. The rendered text already holds its special tokens and EOS; message text that spells
    special tokens (the rows' `literals`) is tokenized as text."""
    from datasets import Dataset

    if not markers:
        return Dataset.from_dict({"input_ids": [ids[:max_length] for ids in encode_rows(tokenizer, rows)]})
    labelled = AnswerMask(tokenizer, markers, stop_ids).rows(rows)
    return Dataset.from_dict({
        "input_ids": [ids[:max_length] for ids, _ in labelled],
        "assistant_masks": [[int(label != -100) for label in labels][:max_length] for _, labels in labelled],
    })


def predict(model, tokenizer, rows: list[dict], params) -> list[str]:
    return answers(model, tokenizer, rows, params)


def answers(model, tokenizer, rows: list[dict], params, how=None) -> list[str]:
    """Generated answers to the rows' prompts (batched, left-padded, decoded as `evaluate.*` ask), as the
    generation plan `how` says (`generation.plan` decides when None)."""
    from slothline.kinds._generative.generation import decoding, generate

    settings = params.evaluate
    return generate(model, tokenizer, [r["prompt"] for r in rows], settings, decoding(settings, model.generation_config),
                    desc="answers", literals=[literal_spans(r, "prompt") for r in rows], how=how)


def evaluate(model, tokenizer, rows: list[dict], params, base, media_dir):
    """Generation and loss metrics on the test split; preference accuracy and margin on the preference test
    split, where there is one."""
    sample = lambda row, answers: {"id": row["id"], "prompt": _generative.question(row), "reference": row["reference"],
                                   **answers}
    pairs = (read_split(f"{PREFERENCE_SPLITS_DIR.name}/test")[: params.evaluate.max_samples]
             if (PREFERENCE_SPLITS_DIR / "test.jsonl").is_file() else [])
    scored = (lambda model: PREFERENCE.preference_metrics(model, tokenizer, pairs, params.evaluate)) if pairs else None
    return _generative.evaluate(answers, model, tokenizer, rows, params, base, sample, more_metrics=scored)


def export(formats: list[str], model_dir, out_dir, params) -> dict:
    from slothline.export.gguf import export_gguf

    return export_gguf(model_dir, out_dir, params.export.gguf_quantization, params.data.enable_thinking)
