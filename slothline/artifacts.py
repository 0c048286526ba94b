"""The artifact contract: every path a stage writes or reads (models, metrics, reports, the export layout),
the manifest train writes beside the tuned model so that evaluate, merge and export know what they load
without probing files, and the atomic writes every stage uses (an output appears whole or not at all)."""

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from slothline.errors import SlothlineError

PARAMS_FILE = Path("params.yaml")
PREPARED_DIR = Path("data/prepared")
SPLITS = ("train", "val", "test")
IMAGES_SUBDIR = "images"  # under the prepared data: a vision model's pictures, content-addressed
PREFERENCE_SPLITS_DIR = PREPARED_DIR / "preference"  # the preference rows, split as the SFT rows are
SFT_DIR = Path("models/sft")  # train's model: a PEFT adapter, or the whole model after full fine-tuning
TUNED_DIR = Path("models/tuned")  # the preference stage's: the SFT model preference-tuned, or passed on as it is
CHECKPOINTS_DIR = Path("models/checkpoints")
PREFERENCE_CHECKPOINTS_DIR = Path("models/preference_checkpoints")
MERGED_DIR = Path("models/merged")
SHARD_SIZE = "5GB"  # the merged model's safetensors shards: what the Hub and Unsloth write
EXPORT_DIR = Path("models/export")
ONNX_DIR = EXPORT_DIR / "onnx"
GGUF_FILE, MODELFILE = "model.gguf", "Modelfile"  # in EXPORT_DIR/<quantization>/
BASE_GGUF_FILE, ADAPTER_GGUF_FILE = "base.gguf", "adapter.gguf"  # there instead, for a LoRA adapter
MANIFEST_FILE = "manifest.json"

METRICS_DIR = Path("metrics")
PARAMS_CHECK = METRICS_DIR / "params_check.json"  # check_params's verdict, a dep of prepare
DATA_METRICS = METRICS_DIR / "data.json"
TRAIN_METRICS = METRICS_DIR / "train.json"
LOSS_PLOT = METRICS_DIR / "loss.png"
LIVE_DIR = Path("dvclive/train")
PREFERENCE_METRICS = METRICS_DIR / "preference.json"
PREFERENCE_LOSS_PLOT = METRICS_DIR / "preference_loss.png"
PREFERENCE_LIVE_DIR = Path("dvclive/preference")
EVAL_METRICS = METRICS_DIR / "eval.json"
SAMPLES_FILE = METRICS_DIR / "samples.json"
CONFUSION_FILE = METRICS_DIR / "confusion.json"
EVAL_CHART = METRICS_DIR / "eval.png"
REPORT_FILE = METRICS_DIR / "report.md"
THUMBNAILS_DIR = METRICS_DIR / "thumbnails"  # images of the evaluated samples, beside report.md
EXPORT_METRICS = METRICS_DIR / "export.json"


@dataclass(frozen=True)
class Manifest:
    """What train (or the preference stage) produced: `method` lora (an adapter over `base_model`), full (a whole
    model) or none (train.sft: false: nothing trained yet); `preference` the preference method applied, if any."""

    kind: str
    method: str
    base_model: str  # model.name as the user wrote it (hub id, local path or builtin:*)
    revision: str | None
    backend: str
    precision: str
    load_in_4bit: bool
    max_seq_length: int
    labels: list[str] | None = None  # classifiers: the classes, in the order of the head's outputs
    preference: str | None = None  # dpo, orpo or kto, after (or instead of) SFT

    @classmethod
    def of_run(cls, params, method: str, backend: str, precision: str, **more) -> "Manifest":
        """The manifest of what a run of `params` trained (`more`: labels, preference)."""
        model = params.model
        return cls(kind=params.kind, method=method, base_model=model.name, revision=model.revision, backend=backend,
                   precision=precision, load_in_4bit=model.load_in_4bit, max_seq_length=model.max_seq_length, **more)

    def write(self, directory: Path) -> None:
        write_json(Path(directory) / MANIFEST_FILE, asdict(self))

    @classmethod
    def read(cls, directory: Path = TUNED_DIR) -> "Manifest":
        path = Path(directory) / MANIFEST_FILE
        if not path.is_file():
            stage = "train" if Path(directory) == SFT_DIR else "preference"
            raise SlothlineError(f"{directory}: no trained model there; run `dvc repro {stage}` first "
                                 f"(it writes {MANIFEST_FILE} beside it)")
        return cls(**json.loads(path.read_text()))


def link_tree(source: Path, target: Path) -> None:
    """`target` as a copy of the directory `source`, its files hard-linked where the file system allows (as
    DVC's link cache types keep them: no second copy on disk), else copied."""
    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link, dirs_exist_ok=True)


def read_split(name: str) -> list[dict]:
    """The rows prepare wrote for one split; a clear error when prepare has not run."""
    path = PREPARED_DIR / f"{name}.jsonl"
    if not path.is_file():
        raise SlothlineError(f"{path}: missing; run `dvc repro prepare` first")
    lines = path.read_text(encoding="utf-8").split("\n")  # not splitlines(): U+2028 is legal inside a string
    return [json.loads(line) for line in lines if line]


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a fresh staging directory that replaces `target` only when the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_json(path: Path, data) -> None:
    """Write `data` as indented JSON via a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def is_whole_json(path: Path) -> bool:
    """Whether `path` holds a whole JSON document: one that a library writes in place (the Trainer's
    trainer_state.json, dvclive's summary) can be cut short by a kill."""
    try:
        json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return True


def write_jsonl(path: Path, records: list[dict]) -> None:
    with Path(path).open("w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
