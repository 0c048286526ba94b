"""Training backends behind one narrow interface: `unsloth` (CUDA; the only module that imports
unsloth) and `hf` (transformers + PEFT, any device). A backend loads a model of a kind's auto class
with its processor, attaches LoRA, prepares it for inference and merges; the kinds build the trainers.

Each backend module provides:
  load(task, spec, runtime, full_finetuning=False) -> (model, processor)
  attach_lora(model, task, params, runtime) -> model
  for_inference(model, task) -> None
  merge(task, spec, runtime, adapter_dir, out_dir, save_method) -> None   (LoRA into the base weights)
Unsloth must be imported before transformers, TRL and PEFT in the process that uses it: stage scripts
import this package lazily, and nothing at its top imports those.
"""

import json
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from stages.lib.artifacts import Manifest
from stages.lib.errors import SlothlineError
from stages.lib.models import lora_targets, resolve_model
from stages.lib.params import Params

# Parts of a model that a training step may leave out (a vision or audio tower on a text batch, experts
# the router skips) or that a fused loss reads by weight, past LoRA (the LM head, the embeddings);
# Unsloth's own DDP default excludes the same.
OPTIONAL_PARTS = ("vision", "visual", "audio", "expert", "lm_head", "embed")


NEW_WEIGHTS_SEED = 0  # weights a checkpoint lacks (a new classification head) start alike on every load


@dataclass(frozen=True)
class ModelSpec:
    """What to load: `source` is what from_pretrained takes (a local directory or a hub id)."""

    source: str
    revision: str | None
    max_seq_length: int
    load_in_4bit: bool = False
    model_kwargs: dict = field(default_factory=dict)  # the kind's extra from_pretrained arguments


def get(runtime):
    """The backend module the runtime resolved to."""
    if runtime.backend == "unsloth":
        from stages.lib.backends import unsloth

        return unsloth
    from stages.lib.backends import hf

    return hf


def load_for_training(task, runtime, params: Params, labels: list[str] | None = None):
    """The base model of `model.name` (with a head for `labels`, if any) with LoRA attached (or whole, for
    full fine-tuning) and its processor."""
    backend = get(runtime)
    spec = ModelSpec(resolve_model(params.model.name), params.model.revision, params.model.max_seq_length,
                     params.model.load_in_4bit, label_arguments(labels))
    model, processor = backend.load(task, spec, runtime, full_finetuning=params.train.full_finetuning)
    if params.train.full_finetuning:
        return model, processor
    check_lora_targets(model, lora_targets(params.lora.target_modules, model.config))
    return backend.attach_lora(model, task, params, runtime), processor


def label_arguments(labels: list[str] | None) -> dict:
    """from_pretrained arguments that give a model one output per label, named."""
    if not labels:
        return {}
    return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)}}


def method_of(model) -> str:
    """What training updates: `lora` (a PEFT adapter) or `full` (every weight)."""
    return "lora" if hasattr(model, "peft_config") else "full"


def base_spec(manifest: Manifest) -> ModelSpec:
    """The base model that train started from (with the head it added for its labels)."""
    return ModelSpec(resolve_model(manifest.base_model), manifest.revision, manifest.max_seq_length,
                     manifest.load_in_4bit, label_arguments(manifest.labels))


def trained_spec(manifest: Manifest, directory: Path) -> ModelSpec:
    """What loads the model that train wrote into `directory`: the base for an adapter, else the directory."""
    if manifest.method == "lora":
        return base_spec(manifest)
    return ModelSpec(str(directory), None, manifest.max_seq_length)


def load_trained(task, manifest: Manifest, runtime, directory: Path):
    """The trained model in `directory` (base plus adapter, or the whole model), ready to predict."""
    backend = get(runtime)
    model, processor = backend.load(task, trained_spec(manifest, directory), runtime)
    if manifest.method == "lora":
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(directory))
    backend.for_inference(model, task)
    return model, processor


@contextmanager
def base_model(task, manifest: Manifest, runtime, trained):
    """The base model the trained one started from: the adapter switched off, or a fresh load after full
    fine-tuning."""
    if manifest.method == "lora":
        with trained.disable_adapter():
            yield trained
    else:
        base, _ = get(runtime).load(task, base_spec(manifest), runtime)
        get(runtime).for_inference(base, task)
        yield base


def merge(task, manifest: Manifest, runtime, adapter_dir: Path, out_dir: Path, save_method: str) -> None:
    """Write the merged model (or the adapter, for `lora`) with processor and chat template to `out_dir`."""
    if save_method == "merged_4bit" and runtime.device == "cpu":
        raise SlothlineError("merge.save_method: merged_4bit needs a CUDA GPU (bitsandbytes); use merged_16bit here")
    if manifest.method == "full" and save_method == "lora":
        raise SlothlineError("merge.save_method: lora needs a LoRA adapter, but train.full_finetuning produced a full model")
    if manifest.method == "full" or save_method == "lora":  # already merged, or the adapter is the output
        shutil.copytree(adapter_dir, out_dir, dirs_exist_ok=True)  # manifest included
        return
    get(runtime).merge(task, trained_spec(manifest, adapter_dir), runtime, adapter_dir, out_dir, save_method)
    Manifest(**{**manifest.__dict__, "method": "full", "load_in_4bit": save_method == "merged_4bit"}).write(out_dir)


def save_trained(model, processor, out_dir: Path) -> None:
    """Save the adapter (or the fully fine-tuned model) and the processor, byte-identical for identical
    training: PEFT writes `target_modules`, a set, in the process's hash order, so it is sorted here."""
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    config_file = Path(out_dir) / "adapter_config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text())
        if isinstance(config.get("target_modules"), list):
            config["target_modules"] = sorted(config["target_modules"])
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True))


def lora_settings(params: Params, model) -> dict:
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
    """Fail, before LoRA is attached, when a `lora.target_modules` name matches no linear layer: PEFT
    only complains when none match, so a typo would silently train fewer weights."""
    import torch

    layers = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    unmatched = [target for target in requested or []
                 if not any(name == target or name.endswith("." + target) for name in layers)]
    if unmatched:
        raise SlothlineError(f"lora.target_modules: {', '.join(unmatched)} matched no layer of this model; "
                             f"its linear layers are: {', '.join(linear_layer_names(model))}")


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
