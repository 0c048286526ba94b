"""Checkpoints of an interrupted train (or preference run): which one to resume from, and which belong to another run."""

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

from slothline.artifacts import PARAMS_FILE, PREFERENCE_SPLITS_DIR, PREPARED_DIR, SFT_DIR, is_whole_json, write_json
from slothline.errors import SlothlineError


RUN_INPUTS = {  # per stage: the params sections and the files a run's checkpoints depend on
    "train": (("kind", "model", "lora", "train"), (PREPARED_DIR / "train.jsonl",)),
    "preference": (("kind", "model", "lora", "train", "preference"),
                   (PREFERENCE_SPLITS_DIR / "train.jsonl", SFT_DIR / "manifest.json", SFT_DIR / "adapter_model.safetensors")),
}


def run_fingerprint(params, world_size: int, stage: str = "train") -> str:
    """What a checkpoint must share with this run to be resumed: the stage's params, the number of processes
    (`train.num_gpus` resolved) and its inputs (data; the SFT model a preference run starts from)."""
    sections, files = RUN_INPUTS[stage]
    knobs = {**params.model_dump(include=set(sections), exclude={"train": {"num_gpus"}}), "world_size": world_size}
    digest = hashlib.sha256(json.dumps(knobs, sort_keys=True).encode())
    for path in files:
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def check_inputs_unchanged(started, now, fingerprint: str, world_size: int, stage: str = "train") -> None:
    """Fail when params.yaml's training settings (`started`: as the run read them, `now`: read again at its end) or
    the stage's inputs changed while the run trained (another command rewrote them): DVC would record the new ones
    beside outputs that the old ones made."""
    from slothline.conf import flat

    if run_fingerprint(now, world_size, stage) == fingerprint:
        return
    sections, files = RUN_INPUTS[stage]
    before, after = flat(started.model_dump(include=set(sections))), flat(now.model_dump(include=set(sections)))
    changed = [f"{key}: {before.get(key)} -> {after.get(key)}" for key in sorted(set(before) | set(after))
               if before.get(key) != after.get(key)] or [" or ".join(map(str, files))]
    raise SlothlineError(f"{PARAMS_FILE}: changed while {stage} ran ({'; '.join(changed)}), so its outputs would be "
                         "recorded with settings they were not trained with; nothing was written: run `dvc repro` "
                         "again (another `dvc exp run` or edit must wait for this one)")


def resume_point(checkpoints: Path, fingerprint: str, processes: int = 1) -> str | None:
    """The last complete checkpoint under `checkpoints` of a run with this `fingerprint`, or None.

    A checkpoint is complete once the Trainer has written the whole of its trainer_state.json (its last file,
    from the main process) and, in a job of `processes` > 1, every process's RNG state; incomplete ones (the run
    died while saving: a file missing or cut short) and those of a run with other params or data are deleted.
    The main process alone calls it.
    """
    checkpoints.mkdir(parents=True, exist_ok=True)
    marker = checkpoints / "run.json"
    if not marker.is_file() or json.loads(marker.read_text()).get("fingerprint") != fingerprint:
        clear_checkpoints(checkpoints)
        write_json(marker, {"fingerprint": fingerprint})
        return None
    complete = []
    for path in checkpoints.glob("checkpoint-*"):
        if is_complete(path, processes):
            complete.append(path)
        else:
            shutil.rmtree(path)
    return str(max(complete, key=lambda path: int(path.name.split("-")[1]))) if complete else None


def is_complete(checkpoint: Path, processes: int = 1) -> bool:
    """Whether the checkpoint's last files are whole: trainer_state.json parses (the Trainer writes it in place, so
    a kill can leave it cut short) and, with `processes` > 1, each rng_state_<rank>.pth is a whole archive."""
    if not is_whole_json(checkpoint / "trainer_state.json"):
        return False
    return processes == 1 or all(zipfile.is_zipfile(checkpoint / f"rng_state_{rank}.pth") for rank in range(processes))


def clear_checkpoints(checkpoints: Path) -> None:
    for path in checkpoints.glob("checkpoint-*"):
        shutil.rmtree(path)


def step_of(checkpoint: str | None) -> int:
    return int(checkpoint.rsplit("-", 1)[1]) if checkpoint else 0


def tokens_seen_at(checkpoint: str | None) -> int:
    if not checkpoint:
        return 0
    return _state(checkpoint).get("num_input_tokens_seen", 0)


def finished_at(checkpoint: str | None) -> bool:
    """Whether the run had finished at `checkpoint` (its last steps, early stopping or train.max_steps, and then
    stopped before writing its outputs): transformers records the stop in the checkpoint's TrainerControl, but
    trains on when resumed from it."""
    control = _state(checkpoint).get("stateful_callbacks", {}).get("TrainerControl", {}) if checkpoint else {}
    return bool(control.get("args", {}).get("should_training_stop"))


def _state(checkpoint: str) -> dict:
    return json.loads((Path(checkpoint) / "trainer_state.json").read_text())
