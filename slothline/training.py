"""Training: the transformers TrainingArguments every kind's trainer takes from the `train.*` params, TRL's
SFTTrainer as the generating kinds configure it, the callbacks every run gets (warm-up warning, early
stopping, the dvclive loss curve), DDP's unused-weight search, and what metrics/train.json records."""

import re
import resource
from pathlib import Path

from slothline.errors import SlothlineError


def training_config(config_class, backend, runtime, params, output_dir: str, evaluate: bool, default_metric: str,
                    **extra):
    """`config_class` (TrainingArguments, or TRL's SFTConfig or Unsloth's patched one) from `train.*` and the
    resolved runtime, plus the kind's `extra` arguments; with `evaluate`, the val loss every `train.eval_steps`;
    `default_metric` is what `train.metric_for_best_model: auto` means for the kind."""
    train = params.train
    try:
        return config_class(
            output_dir=output_dir,
            num_train_epochs=train.epochs,
            max_steps=train.max_steps,
            per_device_train_batch_size=train.per_device_batch_size,
            per_device_eval_batch_size=train.per_device_batch_size,
            gradient_accumulation_steps=train.gradient_accumulation_steps,
            learning_rate=train.learning_rate,
            warmup_steps=train.warmup_steps,
            weight_decay=train.weight_decay,
            lr_scheduler_type=train.lr_scheduler,
            lr_scheduler_kwargs=train.lr_scheduler_kwargs,
            optim=runtime.optim,
            seed=train.seed,
            data_seed=train.seed,
            logging_steps=train.logging_steps,
            save_strategy="steps",
            save_steps=train.save_steps,
            save_total_limit=train.save_total_limit,
            **best_model_settings(train, default_metric),
            restore_callback_states_from_checkpoint=True,  # a resumed run goes on counting early stopping's patience
            eval_strategy="steps" if evaluate else "no",
            eval_steps=train.eval_steps,
            bf16=runtime.precision == "bfloat16",
            fp16=runtime.precision == "float16",
            use_cpu=runtime.device == "cpu",
            gradient_checkpointing=train.gradient_checkpointing and backend.TRAINER_CHECKPOINTING,
            include_num_input_tokens_seen="non_padding",
            report_to="none",
            disable_tqdm=False,
            dataloader_num_workers=0,
            accelerator_config={"non_blocking": True},  # batches go to the GPU from pinned memory without a wait
            **extra,
        )
    except ValueError as err:  # e.g. an lr_scheduler name transformers does not know
        raise SlothlineError(f"params.yaml: train settings rejected by transformers (check train.lr_scheduler, "
                             f"train.optim): {err}") from None


def check_training(task, params) -> None:
    """The refusals of `kinds.check` that concern training: a best-model metric the kind measures and a val split
    to measure it on, names transformers knows, `lora.target_modules` the model has. `train` runs them itself
    (`dvc repro train` does not run check_params), after `run_job` has checked the machine."""
    from slothline.backends.lora import check_target_names

    train = params.train
    if train.tracks_best_model and params.data.val_fraction == 0:
        raise SlothlineError("train.load_best_model_at_end and train.early_stopping_patience judge the model on the "
                             "val split, which data.val_fraction: 0 leaves empty; set data.val_fraction > 0, or turn "
                             "them off")
    if train.metric_for_best_model not in ("auto", *task.VAL_METRICS):
        raise SlothlineError(f"train.metric_for_best_model: {task.NAME} models are measured on the val split by "
                             f"{', '.join(task.VAL_METRICS)}, not {train.metric_for_best_model}; use one of those, "
                             "or auto")
    check_names(train)
    check_target_names(task, params)


def check_names(train) -> None:
    """Refuse a `train.lr_scheduler` or `train.optim` transformers does not know, with the closest name, and a
    scheduler that cannot be built from `train.lr_scheduler_kwargs` (some need arguments of their own)."""
    import difflib

    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    for key, value, known in (("lr_scheduler", train.lr_scheduler, [s.value for s in SchedulerType]),
                              ("optim", train.optim, ["auto", *(o.value for o in OptimizerNames)])):
        if value not in known:
            close = difflib.get_close_matches(value, known, n=1)
            hint = f"did you mean {close[0]}?" if close else f"transformers knows {', '.join(known)}"
            raise SlothlineError(f"train.{key}: {value!r} is not a name transformers knows; {hint}")
    check_scheduler(train.lr_scheduler, train.lr_scheduler_kwargs)


def check_scheduler(name: str, kwargs: dict) -> None:
    """Build the scheduler once on a stand-in optimizer: what transformers would refuse at the first step."""
    import torch
    from transformers import get_scheduler

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    try:
        get_scheduler(name, optimizer, num_warmup_steps=1, num_training_steps=10,
                      scheduler_specific_kwargs=dict(kwargs))
    except (TypeError, ValueError) as err:
        raise SlothlineError(f"train.lr_scheduler: {name} cannot be built from train.lr_scheduler_kwargs "
                             f"{dict(kwargs)} ({err}); set the arguments it names in train.lr_scheduler_kwargs "
                             "(e.g. cosine_with_min_lr: {min_lr_rate: 0.1}; warmup_stable_decay: "
                             "{num_decay_steps: 100}), or use another scheduler") from None


def best_model_settings(train, default_metric: str) -> dict:
    """TrainingArguments for `train.load_best_model_at_end` and the metric it (and early stopping) follow:
    `auto` is the kind's `default_metric`; loss is better lower, every other metric higher."""
    if not train.tracks_best_model:
        return {"load_best_model_at_end": False}
    metric = default_metric if train.metric_for_best_model == "auto" else train.metric_for_best_model
    return {"load_best_model_at_end": train.load_best_model_at_end, "metric_for_best_model": metric,
            "greater_is_better": not metric.endswith("loss")}


def sft_config(backend, runtime, params, output_dir: str, evaluate: bool, default_metric: str, packing: bool,
               **settings):
    """TRL's SFTConfig (Unsloth's patched one once unsloth is imported) from the `train.*` params, packed or
    not, padding-free as the runtime resolved it (packing always is), plus the kind's `settings`."""
    from trl import SFTConfig

    unpacked_padding_free = runtime.padding_free and not packing  # TRL: rows come truncated (the kind cuts them)
    return training_config(SFTConfig, backend, runtime, params, output_dir, evaluate, default_metric, **{
        "max_length": None if unpacked_padding_free else params.model.max_seq_length, "packing": packing,
        "packing_strategy": "bfd", "padding_free": runtime.padding_free, **settings})


def sft_trainer_class(runtime):
    """TRL's SFTTrainer on a GPU; on the CPU, the same trainer with the model's own loss."""
    from trl import SFTTrainer

    return SFTTrainer if runtime.device == "cuda" else model_loss_trainer_class()


def model_loss_trainer_class():
    from transformers import Trainer
    from trl import SFTTrainer

    class ModelLossSFTTrainer(SFTTrainer):
        """SFTTrainer whose loss is the model's own cross-entropy.

        TRL 1.15 computes its loss through a Triton kernel, which needs a CUDA device (a CUDA build
        of torch imports Triton on a CPU machine too, then fails at the first step); on the CPU the
        model's own cross-entropy over the same labels is the same loss.
        """

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return Trainer.compute_loss(self, model, {**inputs, "use_cache": False}, return_outputs, num_items_in_batch)

    return ModelLossSFTTrainer


def callbacks(train, runtime, live_dir, resumed_at: int) -> list:
    """The callbacks of every run: a warning when warm-up lasts the whole run, early stopping when asked for,
    and (on the main process, its one writer) the loss curve in dvclive, continued from step `resumed_at` (0: a
    fresh run)."""
    from dvclive import Live

    chosen = [warmup_warning()]
    if train.early_stopping_patience is not None:
        from transformers import EarlyStoppingCallback  # its count is saved in each checkpoint and restored on resume

        chosen.append(EarlyStoppingCallback(early_stopping_patience=train.early_stopping_patience))
    if runtime.is_main_process:  # dvclive writes (and on a fresh run clears) its directory
        if resumed_at:
            drop_points_after(live_dir, resumed_at)
        chosen.append(dvclive_callback(Live(str(live_dir), resume=bool(resumed_at), dvcyaml=False,
                                            save_dvc_exp=False)))
    return chosen


def drop_points_after(live_dir, step: int) -> None:
    """Remove the curve points a stopped run logged after `step`, the checkpoint its resumed run starts from (that
    run logs those steps again), and dvclive's summary (metrics.json) where the stop cut it short: dvclive, which
    writes it in place, would fail to read it on resuming; the resumed run writes it anew at its first log."""
    from pathlib import Path

    from slothline.artifacts import is_whole_json

    summary = Path(live_dir) / "metrics.json"
    if summary.is_file() and not is_whole_json(summary):
        summary.unlink()
    for table in Path(live_dir).glob("plots/metrics/**/*.tsv"):
        header, *rows = table.read_text().splitlines() or [""]
        names = header.split("\t")
        if "step" not in names:  # a file the stopped run left unwritten
            table.unlink()
            continue
        at = names.index("step")
        kept = [row for row in rows if len(cells := row.split("\t")) == len(names) and cells[at].isdigit()
                and int(cells[at]) <= step]  # a row cut short by the stop is dropped too
        table.write_text("".join(f"{line}\n" for line in [header, *kept]))


def dvclive_callback(live):
    """transformers' DVCLive callback, plotting each point at the trainer's global step (so a resumed run
    continues its curve)."""
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
            if state.is_world_process_zero and args.warmup_steps >= state.max_steps:
                print(f"warning: train.warmup_steps ({args.warmup_steps}) >= the {state.max_steps} training steps, "
                      "so the learning rate never leaves warm-up; lower train.warmup_steps or train longer")

    return WarmupWarning()


def prepare_trainer(trainer, model, backend, runtime, params) -> None:
    """What every training stage does to the trainer its kind built: DDP's unused-weight search off where it can
    be (`skip_unused_weight_search`), the input-token count read only when used (`count_tokens_on_device`), and
    the backend's own settings (`backend.prepare_trainer`)."""
    skip_unused_weight_search(trainer, model, backend, runtime, params)
    count_tokens_on_device(trainer)
    backend.prepare_trainer(trainer)


def count_tokens_on_device(trainer) -> None:
    """Add up the input tokens each step trains (transformers' `include_num_input_tokens_seen`, counted the same
    way) on the device, and move the sum into `trainer.state.num_input_tokens_seen` only where something reads it:
    a log, a save, an evaluation, the end of an epoch or of the run. transformers reads the count every step
    (`.item()`), which makes the CPU wait for the GPU before it queues the next step; where launching a step's
    kernels takes the CPU about as long as the GPU takes to run them (Unsloth, a few thousand tokens a step),
    the GPU then idles part of every step (benchmarks/results/train_exploration)."""
    import torch
    from transformers import TrainerCallback

    pending = torch.zeros((), dtype=torch.int64, device=trainer.args.device)

    def track(inputs) -> None:  # Trainer._track_num_input_tokens for "non_padding" (training_config's), no .item()
        name = getattr(trainer.model, "main_input_name", "input_ids")
        if name not in inputs:  # e.g. preference pairs (prompt_input_ids, ...), which transformers skips too
            return
        pad = getattr(trainer.processing_class, "pad_token_id", None)
        if "attention_mask" in inputs:
            count = inputs["attention_mask"].sum()
        else:
            count = (inputs[name] != pad).sum() if pad is not None else inputs[name].numel()
        pending.add_(count)

    def read(state) -> None:  # on every process alike: the gather is a collective under DDP
        state.num_input_tokens_seen += int(trainer.accelerator.gather(pending).sum().item())
        pending.zero_()

    class ReadTokenCount(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # after transformers' flow callback set these
            if control.should_log or control.should_save or control.should_evaluate or control.should_training_stop:
                read(state)

        def on_epoch_end(self, args, state, control, **kwargs):
            read(state)

    trainer._track_num_input_tokens = track
    trainer.add_callback(ReadTokenCount())


def skip_unused_weight_search(trainer, model, backend, runtime, params) -> None:
    """Under DDP, where every trainable weight trains in every step, tell DDP not to search each step's graph
    for unused weights (find_unused_parameters=False; transformers asks for the search for every PEFT model).
    Unsloth's gradient checkpointing is reentrant and breaks with that search, so where the search stays on,
    it is refused."""
    from slothline.backends.lora import OPTIONAL_PARTS, every_trainable_weight_trains

    if runtime.world_size == 1 or trainer.args.ddp_find_unused_parameters is not None:  # alone, or decided
        return
    if every_trainable_weight_trains(model):
        trainer.args.ddp_find_unused_parameters = False
        trainer.accelerator.ddp_handler.find_unused_parameters = False
    elif not backend.TRAINER_CHECKPOINTING and params.train.gradient_checkpointing and not params.train.full_finetuning:
        raise SlothlineError(
            "train.num_gpus: under DDP, Unsloth's gradient checkpointing needs every trainable weight to train in "
            f"every step, which LoRA on a model part a step may skip ({', '.join(OPTIONAL_PARTS)}) does not "
            "promise; set train.gradient_checkpointing: false, or train.backend: hf")


def train(trainer, resume_from: str | None):
    """trainer.train(), resumed from the checkpoint `resume_from` (None: from the start); a run that had finished
    at that checkpoint is not trained further (see `checkpoints.finished_at`): its weights and state come back from
    it (the best checkpoint's weights where train.load_best_model_at_end), as the finished run would have ended."""
    from slothline.checkpoints import finished_at

    if not finished_at(resume_from):
        return trainer.train(resume_from_checkpoint=resume_from)
    from transformers.trainer_callback import TrainerState
    from transformers.trainer_utils import TrainOutput

    state = TrainerState.load_from_json(f"{resume_from}/trainer_state.json")  # as the main process saved it
    state.is_world_process_zero = trainer.is_world_process_zero()
    state.is_local_process_zero = trainer.is_local_process_zero()
    trainer.state = state
    trainer._load_from_checkpoint(resume_from)
    best = state.best_model_checkpoint
    if trainer.args.load_best_model_at_end and best and Path(best).is_dir():
        trainer._load_best_model()
    return TrainOutput(trainer.state.global_step, 0.0, {"train_runtime": 0.0})


def run_loss_average(result, state, resumed_from_step: int) -> float:
    """The mean training loss over the run's steps. transformers' `training_loss` sums the loss since the resume
    but divides by every step; a resumed run adds the steps before it from the losses logged for them."""
    if not resumed_from_step:
        return result.training_loss
    after = result.training_loss * state.global_step
    before, last = 0.0, 0
    for log in state.log_history:
        if "loss" in log and log["step"] <= resumed_from_step:
            before, last = before + log["loss"] * (log["step"] - last), log["step"]
    if not last:  # nothing logged before the resume: the mean of the steps after it
        return after / max(state.global_step - resumed_from_step, 1)
    before *= resumed_from_step / last  # steps after the last log before the resume, at the logged mean
    return (before + after) / state.global_step


def train_metrics(trainer, result, runtime, model, tokens_before: int, resumed_from_step: int, val_loss,
                  peak_mem_gib: float) -> dict:
    """What metrics/train.json records of a finished run; tokens and time count what this process trained (none
    where it resumed a finished run)."""
    state, args = trainer.state, trainer.args
    tokens = state.num_input_tokens_seen - tokens_before  # counted on every process (the Trainer gathers)
    runtime_s = result.metrics["train_runtime"]
    logged_loss = next((log["loss"] for log in reversed(state.log_history) if "loss" in log), result.training_loss)
    return {
        "backend": runtime.backend,
        "device": runtime.device_name,
        "precision": runtime.precision,
        "optim": runtime.optim,
        "attention": runtime.attention,
        "world_size": args.world_size,
        "global_batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
        "steps": state.global_step,
        "epochs": round(state.epoch, 3),
        "resumed_from_step": resumed_from_step,
        "train_loss": round(logged_loss, 4),
        "train_loss_avg": round(run_loss_average(result, state, resumed_from_step), 4),
        "val_loss": round(val_loss, 4) if val_loss is not None else None,
        "metric_for_best_model": args.metric_for_best_model,
        **dict(zip(("best_metric", "best_step"), best_model(state, args))),
        "stopped_early": state.global_step < state.max_steps,
        "runtime_s": round(runtime_s, 2),
        "train_tokens": tokens,
        "train_tokens_per_s": round(tokens / runtime_s, 1) if runtime_s else None,
        "peak_mem_gib": round(peak_mem_gib, 3),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_params": sum(p.numel() for p in model.parameters()),
    }


def best_model(state, args) -> tuple[float | None, int | None]:
    """(metric, step) of the best evaluation; with load_best_model_at_end, of the checkpoint loaded at the end,
    which transformers picks among the saved ones, while its best_global_step follows every evaluation."""
    if not args.load_best_model_at_end:
        return state.best_metric, state.best_global_step
    if not state.best_model_checkpoint:  # no evaluation fell on a save: the last weights stay
        return None, None
    step = int(re.search(r"checkpoint-(\d+)$", str(state.best_model_checkpoint).rstrip("/")).group(1))
    key = args.metric_for_best_model if args.metric_for_best_model.startswith("eval_") else (
        f"eval_{args.metric_for_best_model}")
    metric = next((log[key] for log in state.log_history if log.get("step") == step and key in log), None)
    return metric, step


def record_no_run(checkpoints_dir, live_dir, loss_plot, metrics_file, metrics: dict, why: str) -> None:
    """The outs of a training stage that trains nothing: no checkpoints, no earlier run's curves in the persisted
    dvclive folder (`why` in its README instead), `metrics` and an empty loss plot."""
    import shutil

    from slothline import checkpoints, plots
    from slothline.artifacts import write_json

    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    checkpoints.clear_checkpoints(checkpoints_dir)
    shutil.rmtree(live_dir, ignore_errors=True)
    live_dir.mkdir(parents=True)
    (live_dir / "README.md").write_text(why + "\n")
    write_json(metrics_file, metrics)
    plots.loss_curve([], loss_plot)


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
