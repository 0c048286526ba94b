"""The unsloth backend (CUDA): Unsloth's FastLanguageModel, FastVisionModel or FastModel, by the kind's
auto class. The only module that imports unsloth, at its top: Unsloth patches transformers, TRL and PEFT,
so it is imported before them (`backends.get` is called before anything imports those)."""

import unsloth  # noqa: I001 (first: it patches what follows)
import importlib
import inspect
import os
from dataclasses import replace

import torch

from slothline.artifacts import SHARD_SIZE
from slothline.backends import NEW_WEIGHTS_SEED, attention
from slothline.backends.lora import lora_settings
from slothline.errors import SlothlineError

TRAINER_CHECKPOINTING = False  # gradient checkpointing is Unsloth's own (reentrant), set up by get_peft_model

FAST_CLASSES = {
    "AutoModelForCausalLM": "FastLanguageModel",
    "AutoModelForImageTextToText": "FastVisionModel",
    "AutoModelForSequenceClassification": "FastModel",
}


def fast_class(task):
    return getattr(unsloth, FAST_CLASSES[task.AUTO_CLASS])


def auto_model_argument(task) -> dict:
    """FastModel and its subclasses load through the auto class they are given (else they guess it from the
    config, and a checkpoint without labels would load as a causal LM); FastLanguageModel picks its own."""
    import transformers

    if not issubclass(fast_class(task), unsloth.FastModel):
        return {}
    return {"auto_model": getattr(transformers, task.AUTO_CLASS)}


def load(task, spec, runtime, full_finetuning: bool = False, **settings):
    fast = fast_class(task)
    attention.set_sdpa_backends(runtime.attention)
    if runtime.attention == attention.VARLEN_FLASH:
        use_torch_varlen()
    torch.manual_seed(NEW_WEIGHTS_SEED)
    return fast.from_pretrained(
        model_name=spec.source,
        revision=spec.revision,
        max_seq_length=spec.max_seq_length,
        dtype=getattr(torch, runtime.precision),
        load_in_4bit=spec.load_in_4bit,
        full_finetuning=full_finetuning,
        **auto_model_argument(task),
        **spec.model_kwargs,
        **settings,
    )


def attach_lora(model, task, params):
    # FastModel needs the task type, which it defaults to a causal LM's (FastLanguageModel and FastVisionModel know theirs)
    task_type = {"task_type": task.PEFT_TASK_TYPE} if fast_class(task) is unsloth.FastModel else {}
    return fast_class(task).get_peft_model(
        model,
        **{**lora_settings(params, model), **task.lora_extras(params, model), **task_type},
        use_gradient_checkpointing="unsloth" if params.train.gradient_checkpointing else False,
        random_state=params.train.seed,
        max_seq_length=params.model.max_seq_length,
    )


def continue_lora(task, spec, runtime, adapter_dir, params):
    """The adapter in `adapter_dir` on its base, trainable, and its processor: Unsloth's from_pretrained of an
    adapter directory, which loads it trainable and patches it as get_peft_model does, for the families
    FastLanguageModel patches itself and those it hands to FastModel alike, and readies it for DDP."""
    return load(task, replace(spec, source=str(adapter_dir), revision=None), runtime,
                use_gradient_checkpointing="unsloth" if params.train.gradient_checkpointing else False)


def vision_collator(model, processor, markers):
    """Unsloth's vision collator (response-only with `markers`), as its notebooks use it."""
    from unsloth.trainer import UnslothVisionDataCollator

    return UnslothVisionDataCollator(model, processor, train_on_responses_only=bool(markers),
                                     instruction_part=markers and markers[0], response_part=markers and markers[1])


def prepare_trainer(trainer) -> None:
    """Concatenated batches (padding-free or packed) reach the model with their row lengths (`packed_seq_lengths`)
    on the host, read back from the GPU once as the step starts, where Unsloth's own batch count already waits for
    the GPU. Unsloth (2026.10.7) reads them back itself in the first layer of every forward (the longest row, the
    row lengths, the last boundary), and each read makes the CPU wait for the GPU mid-step; with the lengths on the
    host, `host_row_lengths` gives its varlen attention the same values without a wait. Other batches: unchanged."""
    if not host_row_lengths():
        return
    prepare_inputs = trainer._prepare_inputs

    def prepare_inputs_lengths_on_host(inputs):
        inputs = prepare_inputs(inputs)
        lengths = inputs.get("packed_seq_lengths")
        if isinstance(lengths, torch.Tensor) and lengths.device.type != "cpu":
            inputs["packed_seq_lengths"] = lengths.cpu()
        return inputs

    trainer._prepare_inputs = prepare_inputs_lengths_on_host


def for_inference(model, task) -> None:
    fast_class(task).for_inference(model)


MERGED_BY_UNSLOTH = ("AutoModelForCausalLM", "AutoModelForImageTextToText")  # generative models


def merge(task, spec, runtime, adapter_dir, out_dir, save_method: str) -> None:
    """Unsloth's save_pretrained_merged for generative models (it asks for "merged_4bit_forced" to confirm
    a 4-bit merge), with the processor trained; other kinds (classifiers, whose trained head is a PEFT
    `modules_to_save` copy) merge through PEFT's merge_and_unload, as on the hf backend."""
    if task.AUTO_CLASS not in MERGED_BY_UNSLOTH:
        from slothline.backends import hf

        return hf.merge(task, spec, runtime, adapter_dir, out_dir, save_method)
    model, processor = fast_class(task).from_pretrained(
        str(adapter_dir), max_seq_length=spec.max_seq_length, load_in_4bit=save_method == "merged_4bit",
    )
    model.save_pretrained_merged(str(out_dir), processor, save_method=save_method.replace("4bit", "4bit_forced"),
                                 max_shard_size=SHARD_SIZE)
    # Unsloth reads the adapter folder's tokenizer only beside a special_tokens_map.json, which transformers 5 no
    # longer writes: the processor saved with the adapter (an alpaca chat template, say) is written over the base's
    type(processor).from_pretrained(str(adapter_dir)).save_pretrained(out_dir)


MOVED = ("the torch varlen hook was written against Unsloth 2026.10.7: install unsloth==2026.10.7 or set "
         "train.packing: false and train.padding_free: false")


def use_torch_varlen() -> bool:
    """Turn on Unsloth's torch-varlen branch for concatenated (packed or padding-free) rows on a torch whose
    `varlen_attn` lacks `enable_gqa`.

    Unsloth (2026.10.7) sets `unsloth.utils.attention_dispatch._TORCH_VARLEN_ATTN` at import only when
    `varlen_attn` takes `window_size` and `enable_gqa` (torch 2.12), and reads it at call time. torch
    2.11's `varlen_attn` has `window_size` and already takes fewer K/V heads than query heads, so a
    wrapper that drops `enable_gqa` serves. Call it before training (it imports Unsloth's dispatch module). Returns whether it installed the wrapper: False
    when torch already takes `enable_gqa`, has no usable `varlen_attn`, or Unsloth's branch is on or
    switched off (UNSLOTH_TORCH_VARLEN=0). Raises if Unsloth's internals moved. Where xformers loads,
    Unsloth keeps it for packed rows (its `_NATIVE_BEATS_XFORMERS` is fixed at import); this leaves that.
    """
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return False
    params = inspect.signature(varlen_attn).parameters
    if "enable_gqa" in params or "window_size" not in params or not torch.backends.cuda.is_flash_attention_available():
        return False
    if os.environ.get("UNSLOTH_TORCH_VARLEN", "1").lower() in ("0", "false", "no", "off"):
        return False
    version = getattr(unsloth, "__version__", "unknown")
    try:
        dispatch = importlib.import_module("unsloth.utils.attention_dispatch")
    except ImportError as err:
        raise SlothlineError(f"Unsloth {version} has no unsloth.utils.attention_dispatch ({err}); {MOVED}") from None
    for name in ("_TORCH_VARLEN_ATTN", "_torch_varlen_packed"):
        if not hasattr(dispatch, name):
            raise SlothlineError(f"Unsloth {version} has no unsloth.utils.attention_dispatch.{name}; {MOVED}")
    if dispatch._TORCH_VARLEN_ATTN is not None:
        return False

    def varlen_attn_implied_gqa(*args, enable_gqa=False, **kwargs):
        return varlen_attn(*args, **kwargs)

    dispatch._TORCH_VARLEN_ATTN = varlen_attn_implied_gqa
    return True


PACKING_INTERNALS = ("get_packed_info_from_kwargs", "_PACKED_INFO_CACHE", "_SEGMENT_LENGTHS_CACHE",
                     "_PADDED_CU_SEQLENS_CACHE", "packed_segment_lengths", "cover_padded_cu_seqlens")


def host_row_lengths() -> bool:
    """Have Unsloth's varlen attention take concatenated rows' lengths from a host tensor without reading the GPU.

    Unsloth (2026.10.7) turns `packed_seq_lengths` into (lengths, cu_seqlens, longest) in
    `unsloth.utils.packing.get_packed_info_from_kwargs`, reading the longest back with `.item()`, and its
    attention then reads the lengths (`packed_segment_lengths`) and the last boundary (`cover_padded_cu_seqlens`),
    each result cached for the batch. Given host lengths, the wrapper here computes all three on the host and fills
    those caches, so none reads the GPU; lengths on the GPU go to Unsloth's own function. Returns whether the
    wrapper is in place: False, with a warning, when Unsloth's internals moved (training is then as fast as
    Unsloth's own code makes it)."""
    import sys
    import warnings

    packing = importlib.import_module("unsloth.utils.packing")
    original = packing.get_packed_info_from_kwargs
    if getattr(original, "host_row_lengths", False):
        return True
    missing = [name for name in PACKING_INTERNALS if not hasattr(packing, name)]
    if missing:
        warnings.warn(f"Unsloth {getattr(unsloth, '__version__', 'unknown')} has no unsloth.utils.packing."
                      f"{', '.join(missing)}: concatenated rows train without the host row lengths (slower); "
                      "unsloth==2026.10.7 has them", stacklevel=2)
        return False

    def packed_info_from_host(kwargs, device):
        seq_lengths = kwargs.get("packed_seq_lengths")
        if not isinstance(seq_lengths, torch.Tensor) or seq_lengths.device.type != "cpu":
            return original(kwargs, device)
        entry = packing._PACKED_INFO_CACHE.get(device)
        if entry is not None and entry["seq_lengths"] is seq_lengths:
            return entry["result"]
        host = seq_lengths.to(torch.int32)
        host_cu_seqlens = torch.nn.functional.pad(host.cumsum(0, dtype=torch.int32), (1, 0))
        lengths = host.pin_memory().to(device, non_blocking=True)
        cu_seqlens = host_cu_seqlens.pin_memory().to(device, non_blocking=True)
        result = (lengths, cu_seqlens, int(host.max()))
        total = int(host_cu_seqlens[-1])  # rows with no pad tail after them; a batch with one misses the caches
        packing._PACKED_INFO_CACHE[device] = {"seq_lengths": seq_lengths, "result": result}
        packing._SEGMENT_LENGTHS_CACHE[lengths.device] = (lengths, total, tuple(host.tolist()))
        packing._PADDED_CU_SEQLENS_CACHE[cu_seqlens.device] = {"cu_seqlens": cu_seqlens, "total": total,
                                                               "result": (cu_seqlens, result[2])}
        return result

    packed_info_from_host.host_row_lengths = True
    for module in list(sys.modules.values()):  # the model families import the function by name
        if getattr(module, "__name__", "").startswith("unsloth") and \
                getattr(module, "get_packed_info_from_kwargs", None) is original:
            module.get_packed_info_from_kwargs = packed_info_from_host
    return True
