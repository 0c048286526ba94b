"""The params of sequence classifiers: the shared sections, with the classes in `data.labels` and ONNX export."""

from typing import Literal

from pydantic import Field, field_validator

from slothline.params import DataParams, ExportParams
from slothline.params import Params as SharedParams


class ClassifierData(DataParams):
    labels: list[str] | None = Field(None, min_length=2, description="the classes, in the order of the head's outputs")

    @field_validator("labels")
    @classmethod
    def _each_once(cls, labels: list[str] | None) -> list[str] | None:
        if labels and len(set(labels)) != len(labels):
            raise ValueError(f"lists a class twice ({labels}); list each once")
        return labels


class OnnxExport(ExportParams):
    formats: list[str] = ["onnx"]


class Params(SharedParams):
    kind: Literal["classifier"] = "classifier"
    data: ClassifierData
    export: OnnxExport = OnnxExport()
