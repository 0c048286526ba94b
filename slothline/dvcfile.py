"""What dvc.yaml declares, checked against what a stage really reads: a file outside a stage's
declared deps would change without DVC rerunning the stage, which then serves stale results."""

from pathlib import Path

import yaml

from slothline.errors import SlothlineError

DVC_FILE = Path("dvc.yaml")


def require_declared(stage: str, files: dict[str, Path]) -> None:
    """Fail unless each file (keyed by where the user named it) lies under one of `stage`'s deps."""
    for where, file in files.items():
        problem = undeclared(stage, file)
        if problem:
            raise SlothlineError(f"{where}: {problem}")


def undeclared(stage: str, file: Path) -> str | None:
    """Why `file` does not lie under one of `stage`'s deps (and the fix), or None when it does.

    Outside a DVC project (no dvc.yaml in the working directory) there is no contract to check.
    """
    if not DVC_FILE.is_file():
        return None
    deps = yaml.safe_load(DVC_FILE.read_text())["stages"][stage].get("deps", [])
    resolved = Path(file).resolve()
    if any(resolved == root or root in resolved.parents for root in (Path(dep).resolve() for dep in deps)):
        return None
    return (f"{file} is not under a dependency of the {stage} stage in {DVC_FILE} "
            f"({', '.join(deps)}), so DVC would not rerun {stage} when it changes; move it under one of "
            f"those, or add `- {file}` to the deps of {stage} in {DVC_FILE}")


def require_model_declared(name: str, stages: list[str]) -> None:
    """Fail unless model.name, where it is a local directory, lies under a dependency of each of `stages` (those that
    read its files): its weights or tokenizer changing then reruns them. A hub id is pinned by model.revision, a
    builtin by its code."""
    if name.startswith("builtin:") or not Path(name).is_dir():
        return
    missing = [stage for stage in stages if undeclared(stage, Path(name))]
    if missing:
        which = (f"{', '.join(missing[:-1])} and {missing[-1]} stages" if len(missing) > 1 else f"{missing[0]} stage")
        raise SlothlineError(
            f"model.name: {name} is a local directory that no dependency of the {which} in {DVC_FILE} covers, so DVC "
            f"would not rerun {'them' if len(missing) > 1 else 'it'} when its files change; add `- {name}` to the deps "
            f"of the {which} in {DVC_FILE} (DVC then hashes it)")
