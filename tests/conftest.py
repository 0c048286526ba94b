import copy
import functools
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    # Parallel workers share the CPU: OpenMP threads that spin while they wait make torch there two to ten times
    # slower (the vision default's DAG: 850 s instead of 94 s, measured), so every process of the session, a test's
    # dvc and python subprocesses included, waits passively. Alone, spinning is the faster.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

PROJECT_FILES = ["dvc.yaml", "params.yaml", "pyproject.toml", "stages", "slothline", "conf", "data/raw",
                 "data/generate_raw.py", "data/generate_vision.py", "data/generate_classification.py"]


@functools.cache
def kind_defaults(kind: str) -> dict:
    """params.yaml of `kind` as `dvc exp run -S kind=<kind>` composes it from conf/."""
    from slothline.conf import compose

    return compose(kind, conf_dir=ROOT / "conf")


def merged(base: dict, changes: dict) -> dict:
    """`base` with `changes` merged in: dicts update recursively, any other value replaces."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def write_params(directory: Path, kind: str = "causal_lm", **sections) -> dict:
    """THE way tests set params: the kind's defaults with `sections` merged in (e.g. train={"max_steps": 5}),
    written to `directory`/params.yaml as `dvc exp run` would; returns them. A test that gives its own
    data.sources reads no preference data unless it sets preference.sources too."""
    if "sources" in sections.get("data", {}) and "sources" in kind_defaults(kind).get("preference", {}):
        sections = merged({"preference": {"sources": []}}, sections)
    params = merged(kind_defaults(kind), sections)
    (Path(directory) / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def dvc(project, *args, check=True, env=None):
    """`dvc *args` in `project` (the environment: `env`, else this process's); with `check`, fail the test with
    its output unless it succeeds."""
    result = subprocess.run(["dvc", *args], cwd=project, capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def ran_stages(output: str) -> list[str]:
    """The stages a `dvc repro` / `dvc exp run` printed as run, in order."""
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def evaluating(batch_size, max_new_tokens: int, seed: int = 0):
    """A generating kind's `evaluate` settings, as generation.generate takes them."""
    from slothline.kinds._generative.params import GenerationEvaluate

    return GenerationEvaluate(batch_size=batch_size, max_new_tokens=max_new_tokens, seed=seed)


def load(kind: str = "causal_lm", **sections):
    """The validated params of `kind`'s defaults with `sections` merged in, without a file."""
    from slothline import kinds

    return kinds.get(kind).Params.model_validate(merged(kind_defaults(kind), sections))


def compiled_decode_against_sdpa(head_dim: int, heads: int, kv_heads: int, device: str, dtype):
    """A random 2-layer Qwen3 of these attention shapes answers 4 left-padded prompts (300 tokens at most; 2, 1
    and 0 whole blocks of 128 keys padded) with 8 greedy tokens: on a static cache of 400 tokens with compiled decode
    steps through the grouped attention (compiled off CUDA too), and through sdpa on a dynamic cache. Returns whether
    the compiled steps went through `attention.flex_decode`, then (sequences, stacked logits) of each path."""
    import torch
    from transformers import AutoModelForCausalLM, CompileConfig, Qwen3Config

    from slothline.backends import attention

    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=500, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim)
    model = AutoModelForCausalLM.from_config(config).to(device, dtype).eval()
    lengths = torch.tensor([300, 130, 20, 257], device=device)
    mask = (torch.arange(300, device=device) >= 300 - lengths[:, None]).long()
    ids = torch.randint(3, 500, (4, 300), device=device) * mask

    def generate(**options):
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False,
                                 pad_token_id=0, output_logits=True, return_dict_in_generate=True, **options)
        return out.sequences, torch.stack(out.logits)

    reference = generate()
    used = {}
    flex_decode = attention.flex_decode
    attention.flex_decode = lambda *args: used.setdefault("flex", True) and flex_decode(*args)
    model.set_attn_implementation(attention.register_grouped_attention())
    model.generation_config.compile_config = CompileConfig()
    model.generation_config.compile_config._compile_all_devices = True  # transformers compiles on CUDA alone
    torch._dynamo.reset()
    try:
        compiled = generate(cache_implementation="static", max_cache_len=400)
    finally:
        attention.flex_decode = flex_decode
        torch._dynamo.reset()
    return bool(used), compiled, reference


@pytest.fixture(scope="session", autouse=True)
def builtin_cache(tmp_path_factory):
    """Build builtin models once per test session, in a private cache shared with subprocesses, which also
    find the stage scripts (`python -m stages.train` from a scratch directory; a project copy's own come first)."""
    cache = tmp_path_factory.mktemp("slothline-cache")
    patcher = pytest.MonkeyPatch()
    patcher.setenv("SLOTHLINE_CACHE", str(cache))
    patcher.setenv("PYTHONPATH", str(ROOT), prepend=os.pathsep)
    yield cache
    patcher.undo()


@pytest.fixture(scope="session")
def tiny_qwen3(builtin_cache) -> str:
    """The directory of builtin:tiny-qwen3, built once per session."""
    from slothline.models import resolve_model

    return resolve_model("builtin:tiny-qwen3")


@pytest.fixture(scope="session")
def tiny_qwen3_vl(builtin_cache) -> str:
    from slothline.models import resolve_model

    return resolve_model("builtin:tiny-qwen3-vl")


@pytest.fixture(scope="session")
def tiny_modernbert(builtin_cache) -> str:
    from slothline.models import resolve_model

    return resolve_model("builtin:tiny-modernbert")


@pytest.fixture(scope="session")
def tokenizer(tiny_qwen3):
    from slothline.models import load_tokenizer

    return load_tokenizer(tiny_qwen3)


class Workdir:
    """A scratch project directory (the test's cwd) with helpers to write data and params."""

    def __init__(self, path: Path):
        self.path = path

    def write_jsonl(self, name: str, rows: list) -> str:
        path = self.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
        return name

    def write_params(self, sources: list[dict], kind: str = "causal_lm", **data) -> dict:
        """Params of `kind` reading `sources` whole, without val and test splits unless `data` asks."""
        return write_params(self.path, kind, data={"sources": sources, "total": None, "val_fraction": 0.0,
                                                   "test_fraction": 0.0, **data})

    def read_split(self, name: str) -> list[dict]:
        text = (self.path / "data/prepared" / f"{name}.jsonl").read_text(encoding="utf-8")
        return [json.loads(line) for line in text.split("\n") if line]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return Workdir(tmp_path)


@pytest.fixture
def dvc_project(tmp_path):
    """A temporary git + DVC repository holding a copy of the project (code, params, conf, bundled data)."""
    project = tmp_path / "project"
    for name in PROJECT_FILES:
        source, target = ROOT / name, project / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    run = lambda *cmd: subprocess.run(cmd, cwd=project, check=True, capture_output=True, text=True)
    run("git", "init", "-q")
    run("git", "config", "user.email", "ci@example.com")
    run("git", "config", "user.name", "CI")
    run("dvc", "init", "-q")
    shutil.copy2(ROOT / ".dvc/config", project / ".dvc/config")  # Hydra composition, link cache types
    run("git", "add", "-A")
    run("git", "commit", "-qm", "project")
    return project


@pytest.fixture
def hub():
    """A local stand-in for the Hugging Face Hub (tests/hub_server.py), stopped after the test."""
    from tests.hub_server import serve

    with serve() as server:
        yield server
