"""The params of sequence classifiers: the shared sections, with the classes in `data.labels` and ONNX export."""

from typing import Literal

from pydantic import Field, field_validator

from slothline.params import DataParams, ExportParams
from slothline.params import Params as SharedParams


class ClassifierData(DataParams):
    labels: list[str] | None = Field(None, min_length=2, description="the classes, in the order of the head's outputs")

    @field_validator("labels", mode="before")
    @classmethod
    def _numbers_as_names(cls, labels):
        """`[1, 2, 3]` written without quotes names the classes "1", "2", "3" (then checked as names); YAML's
        booleans (`no`, `yes`, `true`, `off` unquoted) are refused with the quoting that keeps them names."""
        if isinstance(labels, list):
            if any(isinstance(label, bool) for label in labels):
                raise ValueError(f"YAML reads unquoted no/yes/true/false/on/off as booleans (got {labels}); quote the "
                                 "class names, like ['no', 'yes']")
            return [str(label) if isinstance(label, int) and not isinstance(label, bool) else label for label in labels]
        return labels

    @field_validator("labels")
    @classmethod
    def _each_once(cls, labels: list[str] | None) -> list[str] | None:
        if not labels:
            return labels
        if len(set(labels)) != len(labels):
            raise ValueError(f"lists a class twice ({labels}); list each once")
        if "" in labels:
            raise ValueError("lists an empty class name; every class needs a name")
        padded = [label for label in labels if label != label.strip()]
        if padded:
            raise ValueError(f"{padded[0]!r} has spaces around it, which every label read from the data loses; "
                             f"write {padded[0].strip()!r}")
        collisions = [(name, labels[int(name)]) for name in labels
                      if is_number(name) and int(name) < len(labels) and labels[int(name)] != name]
        if collisions:
            name, other = collisions[0]
            raise ValueError(
                f"class names and class ids collide: {name!r} names a class and is also the id of {other!r} (ids count "
                f"from 0), so a label {name} in the data could mean either and two classes would merge. If the data's "
                "labels are these names, remove data.labels (numeric classes are then ordered by value); if they are "
                f"ids 0..{len(labels) - 1}, give data.labels non-numeric names (like "
                f"{', '.join(repr(f'class_{label}') for label in labels[:2])}, ...)")
        return labels


def is_number(label: str) -> bool:
    """Whether a label is written as a non-negative integer (a class id when data.labels are given)."""
    return label.isascii() and label.isdigit()


class OnnxExport(ExportParams):
    formats: list[str] = ["onnx"]


class Params(SharedParams):
    kind: Literal["classifier"] = "classifier"
    data: ClassifierData
    export: OnnxExport = OnnxExport()
