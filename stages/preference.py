"""preference: tune the SFT model (models/sft) on preference data with `preference.method` (DPO, ORPO, KTO).

Outs: models/tuned/ (the model every later stage reads: the SFT adapter trained on, or with train.sft: false a new
adapter on model.name; with preference.method: none the SFT model itself, its files linked), models/
preference_checkpoints/ (persisted: an interrupted run resumes), metrics/preference.json, metrics/preference_loss.png and
dvclive/preference/.
"""

import shutil
import sys
from pathlib import Path

from slothline import backends, checkpoints, kinds, plots, training
from slothline.artifacts import (PREFERENCE_CHECKPOINTS_DIR, PREFERENCE_LIVE_DIR, PREFERENCE_LOSS_PLOT, PREFERENCE_METRICS,
                                 SFT_DIR, TUNED_DIR, Manifest, atomic_dir, link_tree, read_split, write_json)
from slothline.errors import run_stage
from slothline.params import load_params
from slothline.runtime import gather, main_process_result, probe, process_group, processes_to_start, resolve, start_processes

def main() -> None:
    params = load_params()
    sft = Manifest.read(SFT_DIR)
    if params.preference.method == "none":
        return pass_on(sft)
    caps = probe()
    runtime = resolve(params, caps)
    if (processes := processes_to_start(params, caps)) > 1:
        print(f"preference tuning in {processes} processes, one per GPU (torchrun, DDP)", flush=True)
        sys.exit(start_processes(processes, "stages.preference"))
    with process_group(runtime):
        tune(params, runtime, sft)


def pass_on(sft: Manifest) -> None:
    """preference.method: none: the SFT model is the tuned model (its files linked, not copied)."""
    with atomic_dir(TUNED_DIR) as staging:
        link_tree(SFT_DIR, staging)
    PREFERENCE_CHECKPOINTS_DIR.mkdir(parents=True, exist_ok=True)
    checkpoints.clear_checkpoints(PREFERENCE_CHECKPOINTS_DIR)
    shutil.rmtree(PREFERENCE_LIVE_DIR, ignore_errors=True)  # a persisted out: no earlier run's curves stay
    PREFERENCE_LIVE_DIR.mkdir(parents=True)
    (PREFERENCE_LIVE_DIR / "README.md").write_text("No preference run: preference.method is none, so the tuned model "
                                                   "is train's (models/sft).\n")
    write_json(PREFERENCE_METRICS, {"method": "none"})
    plots.loss_curve([], PREFERENCE_LOSS_PLOT)
    print(f"preference.method: none: {SFT_DIR}/ ({sft.method}) -> {TUNED_DIR}/")


def tune(params, runtime, sft: Manifest) -> None:
    """Preference-tune in this process (alone, or as one rank of a DDP job); the main process writes the outputs."""
    from slothline.kinds.causal_lm import preference

    backend = backends.get(runtime)  # first: Unsloth patches transformers, TRL and PEFT before they load
    task = kinds.get(params.kind)
    train_rows, val_rows = read_split("preference/train"), read_split("preference/val")
    model, tokenizer = backends.load_for_preference(task, runtime, params, sft, SFT_DIR)
    fingerprint = checkpoints.run_fingerprint(params, runtime.world_size, "preference")
    resume_from = main_process_result(runtime, lambda: resume_point(fingerprint, runtime.world_size))
    callbacks = training.callbacks(preference.schedule(params).train, runtime, PREFERENCE_LIVE_DIR,
                                   resumed=resume_from is not None)
    trainer = preference.build_trainer(backend, runtime, params, model, tokenizer, train_rows, val_rows,
                                       str(PREFERENCE_CHECKPOINTS_DIR), callbacks)
    if resume_from and runtime.is_main_process:
        print(f"resuming from {resume_from}")
    training.reset_peak_memory(runtime)
    result = trainer.train(resume_from_checkpoint=resume_from)
    val = trainer.evaluate() if val_rows else {}
    peak_mem_gib = max(gather(runtime, training.peak_memory_gib(runtime)))
    if not runtime.is_main_process:
        return
    checkpoints.check_inputs_unchanged(params, fingerprint, runtime.world_size, "preference")
    if "ref" in model.peft_config:  # TRL's frozen copy of the starting adapter: the reference model
        model.delete_adapter("ref")
    with atomic_dir(TUNED_DIR) as staging:
        backends.save_trained(model, tokenizer, staging)
        Manifest(kind=task.NAME, method="lora", base_model=params.model.name, revision=params.model.revision,
                 backend=runtime.backend, precision=runtime.precision, load_in_4bit=params.model.load_in_4bit,
                 max_seq_length=params.model.max_seq_length, preference=params.preference.method).write(staging)
    write_json(PREFERENCE_METRICS, preference.run_metrics(params, trainer, result, val, runtime, peak_mem_gib,
                                                          sft.method))
    plots.loss_curve(trainer.state.log_history, PREFERENCE_LOSS_PLOT)
    checkpoints.clear_checkpoints(PREFERENCE_CHECKPOINTS_DIR)
    print(f"{params.preference.method} ({runtime.backend}) on {SFT_DIR}/ -> {TUNED_DIR}/, metrics -> {PREFERENCE_METRICS}")


def resume_point(fingerprint: str, processes: int) -> str | None:
    """The checkpoint to resume from, without its ref/ folder: TRL's frozen copy of the starting adapter, which
    it rebuilds from models/sft anyway. transformers resumes an adapter folder that has sub-folders by loading
    those alone, which would restart the trained adapter from the SFT weights."""
    checkpoint = checkpoints.resume_point(PREFERENCE_CHECKPOINTS_DIR, fingerprint, processes)
    if checkpoint:
        shutil.rmtree(Path(checkpoint) / "ref", ignore_errors=True)
    return checkpoint


if __name__ == "__main__":
    run_stage(main)
