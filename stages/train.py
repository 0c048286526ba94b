"""train: fine-tune `model.name` with LoRA (or fully) on data/prepared/train.jsonl.

Outs: models/adapter/ (a PEFT adapter directory, or the whole model, plus the processor and
manifest.json), models/checkpoints/ (persisted, so an interrupted run resumes from its last
checkpoint), metrics/train.json, the loss curve as metrics/loss.png (train and val loss) and in
dvclive/train/.
"""

import hashlib
import json
import resource
from pathlib import Path

from stages.lib import kinds, plots
from stages.lib.artifacts import ADAPTER_DIR, CHECKPOINTS_DIR, PREPARED_DIR, Manifest, read_split
from stages.lib.errors import SlothlineError, run_stage
from stages.lib.outputs import atomic_dir, clear_checkpoints, resume_point, write_json
from stages.lib.params import load_params
from stages.lib.runtime import probe, resolve

METRICS_FILE = Path("metrics/train.json")
LOSS_PLOT = Path("metrics/loss.png")
LIVE_DIR = "dvclive/train"


def main() -> None:
    params = load_params()
    runtime = resolve(params, probe())
    task = kinds.for_params(params)
    from stages.lib import backends  # imports unsloth (when used) before transformers

    train_rows, val_rows = read_split("train"), read_split("val")
    if not train_rows:
        raise SlothlineError(f"{PREPARED_DIR}/train.jsonl: no training rows; check data.sources and data.total")
    labels = task.labels(train_rows)
    model, processor = backends.load_for_training(task, runtime, params, labels)
    method = backends.method_of(model)
    from dvclive import Live

    resume_from = resume_point(CHECKPOINTS_DIR, run_fingerprint(params))
    live = Live(LIVE_DIR, resume=resume_from is not None, dvcyaml=False, save_dvc_exp=False)
    trainer = task.build_trainer(runtime, params, model, processor, train_rows, val_rows, str(CHECKPOINTS_DIR),
                                 [loss_curve(live), warmup_warning()])
    tokens_before = tokens_seen_at(resume_from)
    if resume_from:
        print(f"resuming from {resume_from}")
    reset_peak_memory(runtime)
    result = trainer.train(resume_from_checkpoint=resume_from)
    val_loss = trainer.evaluate()["eval_loss"] if val_rows else None

    with atomic_dir(ADAPTER_DIR) as staging:
        backends.save_trained(model, processor, staging)
        Manifest(kind=task.NAME, method=method, base_model=params.model.name, revision=params.model.revision,
                 backend=runtime.backend, precision=runtime.precision, load_in_4bit=params.model.load_in_4bit,
                 max_seq_length=params.model.max_seq_length, labels=labels).write(staging)
    state = trainer.state
    tokens = state.num_input_tokens_seen - tokens_before
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
        "steps": state.global_step,
        "epochs": round(state.epoch, 3),
        "resumed_from_step": int(resume_from.rsplit("-", 1)[1]) if resume_from else 0,
        "train_loss": round(logged_loss, 4),
        "train_loss_avg": round(result.training_loss, 4),
        "val_loss": round(val_loss, 4) if val_loss is not None else None,
        "runtime_s": round(runtime_s, 2),
        "train_tokens": tokens,
        "train_tokens_per_s": round(tokens / runtime_s, 1),
        "peak_mem_gib": round(peak_memory_gib(runtime), 3),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_params": sum(p.numel() for p in model.parameters()),
    })
    plots.loss_curve(state.log_history, LOSS_PLOT)
    clear_checkpoints(CHECKPOINTS_DIR)
    print(f"{task.NAME} ({runtime.backend}) -> {ADAPTER_DIR}/, metrics -> {METRICS_FILE}")


def loss_curve(live):
    """transformers' DVCLive callback, plotting each point at the trainer's global step (so a resumed
    run continues its curve)."""
    from transformers.integrations import DVCLiveCallback

    class StepDVCLiveCallback(DVCLiveCallback):
        def on_log(self, args, state, control, **kwargs):
            live.step = state.global_step
            super().on_log(args, state, control, **kwargs)

    return StepDVCLiveCallback(live=live)


def warmup_warning():
    """Says so when warm-up lasts the whole run: the learning rate then never reaches train.learning_rate
    (with one step, it stays 0 and nothing is learned)."""
    from transformers import TrainerCallback

    class WarmupWarning(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if args.warmup_steps >= state.max_steps:
                print(f"warning: train.warmup_steps ({args.warmup_steps}) >= the {state.max_steps} training steps, "
                      "so the learning rate never leaves warm-up; lower train.warmup_steps or train longer")

    return WarmupWarning()


def run_fingerprint(params) -> str:
    """What a checkpoint must share with this run to be resumed: training params and data."""
    knobs = params.model_dump(include={"model", "lora", "train"})
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
