import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ["dvc.yaml", "params.yaml", "pyproject.toml", "stages", "data/raw", "data/generate_raw.py",
                 "data/generate_vision.py", "data/generate_classification.py", "configs"]


@pytest.fixture(scope="session", autouse=True)
def builtin_cache(tmp_path_factory):
    """Build builtin models once per test session, in a private cache shared with subprocesses."""
    cache = tmp_path_factory.mktemp("slothline-cache")
    patcher = pytest.MonkeyPatch()
    patcher.setenv("SLOTHLINE_CACHE", str(cache))
    yield cache
    patcher.undo()


@pytest.fixture(scope="session")
def tokenizer(builtin_cache):
    from stages.lib.models import load_tokenizer

    return load_tokenizer("builtin:tiny-qwen3")


class Workdir:
    """A scratch project directory (the test's cwd) with helpers to write data and params."""

    def __init__(self, path: Path):
        self.path = path

    def write_jsonl(self, name: str, rows: list) -> str:
        path = self.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
        return name

    def write_params(self, sources: list[dict], **data) -> None:
        params = {"data": {"sources": sources, "total": None, "val_fraction": 0.0, "test_fraction": 0.0, **data}}
        (self.path / "params.yaml").write_text(yaml.safe_dump(params))

    def read_split(self, name: str) -> list[dict]:
        text = (self.path / "data/prepared" / f"{name}.jsonl").read_text(encoding="utf-8")
        return [json.loads(line) for line in text.split("\n") if line]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return Workdir(tmp_path)


@pytest.fixture
def dvc_project(tmp_path):
    """A temporary git + DVC repository holding a copy of the project (code, params, bundled data)."""
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
    run("git", "add", "-A")
    run("git", "commit", "-qm", "project")
    return project


@pytest.fixture
def hub():
    """A local stand-in for the Hugging Face Hub (tests/hub_server.py), stopped after the test."""
    from tests.hub_server import serve

    with serve() as server:
        yield server
