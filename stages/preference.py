"""preference: tune the SFT model (models/sft) on preference data with `preference.method` (DPO, ORPO, KTO).

Outs: models/tuned/ (the model every later stage reads: the SFT adapter trained on, or with train.sft: false a new
adapter on model.name; with preference.method: none the SFT model itself, its files linked), models/
preference_checkpoints/ (persisted: an interrupted run resumes), metrics/preference.json, metrics/preference_loss.png and
dvclive/preference/.
"""

from slothline import backends, checkpoints, kinds, plots, training
from slothline.artifacts import (PREFERENCE_CHECKPOINTS_DIR, PREFERENCE_LIVE_DIR, PREFERENCE_LOSS_PLOT, PREFERENCE_METRICS,
                                 PREFERENCE_SPLITS_DIR, SFT_DIR, TUNED_DIR, Manifest, atomic_dir, link_tree, read_split,
                                 write_json)
from slothline.dvcfile import require_model_declared
from slothline.errors import run_stage
from slothline.params import load_params
from slothline.runtime import gather, main_process_result, run_job


def main() -> None:
    params = load_params()
    sft = Manifest.read(SFT_DIR)
    if params.preference.method == "none":
        return pass_on(sft)
    require_model_declared(params.model.name, ["preference"])
    run_job(params, "stages.preference", lambda params, runtime: tune(params, runtime, sft), "preference tuning")


def pass_on(sft: Manifest) -> None:
    """preference.method: none: the SFT model is the tuned model (its files linked, not copied)."""
    with atomic_dir(TUNED_DIR) as staging:
        link_tree(SFT_DIR, staging)
    training.record_no_run(PREFERENCE_CHECKPOINTS_DIR, PREFERENCE_LIVE_DIR, PREFERENCE_LOSS_PLOT, PREFERENCE_METRICS,
                           {"method": "none"}, "No preference run: preference.method is none, so the tuned model is "
                           "train's (models/sft).")
    print(f"preference.method: none: {SFT_DIR}/ ({sft.method}) -> {TUNED_DIR}/")


def tune(params, runtime, sft: Manifest) -> None:
    """Preference-tune in this process (alone, or as one rank of a DDP job); the main process writes the outputs."""
    from slothline.kinds.causal_lm import preference

    backend = backends.get(runtime)  # first: Unsloth patches transformers, TRL and PEFT before they load
    task = kinds.get(params.kind)
    train_rows, val_rows = (read_split(f"{PREFERENCE_SPLITS_DIR.name}/{split}") for split in ("train", "val"))
    model, tokenizer = backends.load_for_preference(task, runtime, params, sft, SFT_DIR)
    fingerprint = checkpoints.run_fingerprint(params, runtime.world_size, "preference")
    resume_from = main_process_result(runtime, lambda: preference.resume_point(PREFERENCE_CHECKPOINTS_DIR, fingerprint,
                                                                               runtime.world_size))
    callbacks = training.callbacks(preference.schedule(params).train, runtime, PREFERENCE_LIVE_DIR,
                                   checkpoints.step_of(resume_from))
    trainer = preference.build_trainer(backend, runtime, params, model, tokenizer, train_rows, val_rows,
                                       str(PREFERENCE_CHECKPOINTS_DIR), callbacks)
    training.prepare_trainer(trainer, model, backend, runtime, params)
    if resume_from and runtime.is_main_process:
        print(f"resuming from {resume_from}")
    training.reset_peak_memory(runtime)
    result = training.train(trainer, resume_from)
    val = trainer.evaluate() if val_rows else {}
    peak_mem_gib = max(gather(runtime, training.peak_memory_gib(runtime)))
    if not runtime.is_main_process:
        return
    checkpoints.check_inputs_unchanged(params, load_params(), fingerprint, runtime.world_size, "preference")
    if "ref" in model.peft_config:  # TRL's frozen copy of the starting adapter: the reference model
        model.delete_adapter("ref")
    with atomic_dir(TUNED_DIR) as staging:
        backends.save_trained(model, tokenizer, staging)
        Manifest.of_run(params, "lora", runtime.backend, runtime.precision,
                        preference=params.preference.method).write(staging)
    write_json(PREFERENCE_METRICS, preference.run_metrics(params, trainer, result, val, runtime, peak_mem_gib,
                                                          sft.method))
    plots.loss_curve(trainer.state.log_history, PREFERENCE_LOSS_PLOT)
    checkpoints.clear_checkpoints(PREFERENCE_CHECKPOINTS_DIR)
    print(f"{params.preference.method} ({runtime.backend}) on {SFT_DIR}/ -> {TUNED_DIR}/, metrics -> {PREFERENCE_METRICS}")


if __name__ == "__main__":
    run_stage(main)
