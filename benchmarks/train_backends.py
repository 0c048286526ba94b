"""Training throughput and memory of the `unsloth` and `hf` backends and two baselines on one GPU.

Builds a randomly initialised checkpoint of Qwen3-4B's shape (a random model trains exactly as fast
as the real one), then trains on the same chat data in a fresh process per run (Unsloth patches
transformers globally):

- `unsloth`, `hf`: the train stage's own code (backends.load_for_training + the kind's build_trainer);
- `hf-dense`: the hf backend on torch's default SDPA (packed rows through a dense document mask, as
  before packed rows went through varlen attention);
- `hf-model-loss`: the hf backend with the model's own cross-entropy instead of TRL's chunked loss;
- `unsloth-notebook`: Unsloth's Qwen3 notebook code, no Slothline: FastLanguageModel.from_pretrained,
  get_peft_model, TRL's SFTTrainer with the notebook's SFTConfig, train_on_responses_only;
- `trl-peft`: AutoModelForCausalLM + a PEFT LoraConfig + TRL's SFTTrainer with its default settings.

Every run trains the same rows with the same LoRA (r=16 on all 7 projections), batch, max length
and bf16 weights. Counts non-padding tokens per second over the steps after warm-up and the peak
GPU memory, and writes benchmarks/results/train_backends.{json,md}.

    python benchmarks/train_backends.py                   # every run and mode, then the report
    python benchmarks/train_backends.py --modes padded    # one mode, added to those already measured
    python benchmarks/train_backends.py --modes padded --backends unsloth,unsloth-notebook   # some runs
    python benchmarks/train_backends.py --backend hf --modes padded   # one run here (used internally)
"""

import argparse
import json
import random
import time
from pathlib import Path

from harness import RESULTS, ensure_checkpoint, measure_in_child, print_result, train_timed, write_results

QWEN3_4B_SHAPE = dict(
    hidden_size=2560, num_hidden_layers=36, intermediate_size=9728, num_attention_heads=32,
    num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True,
    max_position_embeddings=40960, rope_theta=1000000.0,
)
STEPS, WARMUP_STEPS, BATCH, MAX_LEN, ROWS, LOGGING_STEPS = 30, 10, 4, 2048, 320, 10
BACKENDS = ("unsloth", "hf", "hf-dense", "hf-model-loss", "unsloth-notebook", "trl-peft")
BASELINES = ("hf", "hf-dense", "hf-model-loss", "unsloth-notebook", "trl-peft")  # the report gives unsloth / each of them
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CHATML = ("<|im_start|>user\n", "<|im_start|>assistant\n")  # the builtin template's turn markers


def build_checkpoint(out_dir: Path) -> None:
    """Random Qwen3-4B-shape weights in bf16 plus the builtin tokenizer and chat template, in 5 GB shards as Hub
    checkpoints come (transformers 5 would write one 8 GB file, which DVC hashes on one core)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from slothline.builtin import build_byte_tokenizer

    tokenizer = build_byte_tokenizer()
    config = Qwen3Config(**QWEN3_4B_SHAPE, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen3ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out_dir, max_shard_size="5GB")
    tokenizer.save_pretrained(out_dir)


def chat_rows(tokenizer, row_tokens: int | None) -> list[dict]:
    """Chats of 64..2048 tokens (or all of about `row_tokens`), the same rows for every backend."""
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "sloth", "lora", "tensor", "graph", "cache", "token"]
    cost = {w: len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) for w in words}

    def text(budget: int) -> str:
        chosen = []
        while budget > 0:
            chosen.append(rng.choice(words))
            budget -= cost[chosen[-1]]
        return " ".join(chosen)

    rows = []
    for _ in range(ROWS):
        budget = row_tokens - 64 if row_tokens else rng.randint(64, MAX_LEN - 64)
        messages = [{"role": "user", "content": text(budget // 2)}, {"role": "assistant", "content": text(budget // 2)}]
        rows.append({"text": tokenizer.apply_chat_template(messages, tokenize=False)})
    assert max(len(tokenizer(r["text"])["input_ids"]) for r in rows) <= MAX_LEN
    return rows


MODES = {  # name: (packing, every row's length or None for 64..MAX_LEN, train.padding_free for Slothline's runs)
    "padded": (False, None, False),  # varying lengths, padded batches (the default before padding-free)
    "unpacked": (False, None, "auto"),  # varying lengths, the default: padding-free on a GPU
    "packed": (True, None, "auto"),
    "fixed-length": (False, MAX_LEN, False),  # every row as long: no padding to waste
    # every row as long as unpacked rows are on average (their text budget is 64..MAX_LEN - 64 tokens): an
    # unpacked step's tokens without padding, which tells padding waste from the cost of shorter steps
    "fixed-mean": (False, MAX_LEN // 2 + 64, False),
}


def slothline_trainer(backend: str, packing: bool, row_tokens: int | None, padding_free, checkpoint: str):
    """The train stage's own code (runtime.resolve, backends.load_for_training, the causal_lm kind's
    build_trainer); the one place that calls Slothline. Returns (trainer, loss name).

    `hf-model-loss` is the hf backend with the model's own cross-entropy (full logits, as a plain
    transformers loop) instead of TRL's chunked loss kernel; `hf-dense` the hf backend on torch's default
    SDPA attention whatever the batches.
    """
    from dataclasses import replace

    from slothline import backends, training
    from slothline.kinds import causal_lm
    from slothline.runtime import probe, resolve

    params = causal_lm.Params.model_validate({
        "kind": "causal_lm",
        "model": {"name": checkpoint, "max_seq_length": MAX_LEN},
        "data": {"sources": [{"path": "unused.jsonl", "format": "messages"}]},
        "train": {"backend": backend.split("-")[0], "max_steps": STEPS, "per_device_batch_size": BATCH,
                  "learning_rate": 2e-4, "gradient_checkpointing": True, "save_steps": 10_000,
                  "logging_steps": LOGGING_STEPS, "packing": packing, "padding_free": padding_free},
    })
    runtime = resolve(params, probe())
    if backend == "hf-dense":
        runtime = replace(runtime, attention="sdpa")
    backend_module = backends.get(runtime)  # first: Unsloth patches transformers, TRL and PEFT
    model, tokenizer = backends.load_for_training(causal_lm, runtime, params)
    rows = chat_rows(tokenizer, row_tokens)
    trainer = causal_lm.build_trainer(backend_module, runtime, params, model, tokenizer, rows, [], "/tmp/bench-out", [])
    training.prepare_trainer(trainer, model, backend_module, runtime, params)
    if backend == "hf-model-loss":
        trainer.__class__ = training.model_loss_trainer_class()
        return trainer, "model cross-entropy"
    if runtime.backend == "unsloth":
        return trainer, "Unsloth's patched SFTTrainer"
    return trainer, "TRL chunked kernel"


def same_workload(packing: bool) -> dict:
    """The SFTConfig settings that make a baseline train what the other runs train; nothing else."""
    return dict(output_dir="/tmp/bench-out", per_device_train_batch_size=BATCH, gradient_accumulation_steps=1,
                max_steps=STEPS, max_length=MAX_LEN, packing=packing, logging_steps=LOGGING_STEPS,
                save_strategy="no", include_num_input_tokens_seen="non_padding", report_to="none")


def unsloth_notebook_trainer(packing: bool, row_tokens: int | None, checkpoint: str):
    """Unsloth's Qwen3 notebook (Qwen3_(4B)-Instruct) on these rows, through public options only.

    From the notebook: get_peft_model's settings, use_gradient_checkpointing="unsloth", the SFTConfig
    (text field, warm-up 5, lr 2e-4, adamw_8bit, weight decay 0.001, linear schedule, seed 3407) and
    train_on_responses_only with the ChatML turn markers. Like the other runs, not the notebook: bf16
    weights instead of load_in_4bit, LoRA r=16 instead of 32, batch 4 without gradient accumulation,
    max length 2048, logging every 10 steps, packing in the packed mode.
    """
    from unsloth import FastLanguageModel  # first: it patches transformers, TRL and PEFT

    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer
    from unsloth.chat_templates import train_on_responses_only

    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=checkpoint, max_seq_length=MAX_LEN, load_in_4bit=False, load_in_8bit=False, full_finetuning=False,
    )
    model = FastLanguageModel.get_peft_model(
        model, r=16, target_modules=TARGET_MODULES, lora_alpha=16, lora_dropout=0, bias="none",
        use_gradient_checkpointing="unsloth", random_state=3407, use_rslora=False, loftq_config=None,
    )
    trainer = SFTTrainer(
        model=model,
        processing_class=tokenizer,
        train_dataset=Dataset.from_list(chat_rows(tokenizer, row_tokens)),
        eval_dataset=None,
        args=SFTConfig(dataset_text_field="text", warmup_steps=5, learning_rate=2e-4, optim="adamw_8bit",
                       weight_decay=0.001, lr_scheduler_type="linear", seed=3407, **same_workload(packing)),
    )
    trainer = train_on_responses_only(trainer, instruction_part=CHATML[0], response_part=CHATML[1])
    return trainer, "Unsloth's patched SFTTrainer"


def trl_peft_trainer(packing: bool, row_tokens: int | None, checkpoint: str):
    """transformers + PEFT + TRL as their docs use them: SFTTrainer with a LoraConfig and SFTConfig's defaults
    (adamw_torch_fused, sdpa attention, TRL's loss), but for the workload and the learning rate of every run.

    The model loads in bf16, as the other runs train (from_pretrained would load float32 by default);
    the labels are the same response-only masks as the hf backend's (TRL's `assistant_masks` column).
    """
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer
    from trl.trainer import utils

    from slothline.kinds.causal_lm import tokenized

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.bfloat16)
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(learning_rate=2e-4, **same_workload(packing)),
        train_dataset=tokenized(chat_rows(tokenizer, row_tokens), tokenizer, CHATML),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=16, lora_alpha=16, target_modules=TARGET_MODULES, task_type="CAUSAL_LM"),
    )
    kernel = getattr(utils, "_ChunkedLogProbFunction", None) is not None
    return trainer, "TRL default: " + ("chunked kernel" if kernel else "model cross-entropy")


def run_one(backend: str, mode: str, checkpoint: str) -> dict:
    """Train STEPS steps in this process; time the steps after warm-up."""
    packing, row_tokens, padding_free = MODES[mode]
    if backend == "unsloth-notebook":
        trainer, loss = unsloth_notebook_trainer(packing, row_tokens, checkpoint)
    elif backend == "trl-peft":
        trainer, loss = trl_peft_trainer(packing, row_tokens, checkpoint)
    else:
        trainer, loss = slothline_trainer(backend, packing, row_tokens, padding_free, checkpoint)
    import torch

    tokens, seconds = train_timed(trainer, WARMUP_STEPS)
    args = trainer.args
    return {
        "backend": backend,
        "loss": loss,
        "mode": mode,
        "device": torch.cuda.get_device_name(),
        "precision": "bfloat16" if args.bf16 else "float16" if args.fp16 else "float32",
        "optim": getattr(args.optim, "value", args.optim),
        "attn_implementation": trainer.model.config._attn_implementation,
        "padding_free": bool(trainer.args.padding_free),
        "cudnn_sdpa": torch.backends.cuda.cudnn_sdp_enabled(),
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "timed_steps": STEPS - WARMUP_STEPS,
        "non_padding_tokens": tokens,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(tokens / seconds, 1),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "losses": [log["loss"] for log in trainer.state.log_history if "loss" in log],
    }


def ratio_key(base: str, measure: str) -> str:
    return f"unsloth_vs_{base.replace('-', '_')}_{measure}"


def ratios(runs: dict) -> dict:
    """unsloth's tokens/s and peak memory over each baseline's, for the baselines measured."""
    out = {}
    for base in (b for b in BASELINES if "unsloth" in runs and b in runs):
        out[ratio_key(base, "tokens_per_s")] = round(runs["unsloth"]["tokens_per_s"] / runs[base]["tokens_per_s"], 2)
        out[ratio_key(base, "peak_mem")] = round(runs["unsloth"]["peak_mem_gib"] / runs[base]["peak_mem_gib"], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated: " + ", ".join(MODES))
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        help="comma-separated runs, added to the mode's earlier ones: " + ", ".join(BACKENDS))
    parser.add_argument("--backend", choices=BACKENDS, help="run one backend in this process (used internally)")
    parser.add_argument("--checkpoint", default="/tmp/qwen3-4b-shape")
    args = parser.parse_args()
    if args.backend:
        print_result(run_one(args.backend, args.modes, args.checkpoint))
        return
    ensure_checkpoint(args.checkpoint, build_checkpoint)
    results_file = RESULTS / "train_backends.json"
    report = {
        "model": "Qwen3-4B shape, random weights, bf16, LoRA r=16 on all 7 projections",
        "data": f"{ROWS} chats, batch {BATCH}, max {MAX_LEN} tokens, response-only labels, gradient checkpointing",
        "modes": json.loads(results_file.read_text())["modes"] if results_file.is_file() else {},
    }
    for mode in args.modes.split(","):
        runs = report["modes"].get(mode, {}).get("runs", {})
        for backend in args.backends.split(","):
            runs[backend] = measure_in_child([__file__, "--backend", backend, "--modes", mode,
                                              "--checkpoint", args.checkpoint], f"{backend} ({mode})")
        report["modes"][mode] = {"runs": {b: runs[b] for b in BACKENDS if b in runs}, **ratios(runs)}
    write_results("train_backends", report, markdown(report))


def markdown(report: dict) -> str:
    rows = "\n".join(
        f"| {mode} | {run['device']} | {run['measured_at'][:10]} | {b} | {run['tokens_per_s']:,.0f} | "
        f"{run['peak_mem_gib']} | {run.get('attn_implementation', '')}"
        f"{'' if run.get('cudnn_sdpa', True) else ', cuDNN off'}{', padding-free' if run.get('padding_free') else ''} |"
        for mode, r in report["modes"].items() for b, run in r["runs"].items()
    )
    summary = "\n".join(
        f"- {mode}: " + "; ".join(f"unsloth / {base} = {r[ratio_key(base, 'tokens_per_s')]}x tokens/s at "
                                  f"{r[ratio_key(base, 'peak_mem')]}x peak memory"
                                  for base in BASELINES if ratio_key(base, "tokens_per_s") in r)
        for mode, r in report["modes"].items() if any(ratio_key(base, "tokens_per_s") in r for base in BASELINES)
    )
    speed = lambda mode, run: report["modes"].get(mode, {}).get("runs", {}).get(run, {}).get("tokens_per_s")
    for run in ("unsloth", "hf"):  # what padding-free batching gains, each backend against itself
        for mode in ("padded", "fixed-length", "fixed-mean"):
            if speed("unpacked", run) and speed(mode, run):
                summary += f"\n- {run}: unpacked / {mode} = {speed('unpacked', run) / speed(mode, run):.2f}x tokens/s"
    return (
        f"# Training backends\n\n{report['model']}; {report['data']}; {STEPS - WARMUP_STEPS} timed steps after "
        f"{WARMUP_STEPS} warm-up steps. padded: chats of 64..{MAX_LEN} tokens in padded batches "
        f"(`train.padding_free: false`); unpacked: the same chats, the default (`train.padding_free: auto`: each "
        f"batch's rows concatenated on a GPU); packed: the same with `train.packing: true`; fixed-length: every "
        f"chat about {MAX_LEN} tokens, padded batches (no padding to waste); fixed-mean: every chat about "
        f"{MODES['fixed-mean'][1]} tokens, the unpacked chats' mean, so a step holds what an unpacked step holds. hf: the hf backend as "
        f"it trains (TRL's chunked loss kernel); hf-dense: the same on torch's default SDPA (a dense document "
        f"mask for packed rows, cuDNN on); hf-model-loss: the same with the model's own cross-entropy "
        f"over full logits, as a plain transformers loop computes it; unsloth-notebook: Unsloth's Qwen3 notebook "
        f"code (FastLanguageModel + TRL's SFTTrainer + train_on_responses_only); trl-peft: transformers + PEFT + "
        f"TRL's SFTTrainer with its defaults. Attention: the model's attn_implementation, and whether cuDNN SDPA "
        f"was switched off.\n\n"
        f"| mode | device | measured | run | non-padding tokens/s | peak GiB | attention |\n|---|---|---|---|---|---|---|\n"
        f"{rows}\n\n"
        f"{summary}\n"
    )


if __name__ == "__main__":
    main()
