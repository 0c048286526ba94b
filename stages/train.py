"""train: fine-tune `model.name` with LoRA (or fully) on data/prepared/train.jsonl.

Outs: models/adapter/ (a PEFT adapter directory, or the whole model, plus the processor and
manifest.json), models/checkpoints/ (persisted, so an interrupted run resumes from its last
checkpoint), metrics/train.json, the loss curve as metrics/loss.png (train and val loss) and in
dvclive/train/.

With `train.num_gpus` > 1 the stage starts itself again under torchrun, one process per GPU (DDP);
the main process (rank 0) alone writes every output.
"""

import hashlib
import json
import resource
import sys
from pathlib import Path

from stages.lib import kinds, plots
from stages.lib.artifacts import ADAPTER_DIR, CHECKPOINTS_DIR, PREPARED_DIR, Manifest, read_split
from stages.lib.errors import SlothlineError, run_stage
from stages.lib.outputs import atomic_dir, clear_checkpoints, resume_point, write_json
from stages.lib.params import load_params
from stages.lib.runtime import (gather, main_process_result, probe, process_group, processes_to_start, resolve,
                                start_processes)

METRICS_FILE = Path("metrics/train.json")
LOSS_PLOT = Path("metrics/loss.png")
LIVE_DIR = "dvclive/train"


def main() -> None:
    params = load_params()
    caps = probe()
    processes = processes_to_start(params, caps)
    if processes > 1:
        resolve(params, caps)  # an impossible ask fails here, once
        print(f"training in {processes} processes, one per GPU (torchrun, DDP)", flush=True)
        sys.exit(start_processes(processes, "stages.train"))
    runtime = resolve(params, caps)
    with process_group(runtime):
        train(params, runtime)


def train(params, runtime) -> None:
    """Train in this process (alone, or as one rank of a DDP job); the main process writes the outputs."""
    task = kinds.for_params(params)
    from stages.lib import backends  # imports unsloth (when used) before transformers

    train_rows, val_rows = read_split("train"), read_split("val")
    if not train_rows:
        raise SlothlineError(f"{PREPARED_DIR}/train.jsonl: no training rows; check data.sources and data.total")
    labels = task.labels(train_rows)
    model, processor = backends.load_for_training(task, runtime, params, labels)
    method = backends.method_of(model)
    from dvclive import Live

    resume_from = main_process_result(
        runtime, lambda: resume_point(CHECKPOINTS_DIR, run_fingerprint(params, runtime), runtime.world_size))
    check_best_model(params.train, task, val_rows)
    callbacks = [warmup_warning(), *early_stopping(params.train)]
    if runtime.is_main_process:  # dvclive writes (and on a fresh run clears) its directory: one writer
        callbacks.append(loss_curve(Live(LIVE_DIR, resume=resume_from is not None, dvcyaml=False,
                                         save_dvc_exp=False)))
    trainer = task.build_trainer(runtime, params, model, processor, train_rows, val_rows, str(CHECKPOINTS_DIR),
                                 callbacks)
    skip_unused_weight_search(trainer, model, runtime, params)
    tokens_before = tokens_seen_at(resume_from)
    if resume_from and runtime.is_main_process:
        print(f"resuming from {resume_from}")
    reset_peak_memory(runtime)
    result = trainer.train(resume_from_checkpoint=resume_from)
    val_loss = trainer.evaluate()["eval_loss"] if val_rows else None
    # A collective: once it returns, every process has written its last checkpoint files.
    peak_mem_gib = max(gather(runtime, peak_memory_gib(runtime)))
    if not runtime.is_main_process:
        return

    with atomic_dir(ADAPTER_DIR) as staging:
        backends.save_trained(model, processor, staging)
        Manifest(kind=task.NAME, method=method, base_model=params.model.name, revision=params.model.revision,
                 backend=runtime.backend, precision=runtime.precision, load_in_4bit=params.model.load_in_4bit,
                 max_seq_length=params.model.max_seq_length, labels=labels).write(staging)
    state, args = trainer.state, trainer.args
    tokens = state.num_input_tokens_seen - tokens_before  # counted on every process (the Trainer gathers)
    runtime_s = result.metrics["train_runtime"]
    logged_loss = next((log["loss"] for log in reversed(state.log_history) if "loss" in log), result.training_loss)
    write_json(METRICS_FILE, {
        "kind": task.NAME,
        "method": method,
        "backend": runtime.backend,
        "device": runtime.device_name,
        "precision": runtime.precision,
        "optim": runtime.optim,
        "attention": runtime.attention,
        "world_size": args.world_size,
        "global_batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
        "steps": state.global_step,
        "epochs": round(state.epoch, 3),
        "resumed_from_step": int(resume_from.rsplit("-", 1)[1]) if resume_from else 0,
        "train_loss": round(logged_loss, 4),
        "train_loss_avg": round(result.training_loss, 4),
        "val_loss": round(val_loss, 4) if val_loss is not None else None,
        "metric_for_best_model": args.metric_for_best_model,
        "best_metric": state.best_metric,
        "best_step": state.best_global_step,
        "stopped_early": state.global_step < state.max_steps,
        "runtime_s": round(runtime_s, 2),
        "train_tokens": tokens,
        "train_tokens_per_s": round(tokens / runtime_s, 1),
        "peak_mem_gib": round(peak_mem_gib, 3),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_params": sum(p.numel() for p in model.parameters()),
    })
    plots.loss_curve(state.log_history, LOSS_PLOT)
    clear_checkpoints(CHECKPOINTS_DIR)
    print(f"{task.NAME} ({runtime.backend}) -> {ADAPTER_DIR}/, metrics -> {METRICS_FILE}")


def skip_unused_weight_search(trainer, model, runtime, params) -> None:
    """Under DDP, where every trainable weight trains in every step, tell DDP not to search each step's
    graph for unused weights (find_unused_parameters=False; transformers asks for the search for every
    PEFT model). Unsloth's gradient checkpointing is reentrant and breaks with that search, so where the
    search stays on, it is refused."""
    if runtime.world_size == 1 or trainer.args.ddp_find_unused_parameters is not None:  # alone, or decided
        return
    from stages.lib import backends

    if backends.every_trainable_weight_trains(model):
        trainer.args.ddp_find_unused_parameters = False
        trainer.accelerator.ddp_handler.find_unused_parameters = False
    elif runtime.backend == "unsloth" and params.train.gradient_checkpointing and not params.train.full_finetuning:
        raise SlothlineError(
            "train.num_gpus: under DDP, Unsloth's gradient checkpointing needs every trainable weight to train in "
            f"every step, which LoRA on a model part a step may skip ({', '.join(backends.OPTIONAL_PARTS)}) does "
            "not promise; set train.gradient_checkpointing: false, or train.backend: hf")


def loss_curve(live):
    """transformers' DVCLive callback, plotting each point at the trainer's global step (so a resumed
    run continues its curve)."""
    from transformers.integrations import DVCLiveCallback

    class StepDVCLiveCallback(DVCLiveCallback):
        def on_log(self, args, state, control, **kwargs):
            live.step = state.global_step
            super().on_log(args, state, control, **kwargs)

    return StepDVCLiveCallback(live=live)


def check_best_model(train, task, val_rows: list[dict]) -> None:
    """The best model (to load at the end, or to stop early) is judged on the val split by a metric the kind computes there."""
    if not train.tracks_best_model:
        return
    if not val_rows:
        raise SlothlineError("train.load_best_model_at_end and train.early_stopping_patience judge the model on the "
                             "val split, which is empty; set data.val_fraction > 0, or turn them off")
    if train.metric_for_best_model not in ("auto", *task.VAL_METRICS):
        raise SlothlineError(f"train.metric_for_best_model: {task.NAME} models are measured on the val split by "
                             f"{', '.join(task.VAL_METRICS)}, not {train.metric_for_best_model}; use one of those, or auto")


def early_stopping(train) -> list:
    """transformers' EarlyStoppingCallback with train.early_stopping_patience (its count is saved in each
    checkpoint, so a resumed run goes on counting), or nothing."""
    if train.early_stopping_patience is None:
        return []
    from transformers import EarlyStoppingCallback

    return [EarlyStoppingCallback(early_stopping_patience=train.early_stopping_patience)]


def warmup_warning():
    """Says so when warm-up lasts the whole run: the learning rate then never reaches train.learning_rate
    (with one step, it stays 0 and nothing is learned)."""
    from transformers import TrainerCallback

    class WarmupWarning(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero and args.warmup_steps >= state.max_steps:
                print(f"warning: train.warmup_steps ({args.warmup_steps}) >= the {state.max_steps} training steps, "
                      "so the learning rate never leaves warm-up; lower train.warmup_steps or train longer")

    return WarmupWarning()


def run_fingerprint(params, runtime) -> str:
    """What a checkpoint must share with this run to be resumed: training params, the number of processes
    (`train.num_gpus` resolved) and data."""
    knobs = {**params.model_dump(include={"model", "lora", "train"}, exclude={"train": {"num_gpus"}}),
             "world_size": runtime.world_size}
    digest = hashlib.sha256(json.dumps(knobs, sort_keys=True).encode())
    digest.update((PREPARED_DIR / "train.jsonl").read_bytes())
    return digest.hexdigest()


def tokens_seen_at(checkpoint: str | None) -> int:
    if not checkpoint:
        return 0
    return json.loads((Path(checkpoint) / "trainer_state.json").read_text()).get("num_input_tokens_seen", 0)


def reset_peak_memory(runtime) -> None:
    if runtime.device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib(runtime) -> float:
    """Peak GPU memory allocated on CUDA, else the process's peak resident memory."""
    if runtime.device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


if __name__ == "__main__":
    run_stage(main)
