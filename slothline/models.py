"""`model.name` (a hub id, a local model directory or `builtin:*`): what `from_pretrained` takes for it, its
config (read without transformers, which Unsloth must be imported before), the kind of model it is, and its
tokenizer."""

import json
from pathlib import Path

from slothline import builtin
from slothline.errors import SlothlineError
from slothline.families import family

ENCODER_HEADS = ("ForSequenceClassification", "ForMaskedLM", "ForTokenClassification")


def resolve_model(name: str) -> str:
    """What `from_pretrained` takes for `name`: a built local directory, a path or a hub id."""
    if name.startswith("builtin:"):
        return str(builtin.directory(name))
    if Path(name).exists() or name.startswith((".", "/")):
        if not (Path(name) / "config.json").is_file():
            raise SlothlineError(f"model.name: {name} is not a model directory (no config.json there)")
    return name


MODEL_FILES = ["*.json", "model*.safetensors", "tokenizer*", "*.jinja", "*.model", "*.txt"]  # not original/*.pth


def model_directory(name: str, revision: str | None = None) -> Path:
    """A local directory holding `name`'s files (a hub model's cached snapshot: downloaded where allowed)."""
    source = resolve_model(name)
    if Path(source).is_dir():
        return Path(source)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, revision=revision, allow_patterns=MODEL_FILES))
    except Exception as err:  # the hub client raises many types; all mean "cannot get it"
        raise SlothlineError(f"model.name: cannot get the files of {name!r} ({err.__class__.__name__}: {err})") from None


def model_file(name: str, filename: str, revision: str | None = None) -> str | None:
    """The local path of one file of `model.name` (fetched from the hub for a hub id), or None where the model
    has no such file."""
    source = resolve_model(name)
    if Path(source).is_dir():
        return str(Path(source) / filename) if (Path(source) / filename).is_file() else None
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError

    try:
        return hf_hub_download(source, filename, revision=revision)
    except RemoteEntryNotFoundError:  # the hub says the model has no such file
        return None
    except LocalEntryNotFoundError as err:  # offline, and not in the local cache
        if filename != "config.json" and isinstance(try_to_load_from_cache(source, "config.json", revision=revision), str):
            return None  # the model was fetched (model_directory takes every file it needs), without this one
        raise SlothlineError(f"model.name: {name!r} is no local directory, and its {filename} is neither in the local "
                             f"Hugging Face cache nor reachable on the hub ({err.__class__.__name__}); connect to "
                             "the hub once (or unset HF_HUB_OFFLINE), download the model to a directory and set "
                             "model.name to it, or use a builtin model") from None


def head_classes(config: dict) -> list[str]:
    """The output names of a checkpoint's classification head (its config.json as a dict), in order; [] where it has
    none."""
    classifies = any(name.endswith("ForSequenceClassification") for name in config.get("architectures") or [])
    head = config.get("id2label") or {}
    return [str(head[key]) for key in sorted(head, key=int)] if classifies else []


def placeholder_classes(names: list[str]) -> bool:
    """Whether `names` are transformers' LABEL_0, LABEL_1, ...: a head whose classes nobody named."""
    return names == [f"LABEL_{i}" for i in range(len(names))]


def model_config(name: str, revision: str | None = None) -> dict:
    """The config.json of `model.name`, as a dict."""
    source = resolve_model(name)
    try:
        return json.loads(Path(model_file(name, "config.json", revision)).read_text())
    except Exception as err:  # the hub client raises many types; all mean "cannot get it"
        problem = ("'s config.json is not readable JSON" if Path(source).is_dir() else
                   " is no local directory, and its config could not be fetched from the hub")
        raise SlothlineError(f"model.name: {name!r}{problem} ({err.__class__.__name__}: {err}); use a local model "
                             "directory (relative to the repository root), a hub id reachable from here, or a builtin "
                             "model") from None


def kind_of_config(config: dict) -> str | None:
    """classifier for a sequence-classification (or encoder) head, else the kind its family record names, else
    vision for models with a vision tower and causal_lm for decoders; None when the config does not tell."""
    architectures = config.get("architectures") or []
    if any(a.endswith(ENCODER_HEADS) for a in architectures):  # a decoder family with a classification head too
        return "classifier"
    if family(config.get("model_type")).kind:
        return family(config.get("model_type")).kind
    if "vision_config" in config:
        return "vision"
    if any(a.endswith("ForCausalLM") for a in architectures):
        return "causal_lm"
    return None


def load_tokenizer(name: str, revision: str | None = None):
    """The tokenizer of `model.name`, with a clear error when it cannot be loaded."""
    from transformers import AutoTokenizer

    source = resolve_model(name)
    try:
        return AutoTokenizer.from_pretrained(source, revision=revision)
    except (OSError, ValueError) as err:
        raise SlothlineError(
            f"model.name: cannot load the tokenizer of {name!r} ({err.__class__.__name__}: {err}); "
            "use a local model directory, a hub id reachable from here, or a builtin model"
        ) from None
