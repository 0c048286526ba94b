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

RESPONSE_MASKS_IN_DATA = False  # Unsloth's train_on_responses_only masks the labels itself
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


def response_only(trainer, markers: tuple[str, str]):
    """Unsloth's train_on_responses_only: labels only on the answers, by the same turn markers."""
    from unsloth.chat_templates import train_on_responses_only

    return train_on_responses_only(trainer, instruction_part=markers[0], response_part=markers[1])


def vision_collator(model, processor, markers):
    """Unsloth's vision collator (response-only with `markers`), as its notebooks use it."""
    from unsloth.trainer import UnslothVisionDataCollator

    return UnslothVisionDataCollator(model, processor, train_on_responses_only=bool(markers),
                                     instruction_part=markers and markers[0], response_part=markers and markers[1])


def for_inference(model, task) -> None:
    fast_class(task).for_inference(model)


MERGED_BY_UNSLOTH = ("AutoModelForCausalLM", "AutoModelForImageTextToText")  # generative models


def merge(task, spec, runtime, adapter_dir, out_dir, save_method: str) -> None:
    """Unsloth's save_pretrained_merged for generative models (it asks for "merged_4bit_forced" to confirm
    a 4-bit merge); other kinds (classifiers, whose trained head is a PEFT `modules_to_save` copy) merge
    through PEFT's merge_and_unload, as on the hf backend."""
    if task.AUTO_CLASS not in MERGED_BY_UNSLOTH:
        from slothline.backends import hf

        return hf.merge(task, spec, runtime, adapter_dir, out_dir, save_method)
    model, processor = fast_class(task).from_pretrained(
        str(adapter_dir), max_seq_length=spec.max_seq_length, load_in_4bit=save_method == "merged_4bit",
    )
    model.save_pretrained_merged(str(out_dir), processor, save_method=save_method.replace("4bit", "4bit_forced"),
                                 max_shard_size=SHARD_SIZE)


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
