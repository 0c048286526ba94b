"""Batched generation (left padding; on a GPU a compiled static KV cache and the adapter merged in place) and
the teacher-forced loss on answers, for evaluate."""

import math
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from tqdm.auto import tqdm

from slothline.families import family
from slothline.kinds._generative.chat import THINK_TAGS, strip_thinking
from slothline.kinds._generative.stops import stop_ids
from slothline.kinds._generative.tokens import encode, encode_batch, tokenizer_of

KNOBS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def decoding(settings, generation_config) -> dict:
    """The decoding `evaluate.*` asks for, with every knob spelled out (it is recorded in metrics):
    `sampling: params` takes temperature (0: greedy), top_p, top_k (0: off), min_p (0: off) and
    repetition_penalty (1: off) from params; `sampling: model` takes the model's generation_config.json,
    the family's recommended settings (Qwen3's: temperature 0.6, top_p 0.95, top_k 20), ignoring those
    params (see `ignored_knobs`); a knob it leaves unset takes transformers' default, as `model.generate()` would
    (`GENERATE_DEFAULTS`: Llama 3's file sets temperature and top_p, so top-k 50 filters its samples too)."""
    if settings.sampling == "params":
        return settings.decoding_params()
    chosen = {k: getattr(generation_config, k, None) for k in KNOBS}
    return {"do_sample": bool(generation_config.do_sample),
            **{k: GENERATE_DEFAULTS[k] if v is None else v for k, v in chosen.items()}}


GENERATE_DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "top_k": 50, "min_p": 0.0, "repetition_penalty": 1.0}
"""The decoding knobs transformers' generate() applies where a generation_config.json leaves them unset (5.17's
GenerationConfig defaults; min_p: None, off, written as 0)."""


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


@dataclass(frozen=True)
class Plan:
    """How one model's answers are generated (recorded in metrics/eval.json): `rows` per batch, longest prompts
    first; the KV `cache` ("static": every batch one shape, `cache_length` tokens, the decode steps compiled
    with CUDA graphs; "dynamic"); and whether the LoRA adapter is merged into the weights while it generates.
    `order`: the prompts' indices longest first, as `plan` found them (empty: `generate` measures them)."""

    rows: int
    cache: str
    cache_length: int
    merged: bool
    order: tuple[int, ...] = ()

    def describe(self) -> dict:
        return {"batch_rows": self.rows, "kv_cache": self.cache, "adapter_merged": self.merged}


STATIC_CACHE_FROM_STEPS = 1_000
"""Decode steps a pass (one model's answers) from which `evaluate.kv_cache: auto` takes the compiled static cache,
counted as planned: batches x max_new_tokens, an upper bound (a batch ends once all its rows stop). On empty compile
caches, a Qwen3-4B-shape evaluate on an H100 compiled for 77 s more over its two passes than on the dynamic cache and
then saved 39 ms a decode step of 128 rows: breaking even at about 1,000 steps a pass
(benchmarks/results/generate_speed_cold_{dynamic,static}.log). Checked either side on another H100
(generate_speed_kv_cache_threshold.log), both passes: at 512 steps a pass the dynamic cache took 63 s against 80, at
1,024 the static one 82 s against 88. Pictures (Qwen3-VL-2B shape) break even at about 1,400 and share this threshold."""


def plan(model, prompt_lengths: list[int], settings) -> Plan:
    """The fastest exact enough way to generate on this device, as benchmarks/generate_speed.py measured it.

    On a GPU: the adapter merged in place (PEFT's merge_adapter; not into 4-bit weights, where merging rounds:
    those keep the unmerged, exact path), the KV cache `choose_kv_cache` picks, and as many rows per batch as
    `evaluate.batch_tokens` holds (rows x (longest prompt + max_new_tokens), images counted as the processor
    expands them: see `prompt_lengths`; auto: the tokens whose KV cache fits in half the free GPU memory), at
    most 256. On the CPU: `evaluate.batch_size` rows (auto: 16), a dynamic cache unless `evaluate.kv_cache:
    static`, the adapter unmerged: the answers of every earlier release."""
    longest = max(prompt_lengths, default=0) + settings.max_new_tokens
    rows = min(rows_per_batch(model, settings, longest), max(1, len(prompt_lengths)))
    batches = math.ceil(len(prompt_lengths) / rows)
    return Plan(rows, choose_kv_cache(model, settings.kv_cache, batches * settings.max_new_tokens), longest,
                merged=merges_adapter(model), order=tuple(longest_first(prompt_lengths)))


def same_batches(how: Plan, model) -> Plan:
    """`how` for another model's pass over the same prompts (the base model's, the tuned one's): the same batches
    and KV cache, planned once on the memory free before the first pass, so both generate alike; the adapter
    merged as `model` allows."""
    return replace(how, merged=merges_adapter(model))


def merges_adapter(model) -> bool:
    """Whether generation merges `model`'s LoRA adapter in place: on a GPU, an active adapter over weights that
    are not quantized (merging into 4-bit weights rounds)."""
    return model.device.type == "cuda" and not is_quantized(model) and adapter_active(model)


def choose_kv_cache(model, setting: str, decode_steps: int) -> str:
    """The KV cache `evaluate.kv_cache` (`setting`) asks for, for a pass of `decode_steps` planned steps: "static"
    (every batch one shape; on a GPU the decode steps compiled with CUDA graphs) where the model compiles (not
    quantized models; with images too: the pictures go in with the prefill, which runs uncompiled, and the decode
    steps are text); auto takes it on a GPU from STATIC_CACHE_FROM_STEPS steps, where the faster steps repay the
    compile. Else "dynamic"."""
    inner = inner_model(model)
    quantized = is_quantized(model)
    if setting == "dynamic" or quantized or not getattr(inner, "_can_compile_fullgraph", False):
        if setting == "static":
            print(f"note: evaluate.kv_cache: static: transformers does not compile this {'quantized ' if quantized else ''}"
                  f"{type(inner).__name__}, so it generates on the dynamic cache; set evaluate.kv_cache: auto")
        return "dynamic"
    on_gpu = model.device.type == "cuda"
    return "static" if setting == "static" or (on_gpu and decode_steps >= STATIC_CACHE_FROM_STEPS) else "dynamic"


def longest_first(lengths: list[int]) -> list[int]:
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


def rows_per_batch(model, settings, longest: int) -> int:
    """`evaluate.batch_size`, or for auto: 16 on the CPU, else as many rows of `longest` tokens as
    `evaluate.batch_tokens` holds, at most 256."""
    if settings.batch_size != "auto":
        return settings.batch_size
    if model.device.type != "cuda":
        return 16
    budget = settings.batch_tokens if settings.batch_tokens != "auto" else kv_budget(model)
    return max(1, min(256, budget // max(longest, 1)))


LOSS_LOGITS = 2**28  # logits one loss batch may hold: about 1 GiB in float32, 2.5 with cross-entropy's own


def loss_rows(model, settings, longest: int) -> int:
    """Rows per teacher-forced loss batch: generation's rows, fewer where their logits (rows x `longest` x the
    vocabulary) would pass LOSS_LOGITS (256 rows of 1,000 tokens of Qwen3's 151,936-token vocabulary would be
    156 GB in float32)."""
    vocab = inner_model(model).config.get_text_config(decoder=True).vocab_size
    return max(1, min(rows_per_batch(model, settings, longest), LOSS_LOGITS // max(longest * vocab, 1)))


def kv_budget(model) -> int:
    """The tokens whose KV cache fits in half the GPU memory free now: free on the device, and held by torch's
    allocator for tensors since freed (an earlier pass's cache), which it hands out again."""
    free = torch.cuda.mem_get_info(model.device)[0]
    cached = torch.cuda.memory_reserved(model.device) - torch.cuda.memory_allocated(model.device)
    return int((free + cached) * 0.5 // kv_bytes_per_token(model))


def kv_bytes_per_token(model) -> int:
    """The bytes of keys and values one cached token takes, over every layer."""
    config = inner_model(model).config.get_text_config(decoder=True)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return config.num_hidden_layers * kv_heads * head_dim * 2 * inner_model(model).dtype.itemsize


def inner_model(model):
    """The transformers model under a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def is_quantized(model) -> bool:
    """Whether transformers loaded the model's weights quantized (4-bit bitsandbytes and the like)."""
    return getattr(inner_model(model), "hf_quantizer", None) is not None


def adapter_active(model) -> bool:
    """Whether `model` has LoRA layers switched on (not inside PEFT's disable_adapter)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layer = next((m for m in model.modules() if isinstance(m, BaseTunerLayer)), None)
    return layer is not None and not layer.disable_adapters


@contextmanager
def merged_adapter(model, merge: bool):
    """The LoRA adapter merged into the weights in place for the block (PEFT's merge_adapter, unmerged after):
    one matrix product per layer instead of three per step."""
    if not merge:
        yield
        return
    model.merge_adapter()
    try:
        yield
    finally:
        model.unmerge_adapter()


def compile_norms_and_mlps(model) -> None:
    """The model's RMSNorms and MLPs compiled (`nn.Module.compile`, dynamic shapes: one graph for every prompt
    length), once. transformers compiles a static cache's decode steps, whose compile takes these in, but runs the
    prefill eagerly, where the norms' and MLPs' elementwise kernels (float32 casts, powers, SiLU) take about as long
    as its matrix products; compiled, they fuse."""
    for name, module in inner_model(model).named_modules():
        if module._compiled_call_impl is None and (name.endswith(".mlp") or type(module).__name__.endswith("RMSNorm")):
            module.compile(dynamic=True)


@contextmanager
def stop_read_a_step_late(device: torch.device):
    """On a GPU, decode steps queued without waiting for the last one: after each step transformers (5.17) reads
    back whether every row has stopped, which leaves the GPU idle while the host prepares the next step. Its
    DeferredStopCheck reads that flag one step late (the extra step undone, the same tokens) but is switched on
    only for Apple GPUs; this switches it on for the block on CUDA. Elsewhere, or where transformers lacks it:
    unchanged."""
    from transformers.generation import utils

    gate = getattr(getattr(utils, "DeferredStopCheck", None), "__dict__", {}).get("is_supported")
    if device.type != "cuda" or not isinstance(gate, staticmethod):
        yield
        return

    def is_supported(device, *args, **kwargs):
        return gate.__func__(torch.device("mps") if device.type == "cuda" else device, *args, **kwargs)

    utils.DeferredStopCheck.is_supported = staticmethod(is_supported)
    try:
        yield
    finally:
        utils.DeferredStopCheck.is_supported = gate


def generate(model, processor, prompts: list[str], settings, chosen: dict | None = None, desc: str = "generate",
             images: Sequence[list] | None = None, literals: list | None = None, how: Plan | None = None) -> list[str]:
    """Answers to `prompts` (rendered, generation prompt included), generated as `plan` decides (or `how`),
    `settings.max_new_tokens` at most, decoded as `chosen` (see `decoding`; greedy when None), sampling from
    `settings.seed`, stopping at any of the model's stop tokens (`stops.stop_ids`). `processor` is a tokenizer,
    or a multimodal processor given each prompt's `images` (by the prompt's index, read as its batch forms);
    `literals` are each prompt's spans of message text spelling special tokens (tokenized as text, see
    `tokens.encode`). Answers come back in prompt order, without special tokens and without a leading <think>
    block (one the prompt opens included)."""
    from transformers import set_seed

    set_seed(settings.seed)
    tokenizer = tokenizer_of(processor)
    ensure_pad_token(tokenizer)
    tokenizer.padding_side = "left"
    literals = literals or [()] * len(prompts)
    lengths = None if how and how.order else prompt_lengths(model, processor, prompts, literals, images)
    how = how or plan(model, lengths, settings)
    order = list(how.order) or longest_first(lengths)  # a plan's own order: its prompts are not measured twice
    assert len(order) == len(prompts), "generate was handed a plan made for other prompts"
    answers = [""] * len(prompts)
    options = generate_kwargs(chosen or {"do_sample": False, "repetition_penalty": 1.0})
    if how.cache == "static":  # one shape for every batch: a fixed cache length, the last batch filled up
        options |= {"cache_implementation": "static", "max_cache_len": how.cache_length}
        compile_norms_and_mlps(model)
    stops = stop_ids(processor, model.generation_config)
    with merged_adapter(model, how.merged), stop_read_a_step_late(model.device), torch.inference_mode():
        for start in tqdm(range(0, len(order), how.rows), desc=desc):
            batch = order[start : start + how.rows]
            filled = batch + [batch[-1]] * (how.rows - len(batch)) if how.cache == "static" else batch
            pictures = None if images is None else [picture for i in filled for picture in images[i]]
            encoded = encode_batch(processor, [prompts[i] for i in filled], [literals[i] for i in filled], pictures,
                                   padding_side="left")
            encoded = {k: v.to(model.device) if torch.is_tensor(v) else v for k, v in encoded.items()}
            output = model.generate(**encoded, max_new_tokens=settings.max_new_tokens, use_cache=True,
                                    pad_token_id=tokenizer.pad_token_id, eos_token_id=stops, **options)
            new_tokens = [until_stop(row, stops) for row in output[: len(batch), encoded["input_ids"].shape[1] :].tolist()]
            for i, text in zip(batch, tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
                answers[i] = strip_thinking(THINK_TAGS[0] + text if opens_thinking(prompts[i], text) else text)
    return answers


def prompt_lengths(model, processor, prompts: list[str], literals: list | None = None,
                   images: Iterable[list] | None = None) -> list[int]:
    """Each prompt's tokens, which order the batches (longest first) and, on a GPU, size them: with images on a
    GPU, each picture as the processor expands it (hundreds of tokens where the text holds one placeholder),
    counted from its size by the model family's image-token rule (the processor run on it where the family has
    none); else the text's, the order every earlier release generated in."""
    literals = literals or [()] * len(prompts)
    if images is None or model.device.type != "cuda":
        return [len(encode(processor, prompt, spans)) for prompt, spans in zip(prompts, literals)]
    rule = family(getattr(model.config, "model_type", None)).image_tokens
    if rule is None:
        return [len(processor(text=[prompt], images=pictures or None, add_special_tokens=False)["input_ids"][0])
                for prompt, pictures in zip(prompts, images)]
    return [len(encode(processor, prompt, spans)) + sum(rule(processor, *picture.size) - 1 for picture in pictures or ())
            for prompt, spans, pictures in zip(prompts, literals, images)]


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
