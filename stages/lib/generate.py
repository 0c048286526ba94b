"""Batched generation (left padding, KV cache) and teacher-forced loss for evaluate."""

import torch
from tqdm.auto import tqdm

from stages.lib.templates import strip_thinking


def generate(model, processor, prompts: list[str], batch_size: int, max_new_tokens: int,
             temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, desc: str = "generate",
             images: list[list] | None = None) -> list[str]:
    """Answers to `prompts` (rendered, generation prompt included), greedy unless temperature > 0,
    when sampling starts from `seed`. `processor` is a tokenizer, or a multimodal processor given each
    prompt's `images`. Prompts are batched longest first to waste little padding; answers come back in
    prompt order, without special tokens and without a leading <think> block."""
    from transformers import set_seed

    set_seed(seed)
    tokenizer = getattr(processor, "tokenizer", processor)
    ensure_pad_token(tokenizer)
    tokenizer.padding_side = "left"
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    answers = [""] * len(prompts)
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
    for start in tqdm(range(0, len(order), batch_size), desc=desc):
        batch = order[start : start + batch_size]
        texts = [prompts[i] for i in batch]
        if images is None:
            encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        else:
            pictures = [picture for i in batch for picture in images[i]]  # in the order of the texts' image tokens
            encoded = processor(text=texts, images=pictures or None, return_tensors="pt", padding=True,
                                add_special_tokens=False)
        encoded = encoded.to(model.device)
        with torch.inference_mode():
            output = model.generate(**encoded, max_new_tokens=max_new_tokens, use_cache=True,
                                    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                    **sampling)
        new_tokens = output[:, encoded["input_ids"].shape[1] :]
        for i, text in zip(batch, tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
            answers[i] = strip_thinking(text)
    return answers


def answer_loss(model, dataset, pad_token_id: int, batch_size: int, max_length: int) -> tuple[float, int]:
    """Summed cross-entropy and count of the labelled tokens (`assistant_masks`, else all) of `dataset`,
    each row cut to `max_length` tokens as in training."""
    total, count = 0.0, 0
    for start in range(0, len(dataset), batch_size):
        rows = {name: [values[:max_length] for values in column]
                for name, column in dataset[start : start + batch_size].items()}
        width = max(len(ids) for ids in rows["input_ids"])
        masks = rows.get("assistant_masks") or [[1] * len(ids) for ids in rows["input_ids"]]
        input_ids = torch.tensor([ids + [pad_token_id] * (width - len(ids)) for ids in rows["input_ids"]])
        attention = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in rows["input_ids"]])
        labels = torch.tensor([[t if m else -100 for t, m in zip(ids, mask)] + [-100] * (width - len(ids))
                               for ids, mask in zip(rows["input_ids"], masks)])
        batch_total, batch_count = summed_loss(model, {"input_ids": input_ids, "attention_mask": attention}, labels)
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
