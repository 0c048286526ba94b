"""DPO throughput and memory: the preference stage on the unsloth backend against plain TRL + PEFT, one GPU.

On a randomly initialised checkpoint of Qwen3-4B's shape (train_backends.build_checkpoint), each run trains DPO
in a fresh process (Unsloth patches transformers, TRL and PEFT for the whole process) on the same pairs:
prompts of 100-400 tokens, chosen and rejected answers of 32-256 tokens each, LoRA r=16 on all 7 projections,
batch 4 pairs, bf16, beta 0.1, sigmoid loss, the reference being the starting model (the adapter switched off):

- `unsloth`: the preference stage's own code (backends.load_for_training, the causal_lm kind's
  preference.build_trainer), whose DPOTrainer is Unsloth's patched one;
- `hf`: the same code on the hf backend (transformers + PEFT);
- `trl-peft`: AutoModelForCausalLM + a PEFT LoraConfig + TRL's DPOTrainer with DPOConfig's defaults (as TRL's
  docs use them), for the workload.

Tokens/s counts every prompt and answer token the timed steps train on (prompt + chosen + rejected of each
pair); peak GPU memory as torch allocated it. Writes benchmarks/results/preference_backends.{json,md}.

    python benchmarks/preference_backends.py                 # every run, then the report
    python benchmarks/preference_backends.py --run unsloth   # one run here (used internally)
"""

import argparse
import random
import time

from harness import ensure_checkpoint, measure_in_child, print_result, train_timed, write_results

STEPS, WARMUP_STEPS, BATCH, MAX_LEN, PAIRS = 25, 5, 4, 1024, 160
RUNS = ("unsloth", "hf", "trl-peft")
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
WORDS = "the of and a to in is you that it he was for on are as with his they at be this from have or by".split()


def pairs(tokenizer) -> list[dict]:
    """PAIRS preference rows as the preference stage renders them (chat prompt, answers through <|im_end|>)."""
    rng = random.Random(0)
    text = lambda tokens: " ".join(rng.choice(WORDS) for _ in range(tokens))
    return [{"prompt": f"<|im_start|>user\n{text(rng.randint(100, 400))}<|im_end|>\n<|im_start|>assistant\n",
             "chosen_text": text(rng.randint(32, 256)) + "<|im_end|>",
             "rejected_text": text(rng.randint(32, 256)) + "<|im_end|>"} for _ in range(PAIRS)]


def tokens_per_pair(tokenizer, rows: list[dict]) -> float:
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return sum(count(r["prompt"]) + count(r["chosen_text"]) + count(r["rejected_text"]) for r in rows) / len(rows)


def slothline_trainer(backend: str, checkpoint: str):
    from slothline import backends, training
    from slothline.kinds import causal_lm
    from slothline.kinds.causal_lm import preference
    from slothline.runtime import probe, resolve

    params = causal_lm.Params.model_validate({
        "kind": "causal_lm", "model": {"name": checkpoint, "max_seq_length": MAX_LEN},
        "data": {"sources": [{"path": "unused.jsonl", "format": "messages"}]},
        "train": {"backend": backend, "gradient_checkpointing": True, "sft": False},
        "preference": {"method": "dpo", "sources": [{"path": "unused.jsonl", "format": "preference"}],
                       "max_steps": STEPS, "per_device_batch_size": BATCH, "learning_rate": 5e-6,
                       "logging_steps": 5, "save_steps": 10_000},
    })
    runtime = resolve(params, probe())
    backend_module = backends.get(runtime)  # first: Unsloth patches transformers, TRL and PEFT
    model, tokenizer = backends.load_for_training(causal_lm, runtime, params)
    rows = pairs(tokenizer)
    trainer = preference.build_trainer(backend_module, runtime, params, model, tokenizer, rows, [], "/tmp/bench-out", [])
    training.prepare_trainer(trainer, model, backend_module, runtime, params)
    return trainer, tokenizer, rows


def trl_peft_trainer(checkpoint: str):
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.bfloat16, device_map={"": 0})
    rows = pairs(tokenizer)
    dataset = Dataset.from_dict({"prompt": [r["prompt"] for r in rows], "chosen": [r["chosen_text"] for r in rows],
                                 "rejected": [r["rejected_text"] for r in rows]})
    args = DPOConfig(output_dir="/tmp/bench-out", per_device_train_batch_size=BATCH, max_steps=STEPS, learning_rate=5e-6,
                     max_length=MAX_LEN, bf16=True, logging_steps=5, save_strategy="no", report_to="none")
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=LoraConfig(r=16, lora_alpha=16, target_modules=TARGET_MODULES, task_type="CAUSAL_LM"))
    return trainer, tokenizer, rows


def run_one(run: str, checkpoint: str) -> dict:
    trainer, tokenizer, rows = trl_peft_trainer(checkpoint) if run == "trl-peft" else slothline_trainer(run, checkpoint)
    import torch

    _, seconds = train_timed(trainer, WARMUP_STEPS)
    tokens = tokens_per_pair(tokenizer, rows) * BATCH * (STEPS - WARMUP_STEPS)
    args = trainer.args
    return {"run": run, "trainer": type(trainer).__name__, "device": torch.cuda.get_device_name(),
            "optim": getattr(args.optim, "value", args.optim), "gradient_checkpointing": args.gradient_checkpointing,
            "measured_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "timed_steps": STEPS - WARMUP_STEPS, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1),
            "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "losses": [log["loss"] for log in trainer.state.log_history if "loss" in log]}


def markdown(report: dict) -> str:
    rows = "\n".join(f"| {r['run']} | {r['trainer']} | {r['tokens_per_s']:,.0f} | {r['peak_mem_gib']} | {r['optim']} |"
                     for r in report["runs"].values())
    return (f"# DPO: the preference stage against TRL + PEFT\n\n{report['workload']}\n\n| run | trainer | tokens/s | "
            f"peak GiB | optimizer |\n|---|---|---|---|---|\n{rows}\n\n"
            + "\n".join(f"- {key}: {value}" for key, value in report.items() if key not in ("workload", "runs")) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", choices=RUNS)
    parser.add_argument("--checkpoint", default="/tmp/qwen3-4b-shape")
    args = parser.parse_args()
    if args.run:
        print_result(run_one(args.run, args.checkpoint))
        return
    import train_backends

    ensure_checkpoint(args.checkpoint, train_backends.build_checkpoint)
    runs = {run: measure_in_child([__file__, "--run", run, "--checkpoint", args.checkpoint], run, keep_going=True)
            for run in RUNS}
    runs = {run: result for run, result in runs.items() if result is not None}
    report = {"workload": f"Qwen3-4B shape (random bf16 weights), DPO (sigmoid, beta 0.1), LoRA r=16 on all 7 "
                          f"projections, {BATCH} pairs per step, prompts of 100-400 and answers of 32-256 tokens, "
                          f"max length {MAX_LEN}; {STEPS - WARMUP_STEPS} steps timed after {WARMUP_STEPS}",
              "runs": runs}
    for base in [base for base in ("hf", "trl-peft") if "unsloth" in runs and base in runs]:
        report[f"unsloth_vs_{base}_tokens_per_s"] = round(runs["unsloth"]["tokens_per_s"] / runs[base]["tokens_per_s"], 2)
        report[f"unsloth_vs_{base}_peak_mem"] = round(runs["unsloth"]["peak_mem_gib"] / runs[base]["peak_mem_gib"], 2)
    write_results("preference_backends", report, markdown(report))


if __name__ == "__main__":
    main()
