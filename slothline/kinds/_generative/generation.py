"""Batched generation (left padding, KV cache) and the teacher-forced loss on answers, for evaluate."""

import torch
from tqdm.auto import tqdm

from slothline.kinds._generative.chat import THINK_TAGS, strip_thinking
from slothline.kinds._generative.stops import stop_ids
from slothline.kinds._generative.tokens import encode_batch, tokenizer_of

KNOBS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def decoding(settings, generation_config) -> dict:
    """The decoding `evaluate.*` asks for, with every knob spelled out (it is recorded in metrics):
    `sampling: params` takes temperature (0: greedy), top_p, top_k (0: off), min_p (0: off) and
    repetition_penalty (1: off) from params; `sampling: model` takes the model's generation_config.json,
    the family's recommended settings (Qwen3's: temperature 0.6, top_p 0.95, top_k 20), ignoring those
    params (see `ignored_knobs`)."""
    if settings.sampling == "params":
        return settings.decoding_params()
    chosen = {k: getattr(generation_config, k, None) for k in KNOBS}
    defaults = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0}
    return {"do_sample": bool(generation_config.do_sample), **{k: defaults[k] if v is None else v for k, v in chosen.items()}}


def generation_settings(model, settings) -> dict:
    """What decides generated answers, for metrics/eval.json (so `dvc metrics diff` shows it)."""
    if ignored_knobs(settings):
        print(f"note: {', '.join(ignored_knobs(settings))} ignored with evaluate.sampling: model")
    return {"max_new_tokens": settings.max_new_tokens, "seed": settings.seed, "sampling": settings.sampling,
            **decoding(settings, model.generation_config)}


def ignored_knobs(settings) -> list[str]:
    """The decoding params set away from their defaults that `sampling: model` ignores."""
    if settings.sampling == "params":
        return []
    return [f"evaluate.{k}" for k in KNOBS if getattr(settings, k) != type(settings).model_fields[k].default]


def generate_kwargs(chosen: dict) -> dict:
    """model.generate's arguments for a `decoding()` result; sampling knobs are unset for greedy decoding."""
    if not chosen["do_sample"]:
        return {"do_sample": False, "repetition_penalty": chosen["repetition_penalty"],
                **{k: None for k in ("temperature", "top_p", "top_k", "min_p")}}
    return {**chosen, "min_p": chosen["min_p"] or None}


def generate(model, processor, prompts: list[str], batch_size: int, max_new_tokens: int, chosen: dict | None = None,
             seed: int = 0, desc: str = "generate", images: list[list] | None = None,
             literals: list | None = None) -> list[str]:
    """Answers to `prompts` (rendered, generation prompt included), decoded as `chosen` (see `decoding`;
    greedy when None), sampling from `seed`, stopping at any of the model's stop tokens (`stops.stop_ids`).
    `processor` is a tokenizer, or a multimodal processor given each prompt's `images`; `literals` are each
    prompt's spans of message text spelling special tokens (tokenized as text, see `tokens.encode`). Prompts
    are batched longest first to waste little padding; answers come back in prompt order, without special
    tokens and without a leading <think> block (one the prompt opens included)."""
    from transformers import set_seed

    set_seed(seed)
    tokenizer = tokenizer_of(processor)
    ensure_pad_token(tokenizer)
    tokenizer.padding_side = "left"
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    answers = [""] * len(prompts)
    options = generate_kwargs(chosen or {"do_sample": False, "repetition_penalty": 1.0})
    stops = stop_ids(processor, model.generation_config)
    for start in tqdm(range(0, len(order), batch_size), desc=desc):
        batch = order[start : start + batch_size]
        pictures = None if images is None else [picture for i in batch for picture in images[i]]
        encoded = encode_batch(processor, [prompts[i] for i in batch], literals and [literals[i] for i in batch],
                               pictures, padding_side="left")
        encoded = {name: value.to(model.device) if torch.is_tensor(value) else value for name, value in encoded.items()}
        with torch.inference_mode():
            output = model.generate(**encoded, max_new_tokens=max_new_tokens, use_cache=True,
                                    pad_token_id=tokenizer.pad_token_id, eos_token_id=stops, **options)
        new_tokens = [until_stop(row, stops) for row in output[:, encoded["input_ids"].shape[1] :].tolist()]
        for i, text in zip(batch, tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
            answers[i] = strip_thinking(THINK_TAGS[0] + text if opens_thinking(prompts[i], text) else text)
    return answers


def until_stop(ids: list[int], stops: list[int]) -> list[int]:
    """The generated ids before the first stop token (and the padding after it)."""
    return next((ids[:i] for i, token in enumerate(ids) if token in stops), ids)


def opens_thinking(prompt: str, answer: str) -> bool:
    """Whether the generation prompt ends inside an opened <think> block that `answer` closes (templates of
    reasoning models that start the answer's thinking themselves)."""
    return prompt.rstrip().endswith(THINK_TAGS[0]) and THINK_TAGS[1] in answer


def answer_loss(model, batches, max_length: int | None = None) -> tuple[float, int]:
    """Summed cross-entropy and count of the labelled tokens over `batches` (model inputs with `labels`),
    each row cut to `max_length` tokens (None: whole)."""
    total, count = 0.0, 0
    for batch in batches:
        if max_length:
            batch = {name: value[:, :max_length] if name in ("input_ids", "attention_mask", "labels") else value
                     for name, value in batch.items()}
        labels = batch.pop("labels")
        batch_total, batch_count = summed_loss(model, batch, labels)
        total, count = total + batch_total, count + batch_count
    return total, count


def summed_loss(model, inputs: dict, labels) -> tuple[float, int]:
    """Summed next-token cross-entropy over the labelled (not -100) tokens of one batch, and their count."""
    with torch.inference_mode():
        logits = model(**{name: value.to(model.device) for name, value in inputs.items()}, use_cache=False).logits.float()
    losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1).to(model.device),
        ignore_index=-100, reduction="sum",
    )
    return losses.item(), int((labels[:, 1:] != -100).sum())


def ensure_pad_token(tokenizer) -> None:
    """Models without a pad token (Llama-style) pad with EOS; attention masks keep it out of the answers."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
