"""What the two generating kinds (causal LM, vision) share: the answer-masking collator, the token length
statistics prepare writes, and evaluate's flow (generate, score text metrics and the loss on the reference
answers, samples). Chat rendering and the answer mask are in `chat`, generation in `generation`, text
metrics in `metrics`, and the params these kinds add in `params`."""

from collections.abc import Callable

import numpy as np

from slothline.errors import SlothlineError
from slothline.kinds import Evaluation, context_length, with_base
from slothline.kinds._generative.chat import (NO_CHAT_TEMPLATE, TURN_MARKERS, AnswerMask, answer_cut_off, markers_of,
                                             turn_markers)
from slothline.kinds._generative.stops import stop_ids
from slothline.kinds._generative.tokens import encode, encode_batch, encode_rows, literal_spans, tokenizer_of
from slothline.kinds._generative.generation import (answer_loss, ensure_pad_token, generation_settings,
                                                    loss_rows, plan, prompt_lengths, same_batches)
from slothline.kinds._generative.metrics import loss_metrics, text_metrics


class AnswerCollator:
    """A batch of rendered rows through the processor (right padding), with labels: the answer mask of the
    turn `markers` (None: every real token but image tokens), each answer ending at the first of `stop_ids`
    (the model's stop tokens; the tokenizer's EOS when None). `images(row)` gives a row's pictures, for
    multimodal processors. Message text that spells special tokens (the rows' `literals`) is tokenized as text."""

    def __init__(self, processor, markers: tuple[str, str] | None, images: Callable | None = None,
                 stop_ids: list[int] | None = None):
        self.processor, self.images = processor, images
        self.mask = markers and AnswerMask(processor, markers, stop_ids)
        self.image_id = getattr(processor, "image_token_id", None)

    def __call__(self, rows: list[dict]) -> dict:
        pictures = [picture for row in rows for picture in self.images(row)] if self.images else None
        batch = encode_batch(self.processor, [row["text"] for row in rows],
                             [literal_spans(row, "text") for row in rows], pictures, padding_side="right")
        import torch

        labels = batch["input_ids"].clone()
        if self.mask:
            for b, row in enumerate(rows):
                length = int(batch["attention_mask"][b].sum())
                ids, answers = self.mask.labels(row["text"], literal_spans(row, "text"))
                labels[b, :length] = torch.tensor(along_images(answers, ids, labels[b, :length].tolist(), self.image_id))
        elif self.image_id is not None:
            labels[labels == self.image_id] = -100
        labels[batch["attention_mask"] == 0] = -100
        batch["labels"] = labels
        return dict(batch)


def along_images(labels: list[int], ids: list[int], processed: list[int], image_id: int | None) -> list[int]:
    """The `labels` of a text's token `ids` for the processor's ids of it, `processed`, where each image
    placeholder became a run of image tokens (-100 on the run)."""
    out, i = [], 0
    for j, token in enumerate(processed):
        if token == image_id and j and processed[j - 1] == image_id:
            out.append(-100)
            continue
        if i >= len(ids) or ids[i] != token:
            raise SlothlineError(f"the processor's token ids of a text differ from its tokenizer's at token {j} "
                                 "beyond the expansion of image placeholders; the answer mask cannot be placed")
        out.append(-100 if token == image_id else labels[i])
        i += 1
    return out


def check_kv_cache(params) -> None:
    """Refuse a compiled static cache for 4-bit weights (check_params)."""
    if params.evaluate.kv_cache == "static" and params.model.load_in_4bit:
        raise SlothlineError("evaluate.kv_cache: static compiles the decode steps, which transformers does not do for "
                             "4-bit weights (model.load_in_4bit: true); set evaluate.kv_cache: auto or dynamic, or "
                             "model.load_in_4bit: false")


def check_turn_markers(load_processor: Callable, params) -> None:
    """Refuse response-only training where the model's chat template writes turns of no known format, so that no
    answer could be masked (check_params; train would find out after prepare)."""
    from jinja2.exceptions import TemplateError

    from slothline.models import resolve_model

    if (not params.train.train_on_responses_only or not getattr(params.train, "sft", True)  # no SFT: no answer mask
            or any(s.template != "chat" for s in params.data.sources)):
        return
    processor = load_processor(resolve_model(params.model.name), params.model.revision)
    if not processor.chat_template:
        raise SlothlineError(NO_CHAT_TEMPLATE)
    try:
        text = processor.apply_chat_template([{"role": "user", "content": "Hi"},
                                              {"role": "assistant", "content": "Hello"}], tokenize=False)
    except (TypeError, ValueError, TemplateError):  # a template with demands of its own: prepare names the row
        return
    if markers_of(text) is None:
        raise SlothlineError(
            f"train.train_on_responses_only: {params.model.name}'s chat template writes turns of no known format "
            f"(known: {', '.join(TURN_MARKERS)}), so the answers cannot be told from the prompts; set "
            "train.train_on_responses_only: false (the loss then covers whole texts), or `template: alpaca` on "
            "each data source")


def finish_lengths(splits: dict[str, list[dict]], lengths: dict[str, list[tuple[int, int | None]]],
                   max_length: int, keep: Callable[[int, int | None], bool], none_kept: str) -> dict:
    """Token statistics per split from each row's (length, answer start), taken before the train and val rows
    that `keep(length, answer start)` refuses leave (test keeps them: evaluate scores generations). Fails
    with `none_kept` when no train row is kept."""
    dropped = {}
    for name in ("train", "val"):
        kept = [row for row, (length, start) in zip(splits[name], lengths[name]) if keep(length, start)]
        dropped[name], splits[name] = len(splits[name]) - len(kept), kept
    if lengths["train"] and not splits["train"]:
        raise SlothlineError(none_kept)
    if lengths["val"] and not splits["val"]:  # a val loss over no row: train would record none, or fail to pick a best
        raise SlothlineError(f"model.max_seq_length: {max_length} tokens leave no answer token in any of the "
                             f"{len(lengths['val'])} val rows; raise model.max_seq_length, or set data.val_fraction: 0")
    tokens = {}
    for name, split_lengths in lengths.items():
        if split_lengths:
            counts = np.array([length for length, _ in split_lengths])
            tokens[name] = {
                "mean": round(float(counts.mean()), 1), "p50": int(np.percentile(counts, 50)),
                "p95": int(np.percentile(counts, 95)), "max": int(counts.max()),
                "truncated_rows": int((counts > max_length).sum()),
                "no_answer_rows": sum(answer_cut_off(start, max_length) for _, start in split_lengths),
                "rows_dropped_too_long": dropped.get(name, 0),
            }
    return tokens


def loss_coverage(processor, model, params, splits: dict[str, list[dict]], max_length: int | None) -> dict:
    """What train.json's losses are computed on: `loss_on` (the answers, or the whole text), and per split the
    tokens the loss covers within `max_length` (`<split>_loss_tokens`) and those the cut to it leaves out
    (`<split>_loss_tokens_cut`; max_length None: rows are never cut). A loss over fewer of the answers' tokens
    is not the same metric: `dvc metrics diff` shows the change beside the loss."""
    markers = turn_markers([row["text"] for row in splits["train"]]) if params.train.train_on_responses_only else None
    mask = markers and AnswerMask(processor, markers, stop_ids(processor, model.generation_config))
    image_id = getattr(processor, "image_token_id", None)
    coverage = {"loss_on": "answers" if mask else "whole text"}
    for name, rows in splits.items():
        covered = cut = 0
        labelled = mask.rows(rows) if mask else [(ids, [-100, *ids[1:]]) for ids in encode_rows(processor, rows)]
        for _, targets in labelled:  # without a mask, the first token is never predicted
            positions = [i for i, target in enumerate(targets) if target != -100 and target != image_id]
            kept = sum(max_length is None or i < max_length for i in positions)
            covered, cut = covered + kept, cut + len(positions) - kept
        coverage |= {f"{name}_loss_tokens": covered, f"{name}_loss_tokens_cut": cut}
    return coverage


def coverage_note(coverage: dict, max_length: int) -> str | None:
    """A line when model.max_seq_length cuts tokens the losses would cover, else None."""
    if not any(coverage.get(f"{name}_loss_tokens_cut") for name in ("train", "val")):
        return None
    of = lambda name: (f"{name}_loss covers {coverage[f'{name}_loss_tokens']:,} of "
                       f"{coverage[f'{name}_loss_tokens'] + coverage[f'{name}_loss_tokens_cut']:,} tokens")
    splits = [of(name) for name in ("train", "val") if coverage.get(f"{name}_loss_tokens")]
    return (f"note: model.max_seq_length {max_length} cuts rows: {'; '.join(splits)} ({coverage['loss_on']}). Compare "
            "these losses only between runs whose *_loss_tokens match; metrics/eval.json's loss covers whole answers")


def evaluate(answers_of: Callable, model, processor, rows: list[dict], params, base, sample: Callable,
             images: Callable | None = None, more_metrics: Callable | None = None) -> Evaluation:
    """Generated answers of the tuned (and base) model (`answers_of(model, processor, rows, params, plan)`, both
    generating the batches `generation.plan` decides for the first) with text metrics against the references, and
    the loss on the reference answers' tokens (the whole text where no known turn markers tell where answers
    are), each row whole up to the model's context: a metric that means the same whatever training's
    max_seq_length. `sample(row, answers)` is one row of the samples table. Each model's metrics count the
    references longer than evaluate.max_new_tokens (generation stops there, so they cannot score as right),
    with a note suggesting the setting that fits them all. `more_metrics(model)` adds the kind's own."""
    settings = params.evaluate
    ensure_pad_token(tokenizer_of(processor))  # the loss batches pad too, before generation would set it
    try:
        markers = turn_markers([row["text"] for row in rows])
    except SlothlineError:
        markers = None
    stops = stop_ids(processor, model.generation_config)
    collate = AnswerCollator(processor, markers, images, stops)
    context = context_length(model.config)
    references = [row["reference"] for row in rows]
    needed = [answer_tokens(processor, row, stops) for row in rows]
    too_long = sum(count > settings.max_new_tokens for count in needed)
    if too_long:
        print(long_answers_note(too_long, len(rows), settings.max_new_tokens, max(needed)))

    lengths, longest = batch_lengths(model, processor, rows, images)
    past_context = sum(length + settings.max_new_tokens > context for length in lengths) if context else 0
    if past_context:
        print(past_context_note(past_context, len(rows), max(lengths), settings.max_new_tokens, context))

    first_plan = None  # the first pass's: the second generates the same batches on the same KV cache

    def run(scored_model):
        nonlocal first_plan
        # scored before generating: merging the adapter in place to generate and unmerging it after rounds 16-bit
        # weights, so the loss would no longer be the adapter's own
        size = loss_rows(scored_model, settings, longest)
        batches = (collate(rows[i : i + size]) for i in range(0, len(rows), size))
        total, count = answer_loss(scored_model, batches, context)
        scores = {**loss_metrics(total, count), "loss_tokens": count, "loss_on": "answers" if markers else "whole text",
                  "references_longer_than_max_new_tokens": too_long,
                  **(more_metrics(scored_model) if more_metrics else {})}
        how = same_batches(first_plan, scored_model) if first_plan else plan(scored_model, lengths, settings)
        first_plan = first_plan or how
        answers = answers_of(scored_model, processor, rows, params, how)
        return answers, how, {**text_metrics(answers, references), **scores}

    results = with_base(model, base, run)
    answers = {name: answered for name, (answered, _, _) in results.items()}
    samples = [sample(row, {name: answers[name][i] for name in answers}) for i, row in enumerate(rows)]
    tuned_plan = results["tuned"][1]  # what metrics/eval.json records: the batches and cache of both passes
    return Evaluation(metrics={name: scores for name, (_, _, scores) in results.items()}, samples=samples,
                      confusion={}, report_sections="",
                      settings={**generation_settings(model, settings), **tuned_plan.describe()})


def batch_lengths(model, processor, rows: list[dict], images: Callable | None = None) -> tuple[list[int], int]:
    """Each row's prompt tokens, which order and size generation's batches, and the longest row's whole text
    (prompt and reference answer), which sizes the loss batches. On a GPU each row's pictures (`images(row)`)
    count as the processor expands them, read one row at a time: not every test picture held at once."""
    text = lambda field: [len(encode(processor, row[field], literal_spans(row, field))) for row in rows]
    prompts = text("prompt")
    if images and model.device.type == "cuda":  # each picture read once: what it adds counts for the whole text too
        pictured = prompt_lengths(model, processor, [row["prompt"] for row in rows],
                                  [literal_spans(row, "prompt") for row in rows], (images(row) for row in rows))
    else:
        pictured = prompts
    return pictured, max(length + with_pictures - alone for length, with_pictures, alone
                         in zip(text("text"), pictured, prompts))


def answer_tokens(processor, row: dict, stops: list[int]) -> int:
    """The tokens a model generates for the row's reference answer: the rendered text's tokens after the
    prompt, up to the first stop token (a thinking block the prompt leaves to the model counted in); the
    reference's own tokens where the text does not continue the prompt."""
    text, prompt = row["text"], row["prompt"]
    if not text.startswith(prompt):
        return len(tokenizer_of(processor)(row["reference"], add_special_tokens=False, split_special_tokens=True)
                   ["input_ids"])
    continuation = encode(processor, text, literal_spans(row, "text"))[len(encode(processor, prompt,
                                                                                   literal_spans(row, "prompt"))):]
    return next((i for i, token in enumerate(continuation) if token in stops), len(continuation))


def long_answers_note(count: int, rows: int, max_new_tokens: int, longest: int) -> str:
    return (f"note: {count} of {rows} test references are longer than evaluate.max_new_tokens ({max_new_tokens} "
            f"tokens; the longest takes {longest}): generation stops before their end, so they score as wrong "
            f"(metrics: references_longer_than_max_new_tokens); set evaluate.max_new_tokens: {longest} to let "
            "every answer finish")


def past_context_note(count: int, rows: int, longest: int, max_new_tokens: int, context: int) -> str:
    return (f"note: {count} of {rows} test prompts, with evaluate.max_new_tokens ({max_new_tokens}) after them, pass "
            f"the model's context ({context} tokens, max_position_embeddings; the longest prompt takes {longest}): "
            "their answers come from positions the model was not trained for and still count in the metrics; "
            "shorten those test rows or lower evaluate.max_new_tokens")


def question(row: dict) -> str:
    """The text of the row's last user turn (its text parts, for multimodal content)."""
    content = next(m["content"] for m in reversed(row["messages"]) if m["role"] == "user")
    if isinstance(content, list):
        return "\n".join(part["text"] for part in content if part["type"] == "text")
    return content
