"""The params of vision-language models: the shared sections with chat data and image limits, LoRA scoped to
the towers and blocks the `finetune_*` flags select, response-only loss and decoding. No packing (TRL and
Unsloth pack text rows only), and GGUF export on request (the language model's GGUF and the mmproj of the vision
encoder)."""

from typing import Literal

from pydantic import Field, model_validator

from slothline.export import GGUFExport
from slothline.kinds._generative.params import ChatData, ChatSource, ChatTrain, GenerationEvaluate
from slothline.params import LoraParams
from slothline.params import Params as SharedParams


class VisionSource(ChatSource):
    template: Literal["chat"] = Field("chat", description="vision rows use the model's chat template")


class VisionData(ChatData):
    sources: list[VisionSource] = Field(min_length=1)
    test_sources: list[VisionSource] = Field([], description="held-out sources: their rows are the test split, whole")
    image_min_pixels: int | None = Field(None, ge=1, description="smaller images are refused")
    image_max_pixels: int | None = Field(None, ge=1, description="larger images are scaled down to fit")

    @model_validator(mode="after")
    def _check_pixels(self):
        if self.image_min_pixels and self.image_max_pixels and self.image_min_pixels > self.image_max_pixels:
            raise ValueError(f"image_min_pixels ({self.image_min_pixels}) is above image_max_pixels "
                             f"({self.image_max_pixels}); lower it")
        return self


class VisionLora(LoraParams):
    """Where `target_modules` attach, as Unsloth's FastVisionModel.get_peft_model flags say it."""

    finetune_vision_layers: bool = True
    finetune_language_layers: bool = True
    finetune_attention_modules: bool = True
    finetune_mlp_modules: bool = True

    @model_validator(mode="after")
    def _check_scope(self):
        if not (self.finetune_vision_layers or self.finetune_language_layers) or not (
                self.finetune_attention_modules or self.finetune_mlp_modules):
            raise ValueError("finetune_*: nothing left to train; set finetune_vision_layers or "
                             "finetune_language_layers, and finetune_attention_modules or finetune_mlp_modules, to true")
        return self


class VisionExport(GGUFExport):
    formats: list[str] = []  # models/merged/ is the export unless `[gguf]` asks for llama.cpp's files


class Params(SharedParams):
    kind: Literal["vision"] = "vision"
    data: VisionData
    lora: VisionLora = VisionLora()
    train: ChatTrain = ChatTrain()
    evaluate: GenerationEvaluate = GenerationEvaluate()
    export: VisionExport = VisionExport()
