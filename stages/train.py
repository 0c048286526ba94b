"""train: fine-tune `model.name` with LoRA (or fully) on data/prepared/train.jsonl (supervised fine-tuning).

Outs: models/sft/ (a PEFT adapter, or the whole model, with its processor and manifest.json; with train.sft: false
the manifest alone, and nothing trains), models/checkpoints/
(persisted: an interrupted run resumes), metrics/train.json, metrics/loss.png and dvclive/train/. With
`train.num_gpus` > 1 the stage starts itself again under torchrun (DDP); rank 0 alone writes the outputs.
"""

from slothline import backends, checkpoints, kinds, plots, training
from slothline.artifacts import (CHECKPOINTS_DIR, LIVE_DIR, LOSS_PLOT, SFT_DIR, TRAIN_METRICS, Manifest,
                                 atomic_dir, read_split, write_json)
from slothline.dvcfile import require_model_declared
from slothline.errors import run_stage
from slothline.params import load_params
from slothline.runtime import gather, main_process_result, run_job


def main() -> None:
    params = load_params()
    if not getattr(params.train, "sft", True):
        return skip(params)
    require_model_declared(params.model.name, ["train"])
    run_job(params, "stages.train", train, "training")


def train(params, runtime) -> None:
    """Train in this process (alone, or as one rank of a DDP job); the main process writes the outputs."""
    backend = backends.get(runtime)  # first: Unsloth patches transformers, TRL and PEFT before they load
    task = kinds.get(params.kind)
    training.check_training(task, params)  # `dvc repro train` does not run check_params
    train_rows, val_rows = read_split("train"), read_split("val")
    labels = task.labels(train_rows)
    model, processor = backends.load_for_training(task, runtime, params, labels)
    fingerprint = checkpoints.run_fingerprint(params, runtime.world_size)
    resume_from = main_process_result(
        runtime, lambda: checkpoints.resume_point(CHECKPOINTS_DIR, fingerprint, runtime.world_size))
    callbacks = training.callbacks(params.train, runtime, LIVE_DIR, checkpoints.step_of(resume_from))
    trainer = task.build_trainer(backend, runtime, params, model, processor, train_rows, val_rows,
                                 str(CHECKPOINTS_DIR), callbacks)
    training.prepare_trainer(trainer, model, backend, runtime, params)
    if resume_from and runtime.is_main_process:
        print(f"resuming from {resume_from}")
    tokens_before = checkpoints.tokens_seen_at(resume_from)  # before training deletes that checkpoint
    training.reset_peak_memory(runtime)
    result = training.train(trainer, resume_from)
    val_loss = trainer.evaluate()["eval_loss"] if val_rows else None
    peak_mem_gib = max(gather(runtime, training.peak_memory_gib(runtime)))  # a collective: every rank saved
    if not runtime.is_main_process:
        return
    checkpoints.check_inputs_unchanged(params, load_params(), fingerprint, runtime.world_size)
    method = backends.method_of(model)
    with atomic_dir(SFT_DIR) as staging:
        backends.save_trained(model, processor, staging)
        Manifest.of_run(params, method, runtime.backend, runtime.precision, labels=labels).write(staging)
    metrics = training.train_metrics(trainer, result, runtime, model, tokens_before, checkpoints.step_of(resume_from),
                                     val_loss, peak_mem_gib)
    coverage = task.loss_coverage(model, processor, params, train_rows, val_rows)
    write_json(TRAIN_METRICS, {"kind": task.NAME, "method": method, **metrics, **coverage})
    plots.loss_curve(trainer.state.log_history, LOSS_PLOT)
    checkpoints.clear_checkpoints(CHECKPOINTS_DIR)
    print(f"{task.NAME} ({runtime.backend}) -> {SFT_DIR}/, metrics -> {TRAIN_METRICS}")


def skip(params) -> None:
    """train.sft: false: a manifest saying nothing was trained (the preference stage starts from model.name),
    and empty metrics, so that every out exists."""
    with atomic_dir(SFT_DIR) as staging:
        Manifest.of_run(params, "none", "none", "none").write(staging)
    training.record_no_run(CHECKPOINTS_DIR, LIVE_DIR, LOSS_PLOT, TRAIN_METRICS, {"kind": params.kind, "method": "none"},
                           "No supervised fine-tuning: train.sft is false.")
    print(f"train.sft: false: nothing trained; {SFT_DIR}/ says so, and the preference stage starts from "
          f"{params.model.name}")


if __name__ == "__main__":
    run_stage(main)
