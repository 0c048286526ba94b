"""The params the generating kinds (causal LM, vision) add to the shared sections: chat rendering in
`data`, response-only loss in `train`, and decoding in `evaluate`."""

from typing import Literal

from pydantic import Field, PositiveInt

from slothline.params import DataParams, EvaluateParams, Source, TrainParams


class ChatSource(Source):
    template: Literal["chat", "alpaca"] = "chat"


class ChatData(DataParams):
    sources: list[ChatSource] = Field(min_length=1)
    test_sources: list[ChatSource] = Field([], description="held-out sources: their rows are the test split, whole")
    system_prompt: str | None = None
    enable_thinking: bool = False


class ChatTrain(TrainParams):
    train_on_responses_only: bool = True


class GenerationEvaluate(EvaluateParams):
    batch_size: PositiveInt | Literal["auto"] = Field("auto", description="rows per batch; auto: 16 on the CPU, as many as "
                                                                  "batch_tokens holds on a GPU (at most 256)")
    batch_tokens: PositiveInt | Literal["auto"] = Field(
        "auto", description="on a GPU: rows x (longest prompt + max_new_tokens) per batch; auto: what fits in half "
                            "the free GPU memory")
    max_new_tokens: int = Field(64, ge=1)
    kv_cache: Literal["auto", "static", "dynamic"] = Field(
        "auto", description="static: compiled decode steps, which repay their compile on long evaluations; dynamic: "
                            "never compiled; auto: static on a GPU from 1,000 decode steps a pass (batches x "
                            "max_new_tokens)")
    sampling: Literal["params", "model"] = Field("params", description="model: the model's generation_config.json")
    temperature: float = Field(0.0, ge=0, description="0: greedy")
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0: off")
    min_p: float = Field(0.0, ge=0, lt=1, description="0: off")
    repetition_penalty: float = Field(1.0, gt=0, description="1: off")

    def decoding_params(self) -> dict:
        """The decoding knobs as written here (with sampling: params)."""
        return {"do_sample": self.temperature > 0, "temperature": self.temperature, "top_p": self.top_p,
                "top_k": self.top_k, "min_p": self.min_p, "repetition_penalty": self.repetition_penalty}
