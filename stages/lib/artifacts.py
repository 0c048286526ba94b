"""The artifact contract: where each stage's outputs live, and the manifest train writes next to the
adapter so that evaluate, merge and export know what they load without probing files."""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from stages.lib.errors import SlothlineError
from stages.lib.outputs import write_json

PREPARED_DIR = Path("data/prepared")
SPLITS = ("train", "val", "test")
ADAPTER_DIR = Path("models/adapter")
CHECKPOINTS_DIR = Path("models/checkpoints")
MERGED_DIR = Path("models/merged")
EXPORT_DIR = Path("models/export")
THUMBNAILS_DIR = Path("metrics/thumbnails")  # images of the evaluated samples, beside metrics/report.md
MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class Manifest:
    """What train produced: `method` lora (an adapter over `base_model`) or full (a whole model)."""

    kind: str
    method: str
    base_model: str  # model.name as the user wrote it (hub id, local path or builtin:*)
    revision: str | None
    backend: str
    precision: str
    load_in_4bit: bool
    max_seq_length: int
    labels: list[str] | None = None  # classifiers: the classes, in the order of the head's outputs

    def write(self, directory: Path) -> None:
        write_json(Path(directory) / MANIFEST_FILE, asdict(self))

    @classmethod
    def read(cls, directory: Path = ADAPTER_DIR) -> "Manifest":
        path = Path(directory) / MANIFEST_FILE
        if not path.is_file():
            raise SlothlineError(f"{directory}: no trained adapter or model there; run `dvc repro train` first "
                                 f"(it writes {MANIFEST_FILE} beside them)")
        return cls(**json.loads(path.read_text()))


def read_split(name: str) -> list[dict]:
    """The rows prepare wrote for one split; a clear error when prepare has not run."""
    path = PREPARED_DIR / f"{name}.jsonl"
    if not path.is_file():
        raise SlothlineError(f"{path}: missing; run `dvc repro prepare` first")
    lines = path.read_text(encoding="utf-8").split("\n")  # not splitlines(): U+2028 is legal inside a string
    return [json.loads(line) for line in lines if line]
