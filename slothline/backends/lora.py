"""LoRA settings both backends share: the `lora.*` params as keyword arguments, the family's default targets,
and the checks around them."""

import re

from slothline.errors import SlothlineError
from slothline.families import family

# Parts of a model that a training step may leave out (a vision or audio tower on a text batch, experts
# the router skips) or that a fused loss reads by weight, past LoRA (the LM head, the embeddings);
# Unsloth's own DDP default excludes the same.
OPTIONAL_PARTS = ("vision", "visual", "audio", "expert", "lm_head", "embed")


def lora_targets(requested: list[str] | None, config) -> list[str] | None:
    """`lora.target_modules`, or for null the default of the model's family (None where there is none)."""
    default = family(config.model_type).lora_targets
    return requested or (list(default) if default else None)


def lora_settings(params, model) -> dict:
    """The `lora.*` params as keyword arguments of both Unsloth's get_peft_model and PEFT's LoraConfig;
    `target_modules: null` is the model family's default."""
    lora = params.lora
    loftq = {}
    if lora.loftq:
        from peft import LoftQConfig

        loftq = LoftQConfig(loftq_bits=4)
    return {
        "r": lora.r,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "bias": lora.bias,
        "target_modules": lora_targets(lora.target_modules, model.config),
        "use_rslora": lora.use_rslora,
        "init_lora_weights": "loftq" if lora.loftq else True,
        "loftq_config": loftq,
    }


def check_lora_targets(model, requested: list[str] | None) -> None:
    """Fail, before LoRA is attached, when a `lora.target_modules` name matches no linear layer (PEFT only
    complains when none match, so a typo would silently train fewer weights), or names the embeddings or the
    output layer."""
    import torch

    modules = [(name, module) for name, module in model.named_modules() if name]
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    named = lambda target: [module for name, module in modules if name == target or name.endswith("." + target)]
    whole = [target for target in requested or []
             if any(isinstance(module, torch.nn.Embedding) or module is output for module in named(target))]
    if whole:
        raise SlothlineError(
            f"lora.target_modules: {', '.join(whole)} is the model's embeddings or output layer, which LoRA here does "
            "not train (TRL refuses an adapter on the output layer, and Unsloth trains these whole where PEFT would "
            "put LoRA on them); remove it, or set train.full_finetuning: true to train every weight")
    unmatched = [target for target in requested or []
                 if not any(isinstance(module, torch.nn.Linear) for module in named(target))]
    if unmatched:
        default = family(model.config.model_type).lora_targets
        hint = f"; or set lora.target_modules: null for the family's default ({', '.join(default)})" if default else ""
        raise SlothlineError(f"lora.target_modules: {', '.join(unmatched)} matched no layer of this model; "
                             f"its linear layers are: {', '.join(linear_layer_names(model))}{hint}")


def check_target_names(task, params) -> None:
    """`check_lora_targets` before anything loads, on the model built from its config on the meta device (no
    weights read, no memory taken), and that the targets as the kind hands them to PEFT (a vision model's one
    regex, within the towers and blocks lora.finetune_* select) match a linear layer. Train checks again on the
    loaded model."""
    import torch
    import transformers

    from slothline.models import resolve_model

    if params.train.full_finetuning:
        return
    try:
        config = transformers.AutoConfig.from_pretrained(resolve_model(params.model.name), revision=params.model.revision)
        with torch.device("meta"):
            model = getattr(transformers, task.AUTO_CLASS).from_config(config)
    except Exception:  # a config transformers cannot build from: train reports it when it loads the model
        return
    check_lora_targets(model, params.lora.target_modules)
    pattern = task.lora_extras(params, model).get("target_modules")
    layers = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    if isinstance(pattern, str) and not any(re.fullmatch(pattern, name) for name in layers):
        raise SlothlineError(
            f"lora.target_modules: none of {', '.join(lora_targets(params.lora.target_modules, config) or [])} lies in "
            "the parts the lora.finetune_* flags select; name layers of those parts (its linear layers are: "
            f"{', '.join(linear_layer_names(model))}), or set more of the flags to true")


def linear_layer_names(model) -> list[str]:
    """The distinct last name parts of the model's linear layers (what `lora.target_modules` names)."""
    import torch

    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    return sorted(names - {"lm_head"})


def every_trainable_weight_trains(model) -> bool:
    """Whether every training step gives each trainable weight a gradient: none lies in one of the
    OPTIONAL_PARTS. DDP then need not search each step's graph for unused weights."""
    return not any(part in name.lower() for name, weight in model.named_parameters() if weight.requires_grad
                   for part in OPTIONAL_PARTS)
