"""params.yaml as pydantic models: `kind`, and one section per stage. The sections here hold what every
kind has; each kind's package extends them with its own settings (`kinds/<kind>/params.py`), so a setting
is accepted exactly where a kind declares it. `load_params()` validates the whole file against the kind's
models, so a typo, or a setting the kind does not have, fails every stage loudly:
`lora.rnak: unknown parameter; did you mean lora.r?`.
"""

import difflib
from pathlib import Path
from typing import Literal

import yaml
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from slothline.artifacts import PARAMS_FILE
from slothline.errors import SlothlineError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ModelParams(Section):
    name: str = "builtin:tiny-qwen3"
    revision: str | None = None
    max_seq_length: int = Field(512, ge=16)
    load_in_4bit: bool = False
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"


class Source(Section):
    path: str = Field(min_length=1, description="local file/directory or hub dataset id")
    format: str = Field(description="one of the kind's data formats")
    name: str | None = None
    weight: float = Field(1.0, gt=0)
    split: str = "train"
    config: str | None = Field(None, description="a hub dataset's configuration (subset), e.g. main for openai/gsm8k")
    max_samples: int | None = Field(None, ge=1)
    on_error: Literal["fail", "skip"] = "fail"

    @property
    def label(self) -> str:
        return self.name or Path(self.path).stem


class DataParams(Section):
    sources: list[Source] = Field(min_length=1)
    test_sources: list[Source] = Field([], description="held-out sources: their rows are the test split, whole")
    total: int | None = Field(None, ge=1)
    val_fraction: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.1, ge=0, lt=1)
    seed: int = 3407
    dedupe: bool = True

    @model_validator(mode="after")
    def _check(self):
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"val_fraction + test_fraction must be < 1 (got {self.val_fraction} + "
                f"{self.test_fraction}); lower one of them so a training split remains"
            )
        labels = [source.label for _, source in self.located_sources()]
        if len(set(labels)) != len(labels):
            raise ValueError(f"source names must be unique (got {labels}); set `name:` on each source")
        return self

    def located_sources(self) -> list[tuple[str, "Source"]]:
        """(where, source) of every source, training and held-out: `data.sources[0]`, `data.test_sources[1]`."""
        return [(f"data.{section}[{i}]", source) for section in ("sources", "test_sources")
                for i, source in enumerate(getattr(self, section))]


class LoraParams(Section):
    r: int = Field(16, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    bias: Literal["none", "all", "lora_only"] = "none"
    target_modules: list[str] | None = Field(None, min_length=1, description="null: the model family's default")
    use_rslora: bool = False
    loftq: bool = False

    @field_validator("target_modules", mode="before")
    @classmethod
    def _layer_names(cls, value):
        if isinstance(value, str):  # PEFT's "all-linear", or one name
            raise ValueError(f"a list of layer names, like [q_proj, v_proj], or null for the model family's default "
                             f"(got the string {value!r})")
        return value


class TrainParams(Section):
    backend: Literal["auto", "unsloth", "hf"] = "auto"
    full_finetuning: bool = False
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, ge=-1, description="-1: run `epochs` epochs")
    per_device_batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    learning_rate: float = Field(2e-4, gt=0)
    warmup_steps: int = Field(5, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    lr_scheduler: str = "linear"
    lr_scheduler_kwargs: dict = Field({}, description="the scheduler's own arguments (cosine_with_min_lr: min_lr_rate)")
    optim: str = "auto"
    gradient_checkpointing: bool = True
    seed: int = 3407
    logging_steps: int = Field(1, ge=1)
    eval_steps: int = Field(50, ge=1, description="val loss every this many steps (with a val split)")
    save_steps: int = Field(50, ge=1)
    save_total_limit: int | None = Field(2, ge=1, description="checkpoints kept (the best one besides); null: all")
    load_best_model_at_end: bool = False
    metric_for_best_model: str = Field("auto", description="auto: the kind's first val metric")
    early_stopping_patience: int | None = Field(None, ge=1, description="evaluations without improvement")
    num_gpus: int | Literal["auto"] = Field(1, description="GPUs of this host, one DDP process each; auto: all")

    @model_validator(mode="after")
    def _check_best_model(self):
        if self.load_best_model_at_end and self.save_steps % self.eval_steps:
            raise ValueError(f"load_best_model_at_end keeps the checkpoint of the best evaluation, so save_steps "
                             f"({self.save_steps}) must be a multiple of eval_steps ({self.eval_steps})")
        return self

    @property
    def tracks_best_model(self) -> bool:
        """Whether training follows a best-model metric (to load the best model, or to stop early)."""
        return self.load_best_model_at_end or self.early_stopping_patience is not None

    @field_validator("num_gpus", mode="before")
    @classmethod
    def _check_num_gpus(cls, value):
        if value == "auto" or (type(value) is int and value >= 1):
            return value
        raise ValueError("must be a number of GPUs (1, 2, ...) or auto")


class EvaluateParams(Section):
    max_samples: int | None = Field(100, ge=1, description="test rows scored, the first of the split; null: all")
    batch_size: int = Field(16, ge=1)
    seed: int = 3407
    compare_base: bool = True


class MergeParams(Section):
    save_method: Literal["merged_16bit", "merged_4bit", "lora"] = "merged_16bit"


class PushParams(Section):
    """push: what the push stage uploads, in one commit, to which Hub repository."""

    repo_id: str = Field(description="namespace/name on the Hugging Face Hub")
    what: list[Literal["adapter", "merged", "gguf", "onnx"]] = Field(["merged"], min_length=1)
    private: bool = Field(True, description="visibility of a repository the push creates (existing ones keep theirs)")
    revision: str | None = Field(None, description="branch to commit to (created when missing); null: default branch")

    @field_validator("repo_id")
    @classmethod
    def _namespace_and_name(cls, repo_id: str) -> str:
        try:
            validate_repo_id(repo_id)
        except HFValidationError as err:
            raise ValueError(str(err))
        if "/" not in repo_id:
            raise ValueError(f"must be namespace/name: your user or organization, then the model (e.g. me/{repo_id})")
        return repo_id

    @field_validator("what")
    @classmethod
    def _each_once(cls, what: list[str]) -> list[str]:
        if len(set(what)) != len(what):
            raise ValueError("lists an item twice; list each once")
        return what


class PreferenceParams(Section):
    """preference: the stage after train. Kinds without preference methods only pass the SFT model on."""

    method: Literal["none"] = Field("none", description="none: the tuned model is the SFT model")
    sources: list[Source] = Field([], max_length=0, description="preference data (causal_lm models only)")
    total: None = None


class ExportParams(Section):
    formats: list[str] = Field([], description="the kind's export formats")


class Params(Section):
    """The whole file. Each kind subclasses it with its own section models (`kinds/<kind>/params.py`)."""

    kind: str
    model: ModelParams = ModelParams()
    data: DataParams
    lora: LoraParams = LoraParams()
    train: TrainParams = TrainParams()
    preference: PreferenceParams = PreferenceParams()
    evaluate: EvaluateParams = EvaluateParams()
    merge: MergeParams = MergeParams()
    export: ExportParams = ExportParams()
    push: PushParams | None = None

    @model_validator(mode="after")
    def _check(self):
        if self.lora.loftq and self.model.load_in_4bit:
            raise ValueError("lora.loftq quantises the 16-bit base itself while it initialises LoRA; "
                             "set model.load_in_4bit: false")
        push = self.push
        for fmt in ("gguf", "onnx"):
            if push and fmt in push.what and fmt not in self.export.formats:
                raise ValueError(f"push.what lists {fmt}, but export.formats has no {fmt}, so no {fmt.upper()} file "
                                 f"is written; add {fmt} to export.formats, or remove {fmt} from push.what")
        if push and "merged" in push.what and self.merge.save_method == "lora":
            raise ValueError("push.what lists merged, but merge.save_method: lora writes no merged model; push "
                             "adapter instead, or set merge.save_method: merged_16bit")
        if push and "adapter" in push.what and self.train.full_finetuning:
            raise ValueError("push.what lists adapter, but train.full_finetuning: true trains no adapter; push "
                             "merged instead")
        return self


def load_params(path: Path = PARAMS_FILE) -> Params:
    """Read params.yaml and validate it against its kind's models; raise SlothlineError naming each bad key
    and the fix."""
    from slothline import kinds

    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise SlothlineError(f"{path}: not found; run from the project root, where params.yaml lives")
    except yaml.YAMLError as err:
        raise SlothlineError(f"{path}: not valid YAML: {err}")
    if not isinstance(raw, dict):
        raise SlothlineError(f"{path}: expected sections (kind, model, data, ...), got {type(raw).__name__}")
    if "kind" not in raw:
        raise SlothlineError(f"{path}: kind: missing; set it to one of {', '.join(kinds.names())} "
                             "(`dvc exp run -S kind=vision` composes that kind's defaults)")
    schema = kinds.get(raw["kind"]).Params
    try:
        return schema.model_validate(raw)
    except ValidationError as err:
        problems = "\n".join(f"  {describe(e, schema)}" for e in err.errors())
        raise SlothlineError(f"{path}: invalid parameters:\n{problems}")


def describe(error: dict, schema: type[BaseModel]) -> str:
    """One line of a pydantic error: the dotted key, what is wrong and, for an unknown key, the closest
    known one (as the kind's models define them)."""
    loc = error["loc"]
    key = ".".join(str(part) if isinstance(part, str) else f"[{part}]" for part in loc).replace(".[", "[")
    if error["type"] == "extra_forbidden":
        parent_model = model_at(schema, loc[:-1])
        valid = list(parent_model.model_fields) if parent_model else []
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.4)
        parent = key.rsplit(".", 1)[0] + "." if "." in key else ""
        hint = f"did you mean {parent}{close[0]}?" if close else f"valid keys here: {', '.join(valid)}"
        kind = schema.model_fields["kind"].default
        return f"{key}: unknown parameter for {kind} models; {hint}"
    if error["type"] == "missing":
        return f"{key}: required parameter is missing"
    allowed = error.get("ctx", {}).get("expected")
    got = f" (got {error['input']!r})" if "input" in error and not isinstance(error["input"], dict) else ""
    message = f"must be one of {allowed}" if allowed else error["msg"].removeprefix("Value error, ")
    return f"{key or 'params'}: {message}{got}"


def model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class found by walking `loc` (field names and list indices) from `model`."""
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        inner = getattr(annotation, "__args__", None)
        model = inner[0] if inner and isinstance(inner[0], type) else annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
    return model
