"""The unsloth backend (CUDA): Unsloth's FastLanguageModel, FastVisionModel or FastModel, by the kind's
auto class. The only module that imports unsloth; it does so first, as Unsloth patches transformers,
TRL and PEFT."""

import torch

from stages.lib import attention
from stages.lib.backends import lora_settings

FAST_CLASSES = {
    "AutoModelForCausalLM": "FastLanguageModel",
    "AutoModelForImageTextToText": "FastVisionModel",
    "AutoModelForSequenceClassification": "FastModel",
}


def fast_class(task):
    import unsloth

    return getattr(unsloth, FAST_CLASSES[task.AUTO_CLASS])


def load(task, spec, runtime, full_finetuning: bool = False):
    fast = fast_class(task)
    attention.set_sdpa_backends(runtime.attention)
    if runtime.attention == attention.VARLEN_FLASH:
        attention.use_torch_varlen_in_unsloth()
    return fast.from_pretrained(
        model_name=spec.source,
        revision=spec.revision,
        max_seq_length=spec.max_seq_length,
        dtype=getattr(torch, runtime.precision),
        load_in_4bit=spec.load_in_4bit,
        full_finetuning=full_finetuning,
        **spec.model_kwargs,
    )


def attach_lora(model, task, params, runtime):
    return fast_class(task).get_peft_model(
        model,
        **{**lora_settings(params), **task.lora_kwargs(params, model, "unsloth")},
        use_gradient_checkpointing="unsloth" if params.train.gradient_checkpointing else False,
        random_state=params.train.seed,
        max_seq_length=params.model.max_seq_length,
    )


def for_inference(model, task) -> None:
    fast_class(task).for_inference(model)


def merge(task, spec, runtime, adapter_dir, out_dir, save_method: str) -> None:
    """Unsloth's save_pretrained_merged; it asks for "merged_4bit_forced" to confirm a 4-bit merge."""
    model, processor = fast_class(task).from_pretrained(
        str(adapter_dir), max_seq_length=spec.max_seq_length, load_in_4bit=save_method == "merged_4bit",
    )
    model.save_pretrained_merged(str(out_dir), processor, save_method=save_method.replace("4bit", "4bit_forced"))
