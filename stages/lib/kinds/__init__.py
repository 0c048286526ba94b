"""Model kinds: one module each, behind the same small Task protocol. Stage scripts call only the
protocol; what differs between kinds (records, trainer, prediction, metrics) lives in the kind's module.
A kind is named by `model.kind` or inferred from the model's config."""

from typing import Protocol

from stages.lib.errors import SlothlineError
from stages.lib.kinds import causal_lm, vision
from stages.lib.params import Params

KINDS = {module.NAME: module for module in (causal_lm, vision)}


class Task(Protocol):
    """What a kind module provides (module-level constants and functions)."""

    NAME: str  # the value of model.kind
    AUTO_CLASS: str  # the transformers auto class that loads its models
    PEFT_TASK_TYPE: str  # PEFT's task type for its LoRA
    DATA_FORMATS: tuple[str, ...]  # data.sources[].format values it reads
    VAL_METRICS: tuple[str, ...]  # what the trainer measures on the val split (train.metric_for_best_model)
    EXPORT_FORMATS: tuple[str, ...]  # export.formats values it supports

    def load_processor(self, source: str, revision: str | None): ...

    def to_record(self, row: dict, source, data, processor) -> tuple[dict, dict]:
        """(canonical fields, rendered fields) of one input row (prepare); raises RowError."""

    def finish_splits(self, splits: dict, processor, params: Params, out_dir) -> dict:
        """Check and adjust the split records in place and write the files they refer to into `out_dir`,
        the prepared data's staging directory (prepare); returns metrics for metrics/data.json."""

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
    return KINDS[kind]
