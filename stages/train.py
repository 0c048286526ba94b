"""train: fine-tune `model.name` with LoRA (or fully) on data/prepared/train.jsonl.

Outs: models/adapter/ (a PEFT adapter directory plus tokenizer), models/checkpoints/ (persisted, so
an interrupted run resumes from its last checkpoint), metrics/train.json, the loss curve as
metrics/loss.png (train and val loss) and in dvclive/train/.
"""

import hashlib
import json
import resource
from pathlib import Path

import torch

from stages.lib import plots
from stages.lib.errors import SlothlineError, run_stage
from stages.lib.mixing import PREPARED_DIR, read_split
from stages.lib.outputs import atomic_dir, clear_checkpoints, resume_point, write_json
from stages.lib.params import load_params
from stages.lib.templates import turn_markers

CHECKPOINTS = Path("models/checkpoints")
ADAPTER_DIR = Path("models/adapter")
METRICS_FILE = Path("metrics/train.json")
LOSS_PLOT = Path("metrics/loss.png")
LIVE_DIR = "dvclive/train"


def main() -> None:
    params = load_params()
    from stages.lib import backends  # imports unsloth (when used) before transformers

    runtime = backends.choose_runtime(params)
    train_rows, val_rows = read_split("train"), read_split("val")
    if not train_rows:
        raise SlothlineError(f"{PREPARED_DIR}/train.jsonl: no training rows; check data.sources and data.total")
    model, tokenizer = backends.load_model(runtime, params)
    from dvclive import Live

    markers = turn_markers([r["text"] for r in train_rows]) if params.train.train_on_responses_only else None

    resume_from = resume_point(CHECKPOINTS, run_fingerprint(params))
    live = Live(LIVE_DIR, resume=resume_from is not None, dvcyaml=False, save_dvc_exp=False)
    trainer = backends.build_trainer(runtime, params, model, tokenizer, train_rows, val_rows,
                                     str(CHECKPOINTS), [loss_curve(live)], markers)
    tokens_before = tokens_seen_at(resume_from)
    if resume_from:
        print(f"resuming from {resume_from}")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    result = trainer.train(resume_from_checkpoint=resume_from)
    val_loss = trainer.evaluate()["eval_loss"] if val_rows else None

    with atomic_dir(ADAPTER_DIR) as staging:
        backends.save_trained(model, tokenizer, staging)
    state = trainer.state
    tokens = state.num_input_tokens_seen - tokens_before
    runtime_s = result.metrics["train_runtime"]
    write_json(METRICS_FILE, {
        "backend": runtime.backend,
        "device": runtime.device,
        "precision": runtime.precision,
        "optim": runtime.optim,
        "steps": state.global_step,
        "epochs": round(state.epoch, 3),
        "resumed_from_step": int(resume_from.rsplit("-", 1)[1]) if resume_from else 0,
        "train_loss": next((round(log["loss"], 4) for log in reversed(state.log_history) if "loss" in log), None),
        "train_loss_avg": round(result.training_loss, 4),
        "val_loss": round(val_loss, 4) if val_loss is not None else None,
        "runtime_s": round(runtime_s, 2),
        "train_tokens": tokens,
        "train_tokens_per_s": round(tokens / runtime_s, 1),
        "peak_mem_gib": round(peak_memory_gib(), 3),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    })
    plots.loss_curve(state.log_history, LOSS_PLOT)
    clear_checkpoints(CHECKPOINTS)
    print(f"adapter -> {ADAPTER_DIR}/, metrics -> {METRICS_FILE}")


def loss_curve(live):
    """transformers' DVCLive callback, plotting each point at the trainer's global step (so a resumed
    run continues its curve)."""
    from transformers.integrations import DVCLiveCallback

    class StepDVCLiveCallback(DVCLiveCallback):
        def on_log(self, args, state, control, **kwargs):
            live.step = state.global_step
            super().on_log(args, state, control, **kwargs)

    return StepDVCLiveCallback(live=live)


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


def peak_memory_gib() -> float:
    """Peak GPU memory allocated on CUDA, else the process's peak resident memory."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


if __name__ == "__main__":
    run_stage(main)
