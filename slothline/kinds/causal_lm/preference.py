"""Preference tuning of causal LMs (the preference stage, after or instead of SFT): the methods as data, the
preference records prepare renders with the model's chat template, TRL's DPO, ORPO and KTO trainers (Unsloth's
patched ones on the unsloth backend) configured from `preference.*`, and the preference metrics evaluate
scores: how often, and by how many nats, a model gives the chosen answer a higher log-probability than the
rejected one."""

import importlib
import random
from dataclasses import dataclass

from slothline.data.preference_formats import CONVERTERS
from slothline.errors import RowError, SlothlineError
from slothline.kinds._generative.chat import adopt_alpaca_template, render
from slothline.kinds._generative.tokens import LITERALS, adds_bos, encode
from slothline.kinds._generative.stops import model_stop_tokens

NAME = "causal_lm preference"  # how read_sources names this reader in its messages
FORMATS = tuple(CONVERTERS)


@dataclass(frozen=True)
class Method:
    """A preference method: where TRL keeps its trainer and config, the loss types it offers (the first is
    `auto`'s), the rows it trains on (`paired`: chosen and rejected; `unpaired`: labelled answers, to which
    paired rows are split), and whether it compares against a reference model (the model it starts from)."""

    module: str
    trainer: str
    config: str
    loss_types: tuple[str, ...]
    rows: str
    reference: bool


DPO_LOSSES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
METHODS = {
    "dpo": Method("trl", "DPOTrainer", "DPOConfig", DPO_LOSSES, "paired", reference=True),
    "orpo": Method("trl.experimental.orpo", "ORPOTrainer", "ORPOConfig", (), "paired", reference=False),
    "kto": Method("trl", "KTOTrainer", "KTOConfig", ("kto", "apo_zero_unpaired"), "unpaired", reference=True),
}


def check(params) -> None:
    """What the preference stage would refuse (check_params): a loss type the method lacks, paired methods on
    unpaired rows, KTO's batch of one, preference tuning without data or of a fully fine-tuned model."""
    settings = params.preference
    if settings.method == "none":
        if not params.train.sft:
            raise SlothlineError("train.sft: false and preference.method: none train nothing; set train.sft: true, "
                                 "or a preference.method (dpo, orpo, kto)")
        return
    method = METHODS[settings.method]
    if not settings.sources:
        raise SlothlineError(f"preference.method: {settings.method} needs preference data; list it in "
                             "preference.sources (format: preference, or kto)")
    if settings.loss_type != "auto" and settings.loss_type not in method.loss_types:
        offered = f"use one of {', '.join(method.loss_types)}, or auto" if method.loss_types else "set auto"
        raise SlothlineError(f"preference.loss_type: {settings.method} has no {settings.loss_type!r} loss; {offered}")
    unpaired = [f"preference.sources[{i}]" for i, s in enumerate(settings.sources) if s.format == "kto"]
    if unpaired and method.rows == "paired":
        raise SlothlineError(f"preference.method: {settings.method} trains on chosen/rejected pairs, but "
                             f"{', '.join(unpaired)} hold unpaired kto rows; use preference.method: kto, or paired data")
    if settings.method == "kto" and settings.per_device_batch_size < 2:
        raise SlothlineError("preference.per_device_batch_size: KTO estimates its KL term from the other rows of a "
                             "batch, so it needs at least 2 rows per batch; set it to 2 or more")
    if params.train.full_finetuning:
        raise SlothlineError("train.full_finetuning: preference tuning trains a LoRA adapter (on the SFT adapter, or a "
                             "new one); set train.full_finetuning: false")


def to_record(row: dict, source, params, tokenizer) -> tuple[dict, dict]:
    """Canonical {messages, chosen, rejected} (or {messages, completion, label}), and the rendered `prompt`
    (the chat template's prompt with its generation prompt) and each answer's rendered text after it
    (`chosen_text`, `rejected_text` or `completion_text`: the answer through its end-of-turn token)."""
    canonical = CONVERTERS[source.format](row)
    system_prompt = params.data.system_prompt
    if system_prompt and canonical["messages"][0]["role"] != "system":
        canonical["messages"].insert(0, {"role": "system", "content": system_prompt})
    stops = model_stop_tokens(tokenizer, params.model.name, params.model.revision)
    rendered = {}
    for field in ("chosen", "rejected", "completion"):
        if field in canonical:
            conversation = [*canonical["messages"], {"role": "assistant", "content": canonical[field]}]
            text = render(conversation, tokenizer, source.template, params.data.enable_thinking, stops)
            if LITERALS in text:
                raise RowError("the text spells one of the model's special tokens; TRL's preference trainers would "
                               "read it as that token, so such rows are refused in preference data")
            if not text["text"].startswith(text["prompt"]):
                raise RowError("the chat template renders the prompt differently when an answer follows it, so the "
                               "answer's tokens cannot be told apart; use a template that renders the prompt alike")
            rendered["prompt"] = text["prompt"]
            rendered[f"{field}_text"] = text["text"][len(text["prompt"]):].rstrip()
    return canonical, rendered


def grouped(by_source: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Each source's records as the items prepare mixes and splits: unpaired answers to one prompt together,
    so that they land in one split (evaluate compares them within their prompt); paired rows one by one."""
    items = {}
    for name, records in by_source.items():
        groups = {}
        for record in records:
            groups.setdefault(record["prompt"] if "completion_text" in record else record["id"], []).append(record)
        items[name] = [{"rows": rows} for rows in groups.values()]
    return items


def ungrouped(splits: dict[str, list[dict]]) -> dict[str, list[dict]]:
    return {name: [row for item in items for row in item["rows"]] for name, items in splits.items()}


def answers_of(row: dict) -> list[str]:
    return [row[key] for key in ("chosen_text", "rejected_text", "completion_text") if key in row]


def finish_splits(splits: dict[str, list[dict]], tokenizer, params) -> dict:
    """Token statistics per split (prompt plus its longest answer); train and val rows whose prompt alone fills
    model.max_seq_length (no answer token would be trained) leave those splits."""
    import numpy as np

    max_length, tokens = params.model.max_seq_length, {}
    for name, rows in splits.items():
        if not rows:
            continue
        prompts = [len(encode(tokenizer, row["prompt"])) for row in rows]
        lengths = np.array([length + max(len(encode(tokenizer, answer)) for answer in answers_of(row))
                            for length, row in zip(prompts, rows)])
        kept = [row for row, length in zip(rows, prompts) if length < max_length] if name != "test" else rows
        tokens[name] = {"mean": round(float(lengths.mean()), 1), "p95": int(np.percentile(lengths, 95)),
                        "max": int(lengths.max()), "truncated_rows": int((lengths > max_length).sum()),
                        "rows_dropped_too_long": len(rows) - len(kept)}
        splits[name] = kept
    if splits["train"] == [] and tokens.get("train", {}).get("rows_dropped_too_long"):
        raise SlothlineError(f"model.max_seq_length: {max_length} tokens leave no answer token in any preference "
                             "train row; raise model.max_seq_length")
    return {"tokens": tokens}


def trainer_rows(rows: list[dict], method: Method, tokenizer, seed: int = 0) -> dict[str, list]:
    """The columns TRL's trainer reads: text prompts and answers (its tokenizer adds the BOS the template wrote,
    which is taken off here); for unpaired methods, paired rows split in two labelled answers, every answer
    shuffled by `seed` (so that no answer's KL neighbour is the other answer to its own prompt)."""
    bos = tokenizer.bos_token if adds_bos(tokenizer) else ""
    prompt = lambda row: row["prompt"].removeprefix(bos)
    if method.rows == "paired":
        return {"prompt": [prompt(r) for r in rows], "chosen": [r["chosen_text"] for r in rows],
                "rejected": [r["rejected_text"] for r in rows]}
    answers = [(prompt(row), completion, label) for row in rows for completion, label in (
        [(row["chosen_text"], True), (row["rejected_text"], False)] if "chosen_text" in row
        else [(row["completion_text"], row["label"])])]
    random.Random(seed).shuffle(answers)  # KTO reads rows in order and pairs each with its neighbour for its KL term
    return {"prompt": [a[0] for a in answers], "completion": [a[1] for a in answers], "label": [a[2] for a in answers]}


def build_trainer(backend, runtime, params, model, tokenizer, train_rows, val_rows, output_dir: str, callbacks):
    """TRL's trainer of `preference.method` (Unsloth's patched one once unsloth is imported) on the SFT model
    (its adapter trains on; its copy, frozen, is the reference) or a new adapter, with the run's settings
    from `preference.*` and the shared ones (backend, optimizer, precision, seed) from `train.*`."""
    from datasets import Dataset

    from slothline.training import training_config

    settings = params.preference
    method = METHODS[settings.method]
    module = importlib.import_module(method.module)
    extra = {"beta": settings.beta, "max_length": params.model.max_seq_length, "remove_unused_columns": False}
    if method.loss_types:
        extra["loss_type"] = method.loss_types[0] if settings.loss_type == "auto" else settings.loss_type
    if runtime.device != "cuda":
        use_torch_log_probs()
    args = training_config(getattr(module, method.config), backend, runtime, schedule(params), output_dir,
                           bool(val_rows), "loss", **extra)
    dataset = lambda rows: Dataset.from_dict(trainer_rows(rows, method, tokenizer, params.train.seed))
    adopt_alpaca_template(tokenizer, train_rows)  # saved with the model: merge and export prompt as it trained
    return getattr(module, method.trainer)(model=model, args=args, train_dataset=dataset(train_rows),
                                           eval_dataset=dataset(val_rows) if val_rows else None,
                                           processing_class=tokenizer, callbacks=callbacks)


def resume_point(directory, fingerprint: str, processes: int) -> str | None:
    """The checkpoint to resume from (checkpoints.resume_point), without its ref/ folder: TRL's frozen copy of
    the starting adapter, which it rebuilds from models/sft anyway. transformers resumes an adapter folder that
    has sub-folders by loading those alone, which would restart the trained adapter from the SFT weights."""
    import shutil
    from pathlib import Path

    from slothline import checkpoints

    checkpoint = checkpoints.resume_point(directory, fingerprint, processes)
    if checkpoint:
        shutil.rmtree(Path(checkpoint) / "ref", ignore_errors=True)
    return checkpoint


def schedule(params):
    """The params with `train.*`'s schedule (epochs, steps, batch, learning rate, logging and checkpoints)
    replaced by the preference stage's own."""
    settings = params.preference
    keys = ("epochs", "max_steps", "per_device_batch_size", "gradient_accumulation_steps", "learning_rate",
            "warmup_steps", "logging_steps", "eval_steps", "save_steps")
    train = params.train.model_copy(update={key: getattr(settings, key) for key in keys}
                                    | {"load_best_model_at_end": False, "early_stopping_patience": None})
    return params.model_copy(update={"train": train})


def use_torch_log_probs() -> None:
    """TRL 1.15's DPO and KTO score answers through a Triton kernel (`add_fused_lm_head`), which needs a GPU;
    on the CPU the same per-token log-probabilities come from torch (a CPU run is small: the logits fit)."""
    import torch
    import trl.trainer.utils

    class TorchLogProbs:
        @staticmethod
        def apply(hidden, weight, bias, targets, temperature, chunk_size, softcap=None, logit_scale=1.0,
                  outputs=("log_probs",)):
            logits = torch.nn.functional.linear(hidden, weight, bias) * logit_scale
            if softcap:
                logits = softcap * torch.tanh(logits / softcap)
            log_softmax = (logits.float() / temperature).log_softmax(-1)
            log_probs = log_softmax.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            with torch.no_grad():
                entropy = -(log_softmax.exp() * log_softmax).sum(-1) if "entropy" in outputs else None
                squares = torch.logsumexp(2 * log_softmax, -1) if "log_sum_sq_probs" in outputs else None
                mean = logits.float().mean(-1) if "mean_logits" in outputs else None
                top1 = logits.argmax(-1) == targets if "is_top1" in outputs else None
            return log_probs, entropy, squares, mean, top1

    trl.trainer.utils._ChunkedLogProbFunction = TorchLogProbs


def scored_pairs(rows: list[dict]) -> list[tuple[dict, str, str]]:
    """(row, preferred answer, other answer) of every comparison the rows allow: each paired row once; unpaired
    rows, each desirable answer against each undesirable one to the same prompt."""
    pairs = [(row, row["chosen_text"], row["rejected_text"]) for row in rows if "chosen_text" in row]
    by_prompt = {}
    for row in rows:
        if "completion_text" in row:
            by_prompt.setdefault(row["prompt"], {True: [], False: []})[row["label"]].append(row)
    for answers in by_prompt.values():
        pairs += [(good, good["completion_text"], bad["completion_text"])
                  for good in answers[True] for bad in answers[False]]
    return pairs


def preference_metrics(model, tokenizer, rows: list[dict], settings) -> dict:
    """`preference_accuracy` (the share of pairs whose preferred answer gets the higher log-probability, summed
    over its tokens after the prompt, as DPO scores them) and `preference_margin` (the mean difference, in nats)
    over the test split's pairs, `evaluate.batch_size` sequences at a time (auto: as many as fit, their
    logits within generation.LOSS_LOGITS)."""
    from slothline.kinds import context_length
    from slothline.kinds._generative.generation import loss_rows

    pairs = scored_pairs(rows)
    if not pairs:
        print(f"note: the {len(rows)} preference test rows hold no pair to compare (unpaired rows need a desirable "
              "and an undesirable answer to the same prompt), so no preference metrics are scored")
        return {"preference_pairs": 0}
    lengths = [max(len(encode(tokenizer, row["prompt"] + answer)) for answer in answers) for row, *answers in pairs]
    context = context_length(model.config)
    past_context = sum(length > context for length in lengths) if context else 0
    if past_context:
        print(f"note: {past_context} of {len(pairs)} preference test pairs pass the model's context ({context} tokens, "
              f"max_position_embeddings; the longest takes {max(lengths)}): their answers are scored at positions the "
              "model was not trained for and still count in preference_accuracy; shorten those test rows")
    size = max(1, loss_rows(model, settings, max(lengths)) // 2)  # two sequences a pair, their logits bounded
    margins = []
    for start in range(0, len(pairs), size):
        batch = pairs[start : start + size]
        prompts = [row["prompt"] for row, _, _ in batch]
        scores = answer_log_probs(model, tokenizer, prompts * 2, [a for _, a, _ in batch] + [b for _, _, b in batch])
        margins += [scores[i] - scores[i + len(batch)] for i in range(len(batch))]
    return {"preference_accuracy": round(sum(m > 0 for m in margins) / len(margins), 4),
            "preference_margin": round(sum(margins) / len(margins), 4), "preference_pairs": len(margins)}


def answer_log_probs(model, tokenizer, prompts: list[str], answers: list[str]) -> list[float]:
    """log p(answer | prompt), summed over the answer's tokens, for each pair: one left-padded batch whose logits
    are computed for the answers' positions alone (not the prompts': a vocabulary-wide row per token)."""
    import torch

    prompt_ids = [encode(tokenizer, prompt) for prompt in prompts]
    ids = [p + encode(tokenizer, prompt + answer)[len(p):] for p, prompt, answer in zip(prompt_ids, prompts, answers)]
    width, keep = max(map(len, ids)), max(len(row) - len(p) for p, row in zip(prompt_ids, ids)) + 1
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.tensor([[pad] * (width - len(row)) + row for row in ids], device=model.device)
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in ids], device=model.device)
    with torch.inference_mode():
        logits = model(input_ids=input_ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                       logits_to_keep=keep, use_cache=False).logits[:, :-1].float()
    targets = input_ids[:, width - keep + 1 :]
    token_log_probs = logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    answer_lengths = torch.tensor([len(row) - len(p) for p, row in zip(prompt_ids, ids)], device=model.device)
    in_answer = torch.arange(keep - 1, device=model.device) >= keep - 1 - answer_lengths.unsqueeze(-1)
    return (token_log_probs * in_answer).sum(-1).tolist()


def run_metrics(params, trainer, result, val: dict, runtime, peak_mem_gib: float, started_from: str) -> dict:
    """What metrics/preference.json records: the method and what it started from, and the last logged values of
    TRL's own metrics (loss, rewards/accuracies, rewards/margins, ...) on the train and val rows."""
    state, settings = trainer.state, params.preference
    logged = {}
    for entry in state.log_history:
        logged |= {key: value for key, value in entry.items() if key.startswith(("loss", "rewards/", "logps/"))}
    round_all = lambda values: {key.replace("/", "_"): round(value, 4) for key, value in values.items()
                                if isinstance(value, (int, float))}
    return {
        "method": settings.method, "started_from": {"lora": "sft", "none": "model.name"}[started_from],
        "beta": settings.beta, "loss_type": getattr(trainer.args, "loss_type", None),
        "backend": runtime.backend, "device": runtime.device_name, "precision": runtime.precision,
        "steps": state.global_step, "epochs": round(state.epoch or 0, 3), "runtime_s": round(result.metrics["train_runtime"], 2),
        "peak_mem_gib": round(peak_mem_gib, 3), "train": round_all(logged),
        "val": round_all({key.removeprefix("eval_"): value for key, value in val.items()
                          if key.startswith(("eval_loss", "eval_rewards/", "eval_logps/"))}),
    }
