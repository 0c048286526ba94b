"""Atomic writes: a stage's outputs appear whole or not at all, so a failure never leaves half a dataset."""

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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


def write_jsonl(path: Path, records: list[dict]) -> None:
    with Path(path).open("w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")


def resume_point(checkpoints: Path, fingerprint: str, processes: int = 1) -> str | None:
    """The last complete checkpoint under `checkpoints` of a run with this `fingerprint`, or None.

    A checkpoint is complete once the Trainer has written its trainer_state.json (its last file, from the
    main process) and, in a job of `processes` > 1, every process's RNG state; incomplete ones (the run died
    while saving) and those of a run with other params or data are deleted. The main process alone calls it.
    """
    checkpoints.mkdir(parents=True, exist_ok=True)
    marker = checkpoints / "run.json"
    if not marker.is_file() or json.loads(marker.read_text()).get("fingerprint") != fingerprint:
        clear_checkpoints(checkpoints)
        write_json(marker, {"fingerprint": fingerprint})
        return None
    last_files = ["trainer_state.json", *(f"rng_state_{rank}.pth" for rank in range(processes) if processes > 1)]
    complete = []
    for path in checkpoints.glob("checkpoint-*"):
        if all((path / name).is_file() for name in last_files):
            complete.append(path)
        else:
            shutil.rmtree(path)
    return str(max(complete, key=lambda path: int(path.name.split("-")[1]))) if complete else None


def clear_checkpoints(checkpoints: Path) -> None:
    for path in checkpoints.glob("checkpoint-*"):
        shutil.rmtree(path)


def markdown_cell(text) -> str:
    """`text` as one cell of a Markdown table (pipes escaped, line breaks as <br>)."""
    return str(text).replace("|", "\\|").replace("\n", "<br>")
