"""The unsloth backend (CUDA): Unsloth's FastLanguageModel, FastVisionModel or FastModel, by the kind's
auto class. The only module that imports unsloth; it does so first, as Unsloth patches transformers,
TRL and PEFT."""

import torch

from stages.lib import attention
from stages.lib.backends import NEW_WEIGHTS_SEED, lora_settings

FAST_CLASSES = {
    "AutoModelForCausalLM": "FastLanguageModel",
    "AutoModelForImageTextToText": "FastVisionModel",
    "AutoModelForSequenceClassification": "FastModel",
}


def fast_class(task):
    import unsloth

    return getattr(unsloth, FAST_CLASSES[task.AUTO_CLASS])


def auto_model_argument(task) -> dict:
    """FastModel and its subclasses load through the auto class they are given (else they guess it from the
    config, and a checkpoint without labels would load as a causal LM); FastLanguageModel picks its own."""
    import transformers
    import unsloth

    if not issubclass(fast_class(task), unsloth.FastModel):
        return {}
    return {"auto_model": getattr(transformers, task.AUTO_CLASS)}


def load(task, spec, runtime, full_finetuning: bool = False):
    fast = fast_class(task)
    attention.set_sdpa_backends(runtime.attention)
    if runtime.attention == attention.VARLEN_FLASH:
        attention.use_torch_varlen_in_unsloth()
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
    )


def attach_lora(model, task, params, runtime):
    return fast_class(task).get_peft_model(
        model,
        **{**lora_settings(params, model), **task.lora_kwargs(params, model, "unsloth")},
        use_gradient_checkpointing="unsloth" if params.train.gradient_checkpointing else False,
        random_state=params.train.seed,
        max_seq_length=params.model.max_seq_length,
    )


def for_inference(model, task) -> None:
    fast_class(task).for_inference(model)


MERGED_BY_UNSLOTH = ("AutoModelForCausalLM", "AutoModelForImageTextToText")  # generative models


def merge(task, spec, runtime, adapter_dir, out_dir, save_method: str) -> None:
    """Unsloth's save_pretrained_merged for generative models (it asks for "merged_4bit_forced" to confirm
    a 4-bit merge); other kinds (classifiers, whose trained head is a PEFT `modules_to_save` copy) merge
    through PEFT's merge_and_unload, as on the hf backend."""
    if task.AUTO_CLASS not in MERGED_BY_UNSLOTH:
        from stages.lib.backends import hf

        return hf.merge(task, spec, runtime, adapter_dir, out_dir, save_method)
    model, processor = fast_class(task).from_pretrained(
        str(adapter_dir), max_seq_length=spec.max_seq_length, load_in_4bit=save_method == "merged_4bit",
    )
    model.save_pretrained_merged(str(out_dir), processor, save_method=save_method.replace("4bit", "4bit_forced"))
