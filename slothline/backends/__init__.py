"""Training backends behind one narrow interface: `unsloth` (CUDA; unsloth.py alone imports unsloth, at its
top, as Unsloth patches transformers, TRL and PEFT) and `hf` (transformers + PEFT, any device).

`get(runtime)` imports the backend the runtime resolved to; a stage calls it before anything imports
transformers (nothing in this package's top, nor in a kind's, imports it). Each backend module provides:
  load(task, spec, runtime, full_finetuning=False) -> (model, processor)
  attach_lora(model, task, params) -> model
  continue_lora(task, spec, runtime, adapter_dir, params) -> (model, processor)   (a saved adapter on its base, to train on)
  for_inference(model, task) -> None
  merge(task, spec, runtime, adapter_dir, out_dir, save_method) -> None   (LoRA into the base weights)
and what differs between them, for the kinds and the trainer settings:
  TRAINER_CHECKPOINTING    whether gradient checkpointing is the Trainer's (else the backend's own)
  vision_collator(model, processor, markers)     the backend's own vision collator, or None
  prepare_trainer(trainer) -> None                the backend's own settings on the trainer a stage built
"""

import json
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from slothline.artifacts import Manifest
from slothline.backends.lora import check_lora_targets, lora_targets
from slothline.errors import SlothlineError
from slothline.models import head_classes, model_config, placeholder_classes, resolve_model

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
        from slothline.backends import unsloth

        return unsloth
    from slothline.backends import hf

    return hf


def load_for_training(task, runtime, params, labels: list[str] | None = None):
    """The base model of `model.name` (with a head for `labels`, if any) with LoRA attached (or whole, for
    full fine-tuning) and its processor."""
    backend = get(runtime)
    spec = ModelSpec(resolve_model(params.model.name), params.model.revision, params.model.max_seq_length,
                     params.model.load_in_4bit, label_arguments(labels))
    if labels and (note := replaced_head(model_config(params.model.name, params.model.revision), labels)):
        print(note)
    model, processor = backend.load(task, spec, runtime, full_finetuning=params.train.full_finetuning)
    if params.train.full_finetuning:
        return model, processor
    check_lora_targets(model, lora_targets(params.lora.target_modules, model.config))
    return backend.attach_lora(model, task, params), processor


def load_for_preference(task, runtime, params, sft: Manifest, sft_dir: Path):
    """What preference tuning trains: the SFT adapter on its base (trainable), or with train.sft: false a new
    adapter on `model.name`, and the processor."""
    if sft.method == "none":
        return load_for_training(task, runtime, params)
    if sft.method != "lora":
        raise SlothlineError(f"{sft_dir}: a fully fine-tuned model; preference tuning trains a LoRA adapter, so set "
                             "train.full_finetuning: false")
    return get(runtime).continue_lora(task, base_spec(sft), runtime, sft_dir, params)


def label_arguments(labels: list[str] | None) -> dict:
    """from_pretrained arguments that give a model one output per label, named, trained with one class per row
    (whatever `problem_type` the checkpoint names); a checkpoint's head of another size is replaced."""
    if not labels:
        return {}
    return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)}, "ignore_mismatched_sizes": True,
            "problem_type": "single_label_classification"}


def replaced_head(config: dict, labels: list[str]) -> str | None:
    """A note when the checkpoint (its config.json as `config`) has a classification head of another size than
    `labels`, which label_arguments replaces, or of their size for other classes, whose outputs then start
    from the checkpoint's by position; None otherwise."""
    names = head_classes(config)
    if not names or names == list(labels):
        return None
    if len(names) == len(labels):
        if placeholder_classes(names):  # no classes known
            return None
        return (f"note: model.name: the checkpoint's classification head was trained for other classes "
                f"({', '.join(names)}); each of the data's classes ({', '.join(labels)}) starts from the output in its "
                "place; set data.labels to give them another order")
    return (f"note: model.name: the checkpoint's classification head has {len(names)} output(s) "
            f"({', '.join(names)}); a new head for the {len(labels)} classes replaces it, "
            "starting from a fixed seed")


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
