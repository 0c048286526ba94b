"""The transformers TrainingArguments that every kind's trainer takes from the `train.*` params."""

from stages.lib.errors import SlothlineError


def training_config(config_class, runtime, params, output_dir: str, evaluate: bool, **extra):
    """`config_class` (TrainingArguments, or TRL's SFTConfig or Unsloth's patched one) from `train.*` and the
    resolved runtime, plus the kind's `extra` arguments; with `evaluate`, the val loss every `train.eval_steps`."""
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
            save_total_limit=2,
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
