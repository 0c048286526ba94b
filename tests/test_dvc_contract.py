"""dvc.yaml and dvc.lock are an honest contract: each stage depends on exactly the project code it
runs and the files that code reads, the committed dvc.lock and metrics are those of the committed
tree, and a file outside a stage's deps is refused instead of silently ignored."""

import ast
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from stages.lib.dvcfile import require_declared
from stages.lib.errors import SlothlineError
from tests.conftest import ROOT

DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text())
STAGE_MODULES = {name: stage["cmd"].removeprefix("python -m ") for name, stage in DVC_YAML["stages"].items()}


def module_file(module: str):
    path = ROOT / module.replace(".", "/")
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def imported_project_modules(file) -> set[str]:
    """Every `stages.*` module a file imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in names if name.split(".")[0] == "stages" and module_file(name).is_file()}


def code_closure(module: str) -> set:
    """The project's Python files that running `python -m module` can execute (empty __init__ files aside)."""
    files, todo = set(), [module]
    while todo:
        file = module_file(todo.pop())
        if file not in files:
            files.add(file)
            todo += imported_project_modules(file)
    return {f for f in files if f.read_text().strip()}


def named_data_files(code_files: set) -> set:
    """Non-Python files under stages/ (templates, the tokenizer corpus) whose name the code spells out."""
    candidates = {p.name: p for p in (ROOT / "stages").rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")}
    named = set()
    for file in code_files:
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in candidates:
                named.add(candidates[node.value])
    return named


@pytest.mark.parametrize("stage", sorted(STAGE_MODULES))
def test_stage_deps_are_exactly_its_code_and_the_files_it_reads(stage):
    code = code_closure(STAGE_MODULES[stage])
    expected = {str(p.relative_to(ROOT)) for p in code | named_data_files(code)}
    declared = {dep for dep in DVC_YAML["stages"][stage].get("deps", []) if dep.startswith("stages/")}
    assert declared == expected, f"missing: {sorted(expected - declared)}, not used: {sorted(declared - expected)}"


def test_closure_follows_lazy_imports_and_names_data_files():
    train = code_closure("stages.train")
    assert ROOT / "stages/lib/models.py" in train  # imported inside backends' functions
    assert ROOT / "stages/lib/tokenizer_corpus.txt" in named_data_files(train)


def test_every_param_is_a_dependency_of_some_stage():
    """A section no stage reads (a typo such as `evalute:`) must still rerun something that validates it."""
    assert {"params.yaml": None} in DVC_YAML["stages"]["check_params"]["params"]


def declared_params() -> set[str]:
    return {param for stage in DVC_YAML["stages"].values() for param in stage.get("params", []) if isinstance(param, str)}


@pytest.mark.parametrize("params_file", ["params.yaml", *sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))])
def test_every_params_file_has_each_param_a_stage_declares(params_file):
    """DVC refuses a stage whose declared param is missing (`cp configs/vision.yaml params.yaml`, then
    `dvc repro` must reach the last stage)."""
    path = ROOT / params_file if params_file == "params.yaml" else ROOT / "configs" / params_file
    params = yaml.safe_load(path.read_text())
    missing = []
    for dotted in declared_params():
        node = params
        for key in dotted.split("."):
            if not isinstance(node, dict) or key not in node:
                missing.append(dotted)
                break
            node = node[key]
    assert not missing, f"{path.name} lacks {sorted(missing)}"


def test_committed_lock_and_metrics_match_a_fresh_clone(tmp_path):
    """On a fresh clone, `dvc status` finds every git-tracked dep, param and metric as dvc.lock records
    them; only DVC-cached outputs (models, prepared data) are missing."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    tracked = set(subprocess.run(["git", "ls-files"], cwd=clone, capture_output=True, text=True).stdout.split())
    done = subprocess.run(["dvc", "status", "--json"], cwd=clone, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    problems = []
    for stage, changes in json.loads(done.stdout or "{}").items():
        for change in changes:
            if isinstance(change, str):  # e.g. "changed command"
                problems.append(f"{stage}: {change}")
                continue
            for kind, paths in change.items():
                if kind == "changed params":
                    problems.append(f"{stage}: {kind} {paths}")
                    continue
                problems += [f"{stage}: {kind} {path}: {state}" for path, state in paths.items()
                             if path in tracked or any(p.startswith(path.rstrip("/") + "/") for p in tracked)]
    assert not problems, "commit a fresh `dvc repro`:\n" + "\n".join(problems)


def test_data_outside_the_stage_deps_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"prepare": {"cmd": "x", "deps": ["data/raw"]}}}))
    for name in ("data/raw/ok.jsonl", "data/extra/mine.jsonl"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}\n")
    require_declared("prepare", {"data.sources[0].path": tmp_path / "data/raw/ok.jsonl"})
    with pytest.raises(SlothlineError, match=r"data.sources\[1\].path: data/extra/mine.jsonl is not under a "
                                             r"dependency of the prepare stage in dvc.yaml \(data/raw\).*add "
                                             r"`- data/extra/mine.jsonl` to the deps of prepare"):
        require_declared("prepare", {"data.sources[1].path": Path("data/extra/mine.jsonl")})
