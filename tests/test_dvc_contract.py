"""dvc.yaml and dvc.lock are an honest contract: each stage of each kind runs only code its deps name (so a
change reruns what it touches and nothing else), the committed dvc.lock and metrics are those of the
committed tree, and a file outside a stage's deps is refused instead of silently ignored."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from slothline import kinds
from slothline.dvcfile import require_declared, require_model_declared
from slothline.errors import SlothlineError
from tests.conftest import ROOT, load

DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text())
KINDS = tuple(kinds.names())


def declared(stage: str, kind: str) -> list[str]:
    """The stage's deps with `${kind}` resolved."""
    return [dep.replace("${kind}", kind) for dep in DVC_YAML["stages"][stage].get("deps", [])]


def covered(file: str, deps: list[str]) -> bool:
    return any(file == dep or file.startswith(dep.rstrip("/") + "/") for dep in deps)


def git(clone: Path, *args) -> str:
    return subprocess.run(["git", *args], cwd=clone, check=True, capture_output=True, text=True).stdout


def changed_stages(clone: Path) -> dict[str, list[str]]:
    """`dvc status` of a clone: the git-tracked deps and params each stage finds changed against dvc.lock
    (DVC-cached outputs, absent from a clone, aside)."""
    tracked = set(git(clone, "ls-files").split())
    done = subprocess.run(["dvc", "status", "--json"], cwd=clone, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    problems = {}
    for stage, changes in json.loads(done.stdout or "{}").items():
        for change in changes:
            if isinstance(change, str):  # e.g. "changed command"
                problems.setdefault(stage, []).append(change)
                continue
            for what, paths in change.items():
                if what == "changed params":
                    problems.setdefault(stage, []).append(f"{what} {paths}")
                    continue
                problems.setdefault(stage, []).extend(
                    f"{what} {path}: {state}" for path, state in paths.items()
                    if path in tracked or any(p.startswith(path.rstrip("/") + "/") for p in tracked))
    return {stage: found for stage, found in problems.items() if found}


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """A fresh clone of the committed repository."""
    path = tmp_path_factory.mktemp("clone") / "repo"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(path)], check=True)
    return path


def test_committed_lock_and_metrics_match_a_fresh_clone(clone):
    """On a fresh clone, `dvc status` finds every git-tracked dep, param and metric as dvc.lock records them;
    only DVC-cached outputs (models, prepared data) are missing."""
    problems = changed_stages(clone)
    assert not problems, f"commit a fresh `dvc repro`: {problems}"


@pytest.mark.parametrize("touched, rerun", [
    ("slothline/kinds/classifier/__init__.py", []),
    ("slothline/kinds/classifier/onnx.py", []),
    ("slothline/kinds/vision/images.py", []),
    ("slothline/kinds/vision/__init__.py", []),
    ("slothline/export/gguf.py", ["export"]),
    ("slothline/export/ollama.py", ["export"]),
    ("slothline/hub.py", ["push"]),
    ("slothline/kinds/causal_lm/__init__.py", ["check_params", "prepare", "train", "preference", "evaluate", "merge", "export", "push"]),
])
def test_an_edit_reruns_exactly_the_stages_whose_code_it_is(clone, touched, rerun):
    """With the text default's lock, editing another kind's code changes no stage; editing the GGUF writer
    changes export alone."""
    path = clone / touched
    original = path.read_text()
    try:
        path.write_text(original + "\n# edited\n")
        assert sorted(changed_stages(clone)) == sorted(rerun)
    finally:
        path.write_text(original)


def logging_imports(log: Path) -> dict:
    """The environment under which every Python process appends the project files it imported to `log`."""
    return {**os.environ, "SLOTHLINE_IMPORT_LOG": str(log), "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT / "tests/import_log"), os.environ.get("PYTHONPATH")]))}


def check_import_closure(project: Path, log: Path, kind: str) -> None:
    """Every stage of `kind` ran (per `log`, see logging_imports) and imported only project files under the deps
    dvc.yaml declares for it: the import closure, taken from the processes themselves (lazy imports included),
    over every run of the stage in `log`. Each kind's default end-to-end test checks its own (test_pipeline's
    for the text default, with its DPO experiment)."""
    by_stage = {}
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        if entry["argv"][0].startswith(str(project / "stages")):
            by_stage.setdefault(Path(entry["argv"][0]).stem, set()).update(entry["files"])
    assert sorted(by_stage) == sorted(DVC_YAML["stages"]), (kind, sorted(by_stage))
    for stage, files in by_stage.items():
        missing = [file for file in sorted(files) if (project / file).read_text().strip()  # empty files run nothing
                   and not covered(file, declared(stage, kind))]
        assert not missing, f"{stage} ({kind}) runs {missing}, which its deps in dvc.yaml do not name"


def test_declared_deps_exist_and_name_no_other_kind():
    """Every declared dep exists, and no stage names a kind's package other than `${kind}`'s."""
    for stage in DVC_YAML["stages"]:
        for kind in KINDS:
            for dep in declared(stage, kind):
                assert (ROOT / dep).exists() or dep.startswith(("data/prepared", "models/")), (stage, dep)
                others = [f"slothline/kinds/{other}" for other in KINDS if other != kind]
                assert not covered(dep, others) and not any(covered(other, [dep]) for other in others), (stage, dep)


def test_every_param_is_a_dependency_of_some_stage():
    """A section no stage reads (a typo such as `evalute:`) must still rerun something that validates it."""
    assert {"params.yaml": None} in DVC_YAML["stages"]["check_params"]["params"]


def test_every_stage_runs_after_check_params():
    """`dvc repro <stage>` runs the stages upstream of it alone: each stage lies downstream of check_params (through
    its out, a dep of prepare), so params.yaml is checked before anything is prepared or trained."""
    stages = DVC_YAML["stages"]
    outs = {stage: [next(iter(out)) if isinstance(out, dict) else out for section in ("outs", "metrics", "plots")
                    for out in spec.get(section, [])] for stage, spec in stages.items()}
    upstream = lambda stage: {other for dep in declared(stage, "causal_lm") for other, paths in outs.items()
                              if any(covered(path, [dep]) or covered(dep, [path]) for path in paths)}
    for stage in stages:
        seen, todo = set(), [stage]
        while todo:
            for other in upstream(todo.pop()) - seen:
                seen.add(other)
                todo.append(other)
        assert stage == "check_params" or "check_params" in seen, stage


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


def test_a_local_model_must_be_a_dependency_of_the_stages_that_read_it(tmp_path, monkeypatch, tiny_qwen3):
    """A local directory as model.name changes without DVC noticing unless the stages that read its files
    depend on it: check_params and those stages refuse it, naming the stages and the dvc.yaml line to add."""
    monkeypatch.chdir(tmp_path)
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(stages))
    model = shutil.copytree(tiny_qwen3, tmp_path / "checkpoints" / "qwen")
    with pytest.raises(SlothlineError, match=rf"^model.name: {model} is a local directory that no dependency of the "
                                             r"prepare, train, evaluate and merge stages in dvc.yaml covers, .*add `- "):
        kinds.check(kinds.get("causal_lm"), load(model={"name": str(model)}))
    with pytest.raises(SlothlineError, match=r"of the preference stage in dvc.yaml"):
        require_model_declared(str(model), ["preference"])
    with pytest.raises(SlothlineError, match=r"prepare, train, evaluate and merge stages in dvc.yaml"):
        kinds.check(kinds.get("causal_lm"), load(model={"name": str(model)}))  # the base weights: evaluate, merge
    for stage in ("prepare", "train", "evaluate", "merge"):
        stages["stages"][stage]["deps"].append("checkpoints")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(stages))
    kinds.check(kinds.get("causal_lm"), load(model={"name": str(model)}))
    with pytest.raises(SlothlineError, match=r"export stage"):  # a GGUF adapter's base.gguf
        kinds.check(kinds.get("causal_lm"), load(model={"name": str(model)}, merge={"save_method": "lora"}))
    with pytest.raises(SlothlineError, match=r"preference stage"):  # preference tuning reads it too
        kinds.check(kinds.get("causal_lm"), load(model={"name": str(model)}, preference={"method": "dpo"}))
    for name in ("builtin:tiny-qwen3", "Qwen/Qwen3-0.6B"):  # pinned by code or by model.revision
        require_model_declared(name, ["prepare", "train", "preference"])
