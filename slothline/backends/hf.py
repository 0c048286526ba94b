"""The hf backend: transformers + PEFT, on any device (the CPU path, and a GPU without Unsloth)."""

from dataclasses import replace

import torch

from slothline.artifacts import SHARD_SIZE
from slothline.backends import NEW_WEIGHTS_SEED, attention
from slothline.backends.lora import lora_settings
from slothline.errors import SlothlineError

TRAINER_CHECKPOINTING = True  # gradient checkpointing is transformers', asked for through TrainingArguments


def load(task, spec, runtime, full_finetuning: bool = False):
    """The model of `spec` through the kind's auto class, and its processor. 4-bit (QLoRA) through
    bitsandbytes; packed training rows through the registered varlen attention."""
    import transformers
    from transformers import BitsAndBytesConfig

    dtype = getattr(torch, runtime.precision)
    quantization = (
        BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
                           bnb_4bit_use_double_quant=True)
        if spec.load_in_4bit else None
    )
    attention.set_sdpa_backends(runtime.attention)
    auto_class = getattr(transformers, task.AUTO_CLASS)
    torch.manual_seed(NEW_WEIGHTS_SEED)
    try:
        config = transformers.AutoConfig.from_pretrained(spec.source, revision=spec.revision)
        implementation = attention_of(auto_class._model_mapping.get(type(config), None), config)
        if runtime.attention == attention.VARLEN_FLASH and implementation == "sdpa":
            implementation = attention.register_varlen_attention()
        processor = task.load_processor(spec.source, spec.revision)
        model, loading = auto_class.from_pretrained(
            spec.source, revision=spec.revision, dtype=dtype, quantization_config=quantization,
            attn_implementation=implementation, device_map={"": runtime.local_rank} if runtime.device == "cuda" else None,
            output_loading_info=True, **spec.model_kwargs,
        )
    except OSError as err:
        raise SlothlineError(f"model.name: cannot load {spec.source!r}: {err}") from None
    # the weights initialised here, not read (missing from the checkpoint, or of another size): kinds save them
    model.new_weights = sorted(loading["missing_keys"] | {key for key, *_ in loading["mismatched_keys"]})
    if spec.model_kwargs.get("id2label") and model.config.pad_token_id is None:  # a decoder's classification head
        model.config.pad_token_id = processor.pad_token_id  # finds each row's last token by it
    return model, processor


def attention_of(model, config) -> str:
    """sdpa where the model (or its class) has it (DeBERTa and MPNet have not; None: a config the auto class does not
    know, which from_pretrained then names), else eager; eager too where the config caps attention logits (Gemma 2's
    attn_logit_softcapping), which sdpa and the varlen kernel would skip without a word (concatenated rows then attend
    within their documents through transformers' own packed-sequence mask)."""
    capped = getattr(config.get_text_config(), "attn_logit_softcapping", None) is not None
    return "sdpa" if getattr(model, "_supports_sdpa", True) and not capped else "eager"


def attach_lora(model, task, params):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(**{**lora_settings(params, model), **task.lora_extras(params, model)},
                        task_type=task.PEFT_TASK_TYPE)
    torch.manual_seed(params.train.seed)  # LoRA A matrices start from the seed, as Unsloth's random_state
    try:
        return get_peft_model(model, config)
    except ValueError as err:  # e.g. no target modules, for a family without a default
        raise SlothlineError(f"lora.target_modules: {err}") from None


def continue_lora(task, spec, runtime, adapter_dir, params):
    """The adapter in `adapter_dir` on the base of `spec`, trainable, and the processor."""
    from peft import PeftModel

    model, processor = load(task, spec, runtime)
    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True), processor


def vision_collator(model, processor, markers):
    """None: the kind's own answer-masking collator serves."""
    return None


def prepare_trainer(trainer) -> None:
    """Nothing to set: the varlen attention finds concatenated rows' boundaries in `position_ids`."""


def for_inference(model, task) -> None:
    """Generation with a KV cache runs on sdpa, whatever attention training used; on a GPU its decode steps
    attend through the grouped attention (no per-head copies of keys and values, see backends.attention). Models
    that sdpa does not serve (`attention_of`) run eager."""
    implementation = attention_of(model, model.config)
    if implementation == "sdpa" and model.device.type == "cuda":
        implementation = attention.register_grouped_attention()
    model.set_attn_implementation(implementation)
    model.eval()


def merge(task, spec, runtime, adapter_dir, out_dir, save_method: str) -> None:
    """PEFT's merge_and_unload: into a 16-bit base for merged_16bit (also after QLoRA), into a 4-bit one
    for merged_4bit; with the processor saved beside the adapter (the one trained)."""
    from peft import PeftModel

    base, processor = load(task, replace(spec, load_in_4bit=save_method == "merged_4bit"), runtime)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(out_dir, max_shard_size=SHARD_SIZE)
    type(processor).from_pretrained(str(adapter_dir)).save_pretrained(out_dir)  # as trained (an alpaca template)
