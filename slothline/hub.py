"""Upload the pipeline's artifacts to the Hugging Face Hub in one commit (the push stage).

Layout of the repository (`push.what` picks the parts):
  merged   models/merged at the root, as Unsloth's push_to_hub_merged lays it out: `from_pretrained(repo_id)`
  adapter  models/tuned under adapter/: `PeftModel.from_pretrained(base, repo_id, subfolder="adapter")`
  gguf     models/export under gguf/: gguf/<quantization>/model.gguf with its Ollama Modelfile
  onnx     models/export/onnx under onnx/: model.onnx with its tokenizer and config (classifiers)
and a README.md model card naming the base model and this layout.

The token comes from the environment as huggingface_hub finds it (HF_TOKEN, else the token `hf auth login`
saved), never from params; it is kept out of every message.
"""

import subprocess
from pathlib import Path

import httpx
from huggingface_hub import CommitOperationAdd, HfApi, ModelCardData, get_token
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

from slothline.artifacts import EXPORT_DIR, MERGED_DIR, ONNX_DIR, TUNED_DIR, Manifest
from slothline.errors import SlothlineError
from slothline.params import PushParams

LAYOUT = {"merged": (MERGED_DIR, ""), "adapter": (TUNED_DIR, "adapter/"), "gguf": (EXPORT_DIR, "gguf/"),
          "onnx": (ONNX_DIR, "onnx/")}
NO_TOKEN = ("push: no Hugging Face token; set HF_TOKEN (a write token) in the environment, "
            "or set push: null")


def push(settings: PushParams) -> str:
    """Create the repository if needed and commit the chosen folders and a model card; return the commit URL."""
    token = get_token()
    if not token:
        raise SlothlineError(NO_TOKEN)
    git_commit = current_git_commit()
    operations = []
    for name in settings.what:
        folder, prefix = LAYOUT[name]
        operations += [CommitOperationAdd(prefix + path.relative_to(folder).as_posix(), path)
                       for path in files_of(folder) if name != "gguf" or ONNX_DIR not in path.parents]
    operations.append(CommitOperationAdd("README.md", model_card(settings, git_commit).encode()))
    api = HfApi(token=token)
    try:
        api.create_repo(settings.repo_id, private=settings.private, exist_ok=True)
        if settings.revision:
            api.create_branch(settings.repo_id, branch=settings.revision, exist_ok=True)
        commit = api.create_commit(
            settings.repo_id, operations, revision=settings.revision,
            commit_message=f"Upload {', '.join(settings.what)} from the DVC stage push"
                           + (f" (git {git_commit})" if git_commit else ""))
    except (OfflineModeIsEnabled, httpx.HTTPError) as err:
        raise SlothlineError(explain(err, settings, api.endpoint).replace(token, "<token>")) from None
    return commit.commit_url


def files_of(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise SlothlineError(f"{folder}: missing; run `dvc repro` so the stage that writes it runs first")
    return sorted(path for path in folder.rglob("*") if path.is_file())


def explain(err: Exception, settings: PushParams, endpoint: str) -> str:
    """One sentence for a failed push: what went wrong and the fix."""
    if isinstance(err, OfflineModeIsEnabled):
        return "push: HF_HUB_OFFLINE is set; unset it to push, or set push: null"
    if isinstance(err, RepositoryNotFoundError):
        return (f"push.repo_id: {settings.repo_id} not found on {endpoint}, or the token may not see "
                f"it; check the namespace ({settings.repo_id.split('/')[0]}) and that the token belongs to it")
    if isinstance(err, HfHubHTTPError):
        status = err.response.status_code
        if status == 401:
            return (f"push: {endpoint} refused the token (401 Unauthorized); set HF_TOKEN to a valid "
                    "write token (https://huggingface.co/settings/tokens)")
        if status == 403:
            return (f"push: the token may not write to {settings.repo_id} (403 Forbidden); use a write "
                    f"token, or a fine-grained token with write access to {settings.repo_id.split('/')[0]}")
        return f"push: {endpoint} answered {status}: {err.server_message or err.response.reason_phrase}"
    return (f"push: cannot reach {endpoint} ({type(err).__name__}: {err}); check the network "
            "connection (and HF_ENDPOINT, if set), or set push: null")


def current_git_commit() -> str | None:
    """The checked-out git commit, or None outside a git repository."""
    try:
        done = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True)
    except FileNotFoundError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def model_card(settings: PushParams, git_commit: str | None) -> str:
    """README.md: the base model, how it was trained and where each part lies in the repository."""
    manifest = Manifest.read(TUNED_DIR)
    base = manifest.base_model
    on_hub = not (base.startswith(("builtin:", ".", "/")) or Path(base).exists())
    tags = ["slothline", "gguf"] if "gguf" in settings.what else ["slothline"]
    metadata = ModelCardData(base_model=base if on_hub else None, tags=tags)
    parts = {
        "merged": f'| `/` | the merged model: `from_pretrained("{settings.repo_id}")` with transformers |',
        "adapter": f'| `adapter/` | the PEFT adapter and processor: `PeftModel.from_pretrained(base_model, '
                   f'"{settings.repo_id}", subfolder="adapter")` |',
        "gguf": "| `gguf/<quantization>/` | `model.gguf` for llama.cpp and an Ollama `Modelfile` beside it |",
        "onnx": "| `onnx/` | `model.onnx` (logits out) with its tokenizer and config, for onnxruntime |",
    }
    method = ("LoRA" if manifest.method == "lora" else "full fine-tuning") + (
        f" with {manifest.preference.upper()} preference tuning" if manifest.preference else "")
    return "\n".join([
        f"---\n{metadata.to_yaml()}\n---", f"# {settings.repo_id.split('/')[1]}", "",
        f"Fine-tuned from `{base}` ({method}, {manifest.backend} backend) by a Slothline DVC pipeline"
        + (f", git commit `{git_commit}`." if git_commit else "."), "",
        "| path | holds |", "|---|---|", *(parts[name] for name in settings.what), "",
    ])
