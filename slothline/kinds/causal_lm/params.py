"""The params of causal LMs: the shared sections with chat data, response-only loss, packing, decoding and
GGUF export."""

from typing import Literal

from pydantic import Field

from slothline.export import GGUFExport
from slothline.kinds._generative.params import ChatData, ChatTrain, GenerationEvaluate
from slothline.params import Params as SharedParams


class CausalTrain(ChatTrain):
    packing: bool = False
    padding_free: Literal["auto"] | bool = Field(
        "auto", description="concatenate each batch's rows (no padding, varlen attention); auto: on a GPU")


class Params(SharedParams):
    kind: Literal["causal_lm"] = "causal_lm"
    data: ChatData
    train: CausalTrain = CausalTrain()
    evaluate: GenerationEvaluate = GenerationEvaluate()
    export: GGUFExport = GGUFExport()
