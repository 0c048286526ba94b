"""Pydantic models of params.yaml: every knob, grouped by the stage that reads it.

`load_params()` validates the whole file, so a typo anywhere fails every stage loudly:
`lora.rnak: unknown parameter; did you mean lora.r?`.
"""

import difflib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from stages.lib.errors import SlothlineError

PARAMS_FILE = Path("params.yaml")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ModelParams(Section):
    name: str = "builtin:tiny-qwen3"
    revision: str | None = None
    kind: Literal["causal_lm", "vision", "classifier"] | None = Field(None, description="inferred when omitted")
    max_seq_length: int = Field(512, ge=16)
    load_in_4bit: bool = False
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"


class Source(Section):
    path: str = Field(min_length=1, description="local file/directory or hub dataset id")
    format: Literal["alpaca", "sharegpt", "messages", "reasoning", "classification"]
    name: str | None = None
    weight: float = Field(1.0, gt=0)
    split: str = "train"
    max_samples: int | None = Field(None, ge=1)
    template: Literal["chat", "alpaca"] = "chat"
    on_error: Literal["fail", "skip"] = "fail"

    @property
    def label(self) -> str:
        return self.name or Path(self.path).stem


class DataParams(Section):
    sources: list[Source] = Field(min_length=1)
    total: int | None = Field(None, ge=1)
    val_fraction: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.1, ge=0, lt=1)
    seed: int = 3407
    system_prompt: str | None = None
    enable_thinking: bool = False
    dedupe: bool = True
    labels: list[str] | None = Field(None, min_length=2, description="classifier: the classes, in this order")

    @model_validator(mode="after")
    def _check(self):
        if self.labels and len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels lists a class twice ({self.labels}); list each once")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"val_fraction + test_fraction must be < 1 (got {self.val_fraction} + "
                f"{self.test_fraction}); lower one of them so a training split remains"
            )
        labels = [s.label for s in self.sources]
        if len(set(labels)) != len(labels):
            raise ValueError(f"source names must be unique (got {labels}); set `name:` on each source")
        return self


class LoraParams(Section):
    r: int = Field(16, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    bias: Literal["none", "all", "lora_only"] = "none"
    target_modules: list[str] | None = Field(None, min_length=1, description="null: the model family's default")
    use_rslora: bool = False
    loftq: bool = False


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
    optim: str = "auto"
    gradient_checkpointing: bool = True
    packing: bool = False
    train_on_responses_only: bool = True
    seed: int = 3407
    logging_steps: int = Field(1, ge=1)
    eval_steps: int = Field(50, ge=1, description="val loss every this many steps (with a val split)")
    save_steps: int = Field(50, ge=1)


class EvaluateParams(Section):
    max_samples: int = Field(100, ge=1)
    batch_size: int = Field(16, ge=1)
    max_new_tokens: int = Field(64, ge=1)
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int = 3407
    compare_base: bool = True


class MergeParams(Section):
    save_method: Literal["merged_16bit", "merged_4bit", "lora"] = "merged_16bit"


class ExportParams(Section):
    formats: list[Literal["gguf", "onnx"]] = ["gguf"]
    gguf_quantization: list[str] = ["q8_0"]

    @model_validator(mode="after")
    def _check(self):
        if len(set(self.gguf_quantization)) != len(self.gguf_quantization):
            raise ValueError(f"gguf_quantization lists a quantization twice ({self.gguf_quantization}); list each once")
        return self


class Params(Section):
    model: ModelParams = ModelParams()
    data: DataParams
    lora: LoraParams = LoraParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    merge: MergeParams = MergeParams()
    export: ExportParams = ExportParams()

    @model_validator(mode="after")
    def _check(self):
        if self.lora.loftq and self.model.load_in_4bit:
            raise ValueError("lora.loftq quantises the 16-bit base itself while it initialises LoRA; "
                             "set model.load_in_4bit: false")
        return self


def load_params(path: Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml; raise SlothlineError naming each bad key and the fix."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise SlothlineError(f"{path}: not found; run from the project root, where params.yaml lives")
    except yaml.YAMLError as err:
        raise SlothlineError(f"{path}: not valid YAML: {err}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        problems = "\n".join(f"  {_describe(e)}" for e in err.errors())
        raise SlothlineError(f"{path}: invalid parameters:\n{problems}")


def _describe(error: dict) -> str:
    loc = error["loc"]
    key = ".".join(str(part) if isinstance(part, str) else f"[{part}]" for part in loc).replace(".[", "[")
    if error["type"] == "extra_forbidden":
        parent_model = _model_at(Params, loc[:-1])
        valid = list(parent_model.model_fields) if parent_model else []
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.4)
        parent = key.rsplit(".", 1)[0] + "." if "." in key else ""
        hint = f"did you mean {parent}{close[0]}?" if close else f"valid keys here: {', '.join(valid)}"
        return f"{key}: unknown parameter; {hint}"
    if error["type"] == "missing":
        return f"{key}: required parameter is missing"
    allowed = error.get("ctx", {}).get("expected")
    got = f" (got {error['input']!r})" if "input" in error and not isinstance(error["input"], dict) else ""
    message = f"must be one of {allowed}" if allowed else error["msg"].removeprefix("Value error, ")
    return f"{key or 'params'}: {message}{got}"


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
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
