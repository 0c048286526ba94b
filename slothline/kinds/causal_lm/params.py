"""The params of causal LMs: the shared sections with chat data, response-only loss, packing, preference
tuning, decoding and GGUF export."""

from typing import Literal

from pydantic import Field, model_validator

from slothline.export import GGUFExport
from slothline.kinds._generative.params import ChatData, ChatSource, ChatTrain, GenerationEvaluate
from slothline.params import Params as SharedParams
from slothline.params import Section


class CausalTrain(ChatTrain):
    sft: bool = Field(True, description="false: no supervised fine-tuning; preference tuning starts from model.name")
    packing: bool = False
    padding_free: Literal["auto"] | bool = Field(
        "auto", description="concatenate each batch's rows (no padding, varlen attention); auto: on a GPU")


class PreferenceSource(ChatSource):
    format: Literal["preference", "kto"] = Field(description="preference: prompt, chosen, rejected; kto: prompt, "
                                                             "completion, label")


class Preference(Section):
    """preference: DPO, ORPO or KTO on the SFT model (a new LoRA adapter on model.name with train.sft: false). The
    run's schedule is its own; backend, optimizer, precision, seed and LoRA settings are train's and lora's."""

    method: Literal["none", "dpo", "orpo", "kto"] = "none"
    sources: list[PreferenceSource] = Field([], description="split by data.val_fraction, test_fraction and seed")
    total: int | None = Field(None, ge=1, description="rows drawn across sources by weight; null: all")
    beta: float = Field(0.1, gt=0, description="DPO/KTO: how far from the reference model; ORPO: the odds-ratio weight")
    loss_type: str = Field("auto", description="the TRL trainer's loss_type; auto: its default (dpo sigmoid, kto kto)")
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, ge=-1, description="-1: run `epochs` epochs")
    per_device_batch_size: int = Field(8, ge=1, description="pairs per batch (KTO: answers, at least 2)")
    gradient_accumulation_steps: int = Field(1, ge=1)
    learning_rate: float = Field(5e-6, gt=0)
    warmup_steps: int = Field(0, ge=0)
    logging_steps: int = Field(1, ge=1)
    eval_steps: int = Field(50, ge=1)
    save_steps: int = Field(50, ge=1)

    @model_validator(mode="after")
    def _unique_names(self):
        labels = [s.label for s in self.sources]
        if len(set(labels)) != len(labels):
            raise ValueError(f"source names must be unique (got {labels}); set `name:` on each source")
        return self


class Params(SharedParams):
    kind: Literal["causal_lm"] = "causal_lm"
    data: ChatData
    train: CausalTrain = CausalTrain()
    preference: Preference = Preference()
    evaluate: GenerationEvaluate = GenerationEvaluate()
    export: GGUFExport = GGUFExport()
