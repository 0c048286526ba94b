"""Training backends behind one interface: `unsloth` (CUDA) and `hf` (transformers + PEFT, any device).

Both load the base model, attach the same LoRA config, train with TRL's SFTTrainer and save a
standard PEFT adapter directory plus the tokenizer. Unsloth must be imported before transformers,
TRL and PEFT: `load_model` imports it first, and nothing above it imports those at module level.
"""

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from stages.lib.errors import SlothlineError
from stages.lib.models import resolve_model
from stages.lib.params import Params
from stages.lib.templates import tokenize_for_training


@dataclass(frozen=True)
class Runtime:
    """Where and how training runs; recorded in metrics/train.json."""

    backend: str
    device: str
    precision: str
    optim: str


def unsloth_available() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("unsloth") is not None


def choose_runtime(params: Params) -> Runtime:
    """Resolve `train.backend: auto`, the precision and the optimizer; fail clearly on impossible asks."""
    requested, cuda = params.train.backend, torch.cuda.is_available()
    if requested == "unsloth" and not unsloth_available():
        missing = "a CUDA GPU" if not cuda else "the unsloth package (pip install -e '.[gpu]')"
        raise SlothlineError(f"train.backend: unsloth needs {missing}; set train.backend: hf (or auto) to train here")
    if params.model.load_in_4bit and not cuda:
        raise SlothlineError("model.load_in_4bit: 4-bit QLoRA needs a CUDA GPU (bitsandbytes); set it to false on CPU")
    if params.lora.loftq and not cuda:
        raise SlothlineError("lora.loftq: LoftQ initialisation needs a CUDA GPU (bitsandbytes); set it to false here")
    backend = "unsloth" if requested == "unsloth" or (requested == "auto" and unsloth_available()) else "hf"
    if params.model.dtype == "float16" and not cuda:
        raise SlothlineError("model.dtype: float16 training needs a CUDA GPU; use auto (float32) or bfloat16 on CPU")
    if params.model.dtype == "bfloat16" and cuda and not torch.cuda.is_bf16_supported():
        raise SlothlineError("model.dtype: this GPU has no bfloat16 support; use auto (float16 there) or float16")
    if params.model.dtype != "auto":
        precision = params.model.dtype
    elif cuda:
        precision = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    else:
        precision = "float32"
    optim = params.train.optim
    if optim == "auto":
        optim = "adamw_8bit" if cuda and importlib.util.find_spec("bitsandbytes") else "adamw_torch"
    return Runtime(backend, torch.cuda.get_device_name() if cuda else "cpu", precision, optim)


def load_model(runtime: Runtime, params: Params):
    """The base model with LoRA attached (or whole, for full fine-tuning) and its tokenizer."""
    if runtime.backend == "unsloth":
        return _load_unsloth(runtime, params)
    return _load_hf(runtime, params)


def load_for_inference(runtime: Runtime, params: Params, adapter_dir: Path | None):
    """The base model with the trained adapter (or the fully fine-tuned model) in `adapter_dir`, ready
    to generate (Unsloth's for_inference on GPU); the bare base model when `adapter_dir` is None."""
    full_model = adapter_dir is not None and not (adapter_dir / "adapter_config.json").is_file()
    source = str(adapter_dir) if full_model else resolve_model(params.model.name)
    if runtime.backend == "unsloth":
        model, tokenizer = _unsloth_base(runtime, params, source, full_finetuning=False)
    else:
        model, tokenizer = _hf_base(runtime, params, source)
    if adapter_dir is not None and not full_model:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir))
    if runtime.backend == "unsloth":
        from unsloth import FastLanguageModel

        FastLanguageModel.for_inference(model)
    model.eval()
    return model, tokenizer


def _unsloth_base(runtime: Runtime, params: Params, source: str, full_finetuning: bool):
    import unsloth  # noqa: F401  (first: it patches transformers, TRL and PEFT)
    from unsloth import FastLanguageModel

    return FastLanguageModel.from_pretrained(
        model_name=source,
        revision=params.model.revision,
        max_seq_length=params.model.max_seq_length,
        dtype=getattr(torch, runtime.precision),
        load_in_4bit=params.model.load_in_4bit,
        full_finetuning=full_finetuning,
    )


def _load_unsloth(runtime: Runtime, params: Params):
    model, tokenizer = _unsloth_base(runtime, params, resolve_model(params.model.name), params.train.full_finetuning)
    if params.train.full_finetuning:
        return model, tokenizer
    from unsloth import FastLanguageModel

    model = FastLanguageModel.get_peft_model(
        model,
        **lora_settings(params),
        use_gradient_checkpointing="unsloth" if params.train.gradient_checkpointing else False,
        random_state=params.train.seed,
        max_seq_length=params.model.max_seq_length,
    )
    return model, tokenizer


def _load_hf(runtime: Runtime, params: Params):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = _hf_base(runtime, params, resolve_model(params.model.name))
    if params.train.full_finetuning:
        return model, tokenizer
    config = LoraConfig(**lora_settings(params), task_type="CAUSAL_LM")
    torch.manual_seed(params.train.seed)  # LoRA A matrices start from the seed, as Unsloth's random_state
    try:
        return get_peft_model(model, config), tokenizer
    except ValueError as err:  # e.g. target modules that the model does not have
        raise SlothlineError(f"lora.target_modules: {err}") from None


def _hf_base(runtime: Runtime, params: Params, source: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    dtype = getattr(torch, runtime.precision)
    quantization = (
        BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
                           bnb_4bit_use_double_quant=True)
        if params.model.load_in_4bit else None
    )
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=params.model.revision)
        model = AutoModelForCausalLM.from_pretrained(
            source, revision=params.model.revision, dtype=dtype, quantization_config=quantization,
            attn_implementation="sdpa", device_map={"": 0} if torch.cuda.is_available() else None,
        )
    except OSError as err:
        raise SlothlineError(f"model.name: cannot load {params.model.name!r}: {err}") from None
    return model, tokenizer


def save_trained(model, tokenizer, out_dir: Path) -> None:
    """Save the adapter (or the fully fine-tuned model) and the tokenizer, byte-identical for identical
    training: PEFT writes `target_modules`, a set, in the process's hash order, so it is sorted here."""
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    config_file = Path(out_dir) / "adapter_config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text())
        if isinstance(config.get("target_modules"), list):
            config["target_modules"] = sorted(config["target_modules"])
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True))


def lora_settings(params: Params) -> dict:
    """The `lora.*` params as keyword arguments of both Unsloth's get_peft_model and PEFT's LoraConfig."""
    lora = params.lora
    loftq = {}
    if lora.loftq:
        from peft import LoftQConfig

        loftq = LoftQConfig(loftq_bits=4)
    return {
        "r": lora.r,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "bias": lora.bias,
        "target_modules": lora.target_modules,
        "use_rslora": lora.use_rslora,
        "init_lora_weights": "loftq" if lora.loftq else True,
        "loftq_config": loftq,
    }


def build_trainer(runtime: Runtime, params: Params, model, tokenizer, train_rows: list[dict],
                  val_rows: list[dict], output_dir: str, callbacks: list, markers: tuple[str, str] | None):
    """TRL's SFTTrainer configured from `train.*`, on the rendered `text` of the prepared rows.

    With turn `markers` (response-only loss), the hf backend gets its labels from the dataset's
    `assistant_masks` column; on unsloth, Unsloth's own train_on_responses_only masks with them.
    """
    from trl import SFTConfig, SFTTrainer  # Unsloth's patched classes once unsloth is imported

    try:
        config = sft_config(SFTConfig, runtime, params, output_dir, evaluate=bool(val_rows))
    except ValueError as err:  # e.g. an lr_scheduler or optim name transformers does not know
        raise SlothlineError(f"params.yaml: train settings rejected by transformers (check train.lr_scheduler, "
                             f"train.optim): {err}") from None
    dataset_markers = markers if runtime.backend == "hf" else None
    train_dataset = tokenize_for_training(train_rows, tokenizer, dataset_markers)
    eval_dataset = tokenize_for_training(val_rows, tokenizer, dataset_markers) if val_rows else None
    trainer_class = SFTTrainer if runtime.device != "cpu" else _model_loss_trainer_class()
    trainer = trainer_class(
        model=model,
        args=config,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    if runtime.backend == "unsloth" and markers:
        from unsloth.chat_templates import train_on_responses_only

        trainer = train_on_responses_only(trainer, instruction_part=markers[0], response_part=markers[1])
    return trainer


def _model_loss_trainer_class():
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


def sft_config(config_class, runtime: Runtime, params: Params, output_dir: str, evaluate: bool):
    """TRL's SFTConfig (or Unsloth's patched one) from the `train.*` params; with `evaluate`, the val
    loss every `train.eval_steps`."""
    train = params.train
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
        max_length=params.model.max_seq_length,
        packing=train.packing,
        packing_strategy="bfd",
        padding_free=train.packing,
        include_num_input_tokens_seen="non_padding",
        report_to="none",
        disable_tqdm=False,
        dataloader_num_workers=0,
    )
