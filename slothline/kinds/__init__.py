"""Model kinds: one package each under kinds/ (causal_lm, vision, classifier), behind the Task protocol
below. Stage scripts call only the protocol; `get(name)` imports the kind that params.yaml's `kind` names,
and nothing else, so a stage runs (and DVC tracks) only its own kind's code. A new kind is a new package
here that implements the protocol, plus its defaults in conf/kind/<name>.yaml.
"""

import importlib
import pkgutil
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import ModuleType
from typing import Protocol

from slothline.errors import SlothlineError


@dataclass(frozen=True)
class Evaluation:
    """What evaluate writes: metrics per model (`tuned`, and `base` when compared), the samples table, each
    model's actual/predicted class pairs ({} without classes), markdown the kind adds to the report, and the
    settings that decided the predictions ({} when only the model does)."""

    metrics: dict[str, dict]
    samples: list[dict]
    confusion: dict[str, list[dict]]
    report_sections: str
    settings: dict


class Task(Protocol):
    """What a kind package provides (module-level names)."""

    NAME: str  # the value of `kind`
    Params: type  # its params models: the shared sections extended with its own settings
    AUTO_CLASS: str  # the transformers auto class that loads its models
    PEFT_TASK_TYPE: str  # PEFT's task type for its LoRA
    FORMATS: tuple[str, ...]  # data.sources[].format values it reads
    EXPORT_FORMATS: tuple[str, ...]  # export.formats values it writes
    VAL_METRICS: tuple[str, ...]  # what the trainer measures on the val split; the first is `auto`
    STRATIFY_BY: str | None  # the record field whose classes every split keeps (prepare), or None
    PREFERENCE: ModuleType | None  # preference tuning (its data reader, trainer and metrics), or None

    def check(self, params) -> None:
        """Refuse what a later stage of this kind would refuse, before anything runs (check_params)."""

    def load_processor(self, source: str, revision: str | None): ...

    def to_record(self, row, source, params, processor) -> tuple[dict, dict]:
        """(canonical fields, rendered fields) of one input row (prepare; the id hashes the canonical ones);
        raises RowError."""

    def finish_splits(self, splits: dict, processor, params, out_dir) -> dict:
        """Check and adjust the split records in place and write the files they refer to into `out_dir`
        (prepare's staging directory); returns the kind's statistics for metrics/data.json."""

    def labels(self, rows: list[dict]) -> list[str] | None:
        """The classes of the prepared train rows, in the order of the model's outputs; None without classes."""

    def lora_extras(self, params, model) -> dict:
        """LoRA settings beyond the shared `lora.*` ones."""

    def build_trainer(self, backend, runtime, params, model, processor, train_rows, val_rows, output_dir, callbacks):
        """The configured trainer (train); backend differences are hooks of `backend`."""

    def loss_coverage(self, model, processor, params, train_rows: list[dict], val_rows: list[dict]) -> dict:
        """What the train and val losses are computed on, for metrics/train.json (`loss_on`, and the kind's
        token counts), so that a diff shows when a loss covers other tokens than before."""

    def predict(self, model, processor, rows: list[dict], params) -> list: ...

    def evaluate(self, model, processor, rows: list[dict], params, base, media_dir) -> Evaluation:
        """Predict and score the test rows with the tuned model and, where `base` (a context manager of the
        base model) is given, with the base model; files the samples link go into `media_dir`."""

    def export(self, formats: list[str], model_dir, out_dir, params) -> dict:
        """Write the merged model in each of `formats` into `out_dir`, verified; returns metrics/export.json."""


def names() -> list[str]:
    """Every kind package under kinds/ (those starting with _ hold shared code)."""
    return sorted(module.name for module in pkgutil.iter_modules(__path__) if not module.name.startswith("_"))


def get(name: str) -> Task:
    """The kind package called `name`, imported now."""
    if name not in names():
        raise SlothlineError(f"kind: {name!r} is not a model kind; use one of {', '.join(names())}")
    return importlib.import_module(f"{__name__}.{name}")


def check(task: Task, params) -> None:
    """Every refusal known before prepare runs: the model is of this kind and has the context asked for, the
    data and export formats are the kind's, the best-model metric is one the kind measures, the splits exist
    that later stages need, transformers knows the scheduler and optimizer, this machine can run what is
    asked (GPU-only settings, GPU counts), `lora.target_modules` name layers the model has; then the kind's
    own `check`."""
    from slothline import runtime, training
    from slothline.dvcfile import require_model_declared
    from slothline.models import kind_of_config, model_config

    config = model_config(params.model.name, params.model.revision)
    inferred = kind_of_config(config)
    if inferred and inferred != task.NAME:
        raise SlothlineError(f"kind: {task.NAME}, but {params.model.name}'s config is that of a {inferred} model; "
                             f"switch with `dvc exp run -S kind={inferred}` (or set kind: {inferred})")
    context = positions(config)
    if context and params.model.max_seq_length > context:
        offset = "" if context == max_positions(config) else ", less pad_token_id + 1: positions start after it"
        raise SlothlineError(f"model.max_seq_length: {params.model.max_seq_length} is above the {context} positions "
                             f"{params.model.name} has (max_position_embeddings{offset}); set it to at most {context}")
    for where, source in params.data.located_sources():
        if source.format not in task.FORMATS:
            raise SlothlineError(f"{where}.format: {source.format} is not a format of {task.NAME} models; "
                                 f"use one of {', '.join(task.FORMATS)}")
    check_export_formats(task, params.export.formats)
    if params.merge.save_method == "lora" and params.train.full_finetuning:
        raise SlothlineError("merge.save_method: lora keeps the LoRA adapter, but train.full_finetuning trains the "
                             "whole model (no adapter); set merge.save_method: merged_16bit")
    if params.merge.save_method == "lora" and (unconverted := [f for f in params.export.formats if f != "gguf"]):
        adapter_gguf = " or export.formats: [gguf] (a GGUF adapter beside its base model's GGUF)," * (
            "gguf" in task.EXPORT_FORMATS)
        raise SlothlineError(f"merge.save_method: lora writes the adapter alone, which export.formats "
                             f"({', '.join(unconverted)}) cannot convert; set merge.save_method: merged_16bit,"
                             f"{adapter_gguf} or export.formats: []")
    if params.data.test_fraction == 0 and not params.data.test_sources:
        raise SlothlineError("data.test_fraction: 0 leaves no test split, but evaluate scores the tuned model on it; "
                             "set it above 0 (e.g. 0.1), or give data.test_sources")
    training.check_training(task, params)
    runtime.check_machine(params, runtime.probe())
    require_model_declared(params.model.name, stages_reading_the_model(params))
    task.check(params)


def stages_reading_the_model(params) -> list[str]:
    """The stages that read model.name's files: prepare (the processor), train, preference (where it tunes), and
    for an adapter evaluate (its base; a fully fine-tuned model's base where evaluate compares with it), merge
    (the base it merges into, unless it keeps the adapter) and export (a GGUF adapter's base.gguf)."""
    adapter = not params.train.full_finetuning
    save_method = params.merge.save_method
    return ["prepare", *["train"] * getattr(params.train, "sft", True),
            *["preference"] * (params.preference.method != "none"),
            *["evaluate"] * (adapter or params.evaluate.compare_base),
            *["merge"] * (adapter and save_method != "lora"),
            *["export"] * (adapter and save_method == "lora" and "gguf" in params.export.formats)]


def max_positions(config: dict) -> int | None:
    """max_position_embeddings of a config.json (a vision model's in its text_config); None where it has none."""
    return config.get("max_position_embeddings") or (config.get("text_config") or {}).get("max_position_embeddings")


def positions(config: dict) -> int | None:
    """The tokens a model's position embeddings hold: `max_positions`, less pad_token_id + 1 for the families whose
    position ids start after the padding id (RoBERTa's and XLM-R's 514 hold 512)."""
    from slothline.families import family

    count = max_positions(config)
    if count and family(config.get("model_type")).positions_after_padding:
        count -= (config.get("pad_token_id") or 0) + 1
    return count


def context_length(config, tokenizer=None) -> int | None:
    """The most tokens of a row the model takes (`config`: its config.json as a dict, or a loaded model's config):
    its `positions`, or the tokenizer's model_max_length where that is fewer (a tokenizer that sets none has
    transformers' 1e30); None where neither is known."""
    if not isinstance(config, dict):  # its attribute names map GPT-2's n_positions to max_position_embeddings
        config = {**config.to_dict(), "max_position_embeddings": getattr(config, "max_position_embeddings", None)}
    set_by_tokenizer = tokenizer.model_max_length if tokenizer and tokenizer.model_max_length < 10**12 else None
    limits = [limit for limit in (positions(config), set_by_tokenizer) if limit]
    return min(limits) if limits else None


def check_export_formats(task: Task, formats: list[str]) -> None:
    """Refuse `export.formats` the kind does not write (check_params, and export itself)."""
    unsupported = [f for f in formats if f not in task.EXPORT_FORMATS]
    if unsupported:
        offered = f"use {', '.join(task.EXPORT_FORMATS)}" if task.EXPORT_FORMATS else (
            f"their export is models/merged/, which transformers' {task.AUTO_CLASS} loads; set export.formats: []")
        raise SlothlineError(f"export.formats: {', '.join(unsupported)} is not offered for {task.NAME} models; {offered}")


def with_base(model, base: Callable[[], AbstractContextManager] | None, run: Callable) -> dict:
    """`run(model)` for the tuned model and, when `base` is given, inside `base()` for the base model:
    {"tuned": ..., "base": ...}. The base model runs first: generating with a LoRA adapter merged in place and
    unmerged again leaves 16-bit base weights rounded, not as they were."""
    results = {}
    if base is not None:
        with base() as base_model:
            results["base"] = run(base_model)
    return {"tuned": run(model), **results}
