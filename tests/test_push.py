"""push: the `push` params, and `python -m stages.push` uploading through huggingface_hub to a small
local stand-in for the Hub (127.0.0.1 only) that stores what it receives."""

import os
import socket
import subprocess
import sys

import pytest

from slothline.artifacts import EXPORT_DIR, MERGED_DIR, TUNED_DIR, Manifest
from slothline.errors import SlothlineError
from slothline.params import load_params
from tests.conftest import write_params
from tests.hub_server import TOKEN, hub_env

PUSH = {"repo_id": "me/my-model", "what": ["adapter", "merged", "gguf"]}


@pytest.fixture
def project(tmp_path):
    """A run's outputs (small stand-in files: the push is byte-for-byte, whatever the bytes are)."""
    files = {
        f"{TUNED_DIR}/adapter_config.json": b'{"r": 16}',
        f"{TUNED_DIR}/adapter_model.safetensors": os.urandom(3000),
        f"{MERGED_DIR}/config.json": b'{"model_type": "qwen3"}',
        f"{MERGED_DIR}/model.safetensors": os.urandom(5000),
        f"{MERGED_DIR}/tokenizer.json": "{\"added\": \"<|im_start|>\u00e9\"}".encode(),
        f"{EXPORT_DIR}/f16/model.gguf": b"GGUF" + os.urandom(4000),
        f"{EXPORT_DIR}/f16/Modelfile": b"FROM ./model.gguf\n",
        f"{EXPORT_DIR}/q8_0/model.gguf": b"GGUF" + os.urandom(2000),
        f"{EXPORT_DIR}/q8_0/Modelfile": b"FROM ./model.gguf\n",
    }
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    Manifest(kind="causal_lm", method="lora", base_model="builtin:tiny-qwen3", revision=None, backend="hf",
             precision="float32", load_in_4bit=False, max_seq_length=512).write(tmp_path / TUNED_DIR)
    return tmp_path


def run_push(project, endpoint: str, token: str | None = TOKEN, **env) -> subprocess.CompletedProcess:
    """`python -m stages.push` as DVC runs it."""
    env = {**hub_env(endpoint, project / "hf-home", token), **env}
    return subprocess.run([sys.executable, "-m", "stages.push"], cwd=project, env=env, capture_output=True,
                          text=True, timeout=120)


def test_push_uploads_the_chosen_folders_in_one_commit_with_the_token(hub, project):
    write_params(project, push=PUSH)
    git = lambda *args: subprocess.run(["git", *args], cwd=project, check=True, capture_output=True, text=True)
    git("init", "-q")
    git("-c", "user.email=ci@example.com", "-c", "user.name=CI", "commit", "-q", "--allow-empty", "-m", "start")
    head = git("rev-parse", "--short=12", "HEAD").stdout.strip()

    done = run_push(project, hub.endpoint)

    assert done.returncode == 0, done.stderr
    assert done.stdout == f"pushed adapter, merged, gguf to me/my-model: {hub.endpoint}/me/my-model/commit/{1:040x}\n"
    assert TOKEN not in done.stdout + done.stderr
    assert all(request["authorization"] == f"Bearer {TOKEN}" for request in hub.requests)
    create = hub.requests[0]
    assert create["path"] == "/api/repos/create"
    assert create["json"] == {"name": "my-model", "organization": "me", "visibility": "private"}
    [commit] = hub.commits
    assert commit["repo"] == "me/my-model" and commit["revision"] == "main"
    assert commit["summary"] == f"Upload adapter, merged, gguf from the DVC stage push (git {head})"
    local = {MERGED_DIR: "", TUNED_DIR: "adapter/", EXPORT_DIR: "gguf/"}
    expected = {prefix + path.relative_to(project / folder).as_posix(): path.read_bytes()
                for folder, prefix in local.items() for path in (project / folder).rglob("*") if path.is_file()}
    readme = commit["files"].pop("README.md").decode()
    assert commit["files"] == expected
    assert {"adapter/manifest.json", "model.safetensors", "gguf/q8_0/model.gguf", "gguf/f16/Modelfile"} <= set(expected)
    assert "Fine-tuned from `builtin:tiny-qwen3` (LoRA, hf backend)" in readme and f"`{head}`" in readme
    assert 'subfolder="adapter"' in readme and "`gguf/<quantization>/`" in readme and "base_model:" not in readme


def test_onnx_goes_under_onnx_and_not_into_gguf(hub, project):
    """A classifier's export folder holds onnx/; pushing it puts it under onnx/, never also under gguf/."""
    (project / EXPORT_DIR / "onnx").mkdir()
    (project / EXPORT_DIR / "onnx/model.onnx").write_bytes(os.urandom(1000))
    (project / EXPORT_DIR / "onnx/config.json").write_bytes(b'{"id2label": {}}')
    write_params(project, push={"repo_id": "me/cls", "what": ["merged", "onnx", "gguf"]},
                 export={"formats": ["onnx", "gguf"]})

    done = run_push(project, hub.endpoint)

    assert done.returncode == 0, done.stderr
    files = set(hub.commits[0]["files"])
    assert {"onnx/model.onnx", "onnx/config.json", "gguf/f16/model.gguf"} <= files
    assert not any(name.startswith("gguf/onnx") for name in files)
    assert "`onnx/`" in hub.commits[0]["files"]["README.md"].decode()


def test_model_card_links_a_hub_base_model(project, monkeypatch):
    from slothline.hub import model_card
    from slothline.params import PushParams

    Manifest(kind="causal_lm", method="full", base_model="unsloth/Qwen3-4B", revision=None, backend="unsloth",
             precision="bfloat16", load_in_4bit=False, max_seq_length=2048).write(project / TUNED_DIR)
    monkeypatch.chdir(project)
    card = model_card(PushParams(repo_id="me/my-model", what=["merged"]), git_commit=None)
    assert card.startswith("---\nbase_model: unsloth/Qwen3-4B\ntags:\n- slothline\n---\n# my-model\n")
    assert "Fine-tuned from `unsloth/Qwen3-4B` (full fine-tuning, unsloth backend) by a Slothline DVC pipeline.\n" \
        in card


def test_revision_is_created_as_a_branch_and_committed_to(hub, project):
    write_params(project, push={"repo_id": "me/my-model", "what": ["merged"], "private": False, "revision": "dvc-exp"})

    done = run_push(project, hub.endpoint)

    assert done.returncode == 0, done.stderr
    assert [r["path"] for r in hub.requests if "/branch/" in r["path"]] == ["/api/models/me/my-model/branch/dvc-exp"]
    assert hub.requests[0]["json"]["visibility"] == "public"
    [commit] = hub.commits
    assert commit["revision"] == "dvc-exp" and commit["summary"] == "Upload merged from the DVC stage push"
    assert set(commit["files"]) == {"config.json", "model.safetensors", "tokenizer.json", "README.md"}


def test_nothing_is_sent_when_no_push_is_configured(hub, project):
    write_params(project)  # push: null, the default

    done = run_push(project, hub.endpoint)

    assert (done.returncode, done.stdout, done.stderr) == (0, "push: not set; nothing pushed\n", "")
    assert hub.requests == []


def test_a_missing_token_fails_before_anything_is_sent(hub, project):
    write_params(project, push=PUSH)

    done = run_push(project, hub.endpoint, token=None)

    assert done.returncode == 2
    assert done.stderr == ("error: push: no Hugging Face token; set HF_TOKEN (a write token) in the "
                           "environment, or set push: null\n")
    assert hub.requests == []


@pytest.mark.parametrize("status, headers, body, message", [
    (401, {"X-Error-Message": "Invalid credentials in Authorization header"}, {"error": "Invalid credentials"},
     "push: {endpoint} refused the token (401 Unauthorized); set HF_TOKEN to a valid write token "
     "(https://huggingface.co/settings/tokens)"),
    (403, {}, {"error": "You don't have the rights to create a model under the namespace \"me\""},
     "push: the token may not write to me/my-model (403 Forbidden); use a write token, or a "
     "fine-grained token with write access to me"),
    (404, {"X-Error-Code": "RepoNotFound"}, {"error": "Repository not found"},
     "push.repo_id: me/my-model not found on {endpoint}, or the token may not see it; check the "
     "namespace (me) and that the token belongs to it"),
    (400, {}, {"error": f"bad request from Bearer {TOKEN}"},  # a server echoing the token: it is masked
     "push: {endpoint} answered 400: bad request from Bearer <token>"),
])
def test_hub_errors_are_one_clear_message(hub, project, status, headers, body, message):
    write_params(project, push=PUSH)
    hub.fail_with = (status, headers, body)

    done = run_push(project, hub.endpoint)

    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == f"error: {message.format(endpoint=hub.endpoint)}\n"
    assert hub.requests and hub.requests[0]["authorization"] == f"Bearer {TOKEN}" and hub.commits == []


def test_offline_mode_is_one_clear_message(hub, project):
    write_params(project, push=PUSH)

    done = run_push(project, hub.endpoint, HF_HUB_OFFLINE="1")

    assert (done.returncode, done.stderr) == (2, "error: push: HF_HUB_OFFLINE is set; unset it to push, or set "
                                                 "push: null\n")
    assert hub.requests == []


def test_an_unreachable_endpoint_is_one_clear_message(project):
    with socket.socket() as probe:  # a free port on 127.0.0.1 that nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{probe.getsockname()[1]}"
    write_params(project, push=PUSH)

    done = run_push(project, endpoint)

    assert done.returncode == 2
    assert done.stderr.startswith(f"error: push: cannot reach {endpoint} (ConnectError: ")
    assert done.stderr.endswith("); check the network connection (and HF_ENDPOINT, if set), or set push: null\n")
    assert "Traceback" not in done.stderr and TOKEN not in done.stderr


@pytest.mark.parametrize("push, sections, message", [
    ({"repo_id": "my-model"}, {}, "push.repo_id: must be namespace/name: your user or organization, "
                                  "then the model (e.g. me/my-model)"),
    ({"repo_id": "me/my model"}, {}, "push.repo_id: Repo id must use alphanumeric chars"),
    ({"repo_id": "me/m", "what": []}, {}, "push.what: List should have at least 1 item"),
    ({"repo_id": "me/m", "what": ["merged", "weights"]}, {},
     "push.what[1]: must be one of 'adapter', 'merged', 'gguf' or 'onnx' (got 'weights')"),
    ({"repo_id": "me/m", "what": ["merged", "merged"]}, {},
     "push.what: lists an item twice; list each once"),
    ({"repo_id": "me/m", "repo": "x"}, {},
     "push.repo: unknown parameter for causal_lm models; did you mean push.repo_id?"),
    ({"repo_id": "me/m", "what": ["gguf"]}, {"export": {"formats": []}},
     "push.what lists gguf, but export.formats has no gguf, so no GGUF file is written; add gguf to "
     "export.formats, or remove gguf from push.what"),
    ({"repo_id": "me/m", "what": ["onnx"]}, {},
     "push.what lists onnx, but export.formats has no onnx, so no ONNX file is written; add onnx to "
     "export.formats, or remove onnx from push.what"),
    ({"repo_id": "me/m", "what": ["merged"]}, {"merge": {"save_method": "lora"}},
     "push.what lists merged, but merge.save_method: lora writes no merged model; push adapter "
     "instead, or set merge.save_method: merged_16bit"),
    ({"repo_id": "me/m", "what": ["adapter"]}, {"train": {"full_finetuning": True}},
     "push.what lists adapter, but train.full_finetuning: true trains no adapter; push merged instead"),
])
def test_push_params_are_checked(tmp_path, push, sections, message):
    write_params(tmp_path, push=push, **sections)
    with pytest.raises(SlothlineError) as caught:
        load_params(tmp_path / "params.yaml")
    assert message in str(caught.value)


def test_push_params_defaults(tmp_path):
    write_params(tmp_path, push={"repo_id": "me/my-model"})
    push = load_params(tmp_path / "params.yaml").push
    assert (push.what, push.private, push.revision) == (["merged"], True, None)


def test_model_card_names_the_preference_tuning(project, monkeypatch):
    from slothline.hub import model_card
    from slothline.params import PushParams

    Manifest(kind="causal_lm", method="lora", base_model="unsloth/Qwen3-4B", revision=None, backend="hf",
             precision="bfloat16", load_in_4bit=False, max_seq_length=2048, preference="dpo").write(project / TUNED_DIR)
    monkeypatch.chdir(project)
    card = model_card(PushParams(repo_id="me/my-model", what=["adapter"]), git_commit=None)
    assert "Fine-tuned from `unsloth/Qwen3-4B` (LoRA with DPO preference tuning, hf backend)" in card
