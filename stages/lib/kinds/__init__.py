"""Model kinds: one module each, behind the same small Task protocol. Stage scripts call only the
protocol; what differs between kinds (records, trainer, prediction, metrics) lives in the kind's module.
A kind is named by `model.kind` or inferred from the model's config."""

from typing import Protocol

from stages.lib.artifacts import MERGED_DIR
from stages.lib.errors import SlothlineError
from stages.lib.kinds import causal_lm, classifier, vision
from stages.lib.params import Params

KINDS = {module.NAME: module for module in (causal_lm, vision, classifier)}


class Task(Protocol):
    """What a kind module provides (module-level constants and functions)."""

    NAME: str  # the value of model.kind
    AUTO_CLASS: str  # the transformers auto class that loads its models
    PEFT_TASK_TYPE: str  # PEFT's task type for its LoRA
    DATA_FORMATS: tuple[str, ...]  # data.sources[].format values it reads
    VAL_METRICS: tuple[str, ...]  # what the trainer measures on the val split (train.metric_for_best_model)
    EXPORT_FORMATS: tuple[str, ...]  # export.formats values it supports
    STRATIFY_BY: str | None  # the record field whose classes every split keeps (prepare), or None
    INAPPLICABLE_PARAMS: tuple[str, ...]  # params it cannot apply: refused when set, ignored when left out

    def load_processor(self, source: str, revision: str | None): ...

    def to_record(self, row: dict, source, data, processor) -> tuple[dict, dict]:
        """(canonical fields, rendered fields) of one input row (prepare); raises RowError."""

    def finish_splits(self, splits: dict, processor, params: Params, out_dir) -> dict:
        """Check and adjust the split records in place and write the files they refer to into `out_dir`,
        the prepared data's staging directory (prepare); returns metrics for metrics/data.json."""

    def labels(self, rows: list[dict]) -> list[str] | None:
        """The classes of the prepared train rows, in the order of the model's outputs; None without classes."""

    def lora_kwargs(self, params: Params, model, backend: str) -> dict:
        """LoRA settings beyond the shared `lora.*` ones, for `backend`."""

    def build_trainer(self, runtime, params: Params, model, processor, train_rows, val_rows, output_dir, callbacks):
        """The configured trainer (train)."""

    def predict(self, model, processor, rows: list[dict], settings, desc: str) -> list: ...

    def evaluation_settings(self, model, settings) -> dict:
        """The settings that decide the predictions (evaluate records them in metrics/eval.json)."""

    def score(self, model, processor, rows: list[dict], predictions: list, settings) -> dict:
        """Metrics of one model's predictions on the test rows (evaluate); non-numbers get no delta."""

    def sample(self, row: dict, predictions: dict[str, object], media_dir) -> dict:
        """One row of the samples table: the question, the reference and each model's answer; files its
        cells link (thumbnails) go into `media_dir`, which becomes THUMBNAILS_DIR."""

    def confusion(self, rows: list[dict], predictions: list) -> list[dict]:
        """{"actual", "predicted"} per row for the confusion plot (evaluate); [] for kinds without classes."""

    def report_sections(self, rows: list[dict], predictions: dict[str, list], results: dict) -> str:
        """Markdown the kind adds to the evaluation report after the samples ("" for none)."""


def get(name: str) -> Task:
    return KINDS[name]


def for_params(params: Params) -> Task:
    """The kind of `model.name`: `model.kind`, else inferred from the model's config; a contradiction is an error."""
    from stages.lib.models import infer_kind

    inferred = infer_kind(params.model.name, params.model.revision)
    if params.model.kind and inferred and params.model.kind != inferred:
        raise SlothlineError(f"model.kind: {params.model.kind}, but {params.model.name}'s config is that of a "
                             f"{inferred} model; set model.kind: {inferred}, or leave it out")
    kind = params.model.kind or inferred
    if kind is None:
        raise SlothlineError(f"model.kind: cannot tell the kind of {params.model.name} from its config; "
                             f"set model.kind to one of {', '.join(KINDS)}")
    if kind not in KINDS:
        raise SlothlineError(f"model.kind: {kind} models are not supported yet; supported: {', '.join(KINDS)}")
    check_applicable(KINDS[kind], params)
    return KINDS[kind]


def check_applicable(task: Task, params: Params) -> None:
    """Refuse params that `task` cannot apply and that params.yaml sets to something that would matter
    (`data.sources[].template` names a key of every source). Left out, at their default or empty, they
    are ignored: a param that dvc.yaml names one by one (`export.gguf_quantization`) must stay in the file."""
    set_here = []
    for name in task.INAPPLICABLE_PARAMS:
        section, key = name.split(".", 1)
        if section == "data" and key.startswith("sources[]."):
            key = key.removeprefix("sources[].")
            set_here += [f"data.sources[{i}].{key}" for i, source in enumerate(params.data.sources)
                         if asks_for_something(source, key)]
        elif asks_for_something(getattr(params, section), key):
            set_here.append(name)
    if set_here:
        raise SlothlineError(f"params.yaml: {', '.join(set_here)} cannot apply to {task.NAME} models; remove "
                             f"{'it' if len(set_here) == 1 else 'them'} from params.yaml")


def check_export_formats(task: Task, formats: list[str]) -> None:
    """Refuse `export.formats` that `task`'s models do not offer (export, and check_params before training)."""
    unsupported = [f for f in formats if f not in task.EXPORT_FORMATS]
    if unsupported and not task.EXPORT_FORMATS:
        raise SlothlineError(f"export.formats: {', '.join(unsupported)} is not offered for {task.NAME} models; their "
                             f"export is {MERGED_DIR}/, a Hugging Face directory that transformers' {task.AUTO_CLASS} "
                             "and AutoProcessor load; set export.formats: []")
    if unsupported:
        raise SlothlineError(f"export.formats: {', '.join(unsupported)} is not offered for {task.NAME} models; "
                             f"use {', '.join(task.EXPORT_FORMATS)}")


def asks_for_something(section, key: str) -> bool:
    """`key` is set in params.yaml to a value other than its default, null or an empty list."""
    value = getattr(section, key)
    return key in section.model_fields_set and value not in (None, []) and value != type(section).model_fields[key].default
