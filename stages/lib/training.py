"""The transformers TrainingArguments every kind's trainer takes from the `train.*` params, and TRL's
SFTTrainer as the generating kinds (causal LM, vision) configure it."""

from stages.lib.errors import SlothlineError


def training_config(config_class, runtime, params, output_dir: str, evaluate: bool, default_metric: str = "loss",
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
            optim=runtime.optim,
            seed=train.seed,
            data_seed=train.seed,
            logging_steps=train.logging_steps,
            save_strategy="steps",
            save_steps=train.save_steps,
            save_total_limit=train.save_total_limit,
            **best_model_settings(train, default_metric),
            eval_strategy="steps" if evaluate else "no",
            eval_steps=train.eval_steps,
            bf16=runtime.precision == "bfloat16",
            fp16=runtime.precision == "float16",
            use_cpu=runtime.device == "cpu",
            # Unsloth checkpoints through get_peft_model; the hf backend through transformers.
            gradient_checkpointing=train.gradient_checkpointing and runtime.backend == "hf",
            include_num_input_tokens_seen="non_padding",
            report_to="none",
            disable_tqdm=False,
            dataloader_num_workers=0,
            **extra,
        )
    except ValueError as err:  # e.g. an lr_scheduler name transformers does not know
        raise SlothlineError(f"params.yaml: train settings rejected by transformers (check train.lr_scheduler, "
                             f"train.optim): {err}") from None


def best_model_settings(train, default_metric: str) -> dict:
    """TrainingArguments for `train.load_best_model_at_end` and the metric it (and early stopping) follow:
    `auto` is the kind's `default_metric`; loss is better lower, every other metric higher."""
    if not train.tracks_best_model:
        return {"load_best_model_at_end": False}
    metric = default_metric if train.metric_for_best_model == "auto" else train.metric_for_best_model
    return {"load_best_model_at_end": train.load_best_model_at_end, "metric_for_best_model": metric,
            "greater_is_better": not metric.endswith("loss")}


def sft_config(runtime, params, output_dir: str, evaluate: bool, **settings):
    """TRL's SFTConfig (Unsloth's patched one once unsloth is imported) from the `train.*` params, with
    packing as `train.packing` asks, plus the kind's `settings`."""
    from trl import SFTConfig

    return training_config(SFTConfig, runtime, params, output_dir, evaluate, **{
        "max_length": params.model.max_seq_length, "packing": params.train.packing, "packing_strategy": "bfd",
        "padding_free": params.train.packing, **settings})


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
