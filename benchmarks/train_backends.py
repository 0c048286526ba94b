"""Training throughput and memory of the `unsloth` and `hf` backends on one GPU.

Builds a randomly initialised checkpoint of Qwen3-4B's shape (a random model trains exactly as fast
as the real one), then runs the train stage's own code (backends.load_model + build_trainer) on the
same chat data with each backend, each in a fresh process (Unsloth patches transformers
globally). Counts non-padding tokens per second over the steps after warm-up and the peak GPU
memory, and writes benchmarks/results/train_backends.{json,md}.

    python benchmarks/train_backends.py                   # every backend and mode, then the report
    python benchmarks/train_backends.py --modes padded    # one mode, added to those already measured
    python benchmarks/train_backends.py --backend hf --modes padded   # one run (used internally)
"""

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path("benchmarks/results")
QWEN3_4B_SHAPE = dict(
    hidden_size=2560, num_hidden_layers=36, intermediate_size=9728, num_attention_heads=32,
    num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True,
    max_position_embeddings=40960, rope_theta=1000000.0,
)
STEPS, WARMUP_STEPS, BATCH, MAX_LEN, ROWS = 30, 5, 4, 2048, 320
BACKENDS = ("unsloth", "hf", "hf-model-loss")


def build_checkpoint(out_dir: Path) -> None:
    """Random Qwen3-4B-shape weights in bf16 plus the builtin tokenizer and chat template."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from stages.lib.models import build_byte_tokenizer

    tokenizer = build_byte_tokenizer()
    config = Qwen3Config(**QWEN3_4B_SHAPE, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen3ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def chat_rows(tokenizer, fixed_length: bool) -> list[dict]:
    """Chats of 64..2048 tokens (or all of about 2048), the same rows for every backend."""
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
        budget = MAX_LEN - 64 if fixed_length else rng.randint(64, MAX_LEN - 64)
        messages = [{"role": "user", "content": text(budget // 2)}, {"role": "assistant", "content": text(budget // 2)}]
        rows.append({"text": tokenizer.apply_chat_template(messages, tokenize=False)})
    assert max(len(tokenizer(r["text"])["input_ids"]) for r in rows) <= MAX_LEN
    return rows


MODES = {  # name: (packing, fixed_length)
    "padded": (False, False),
    "packed": (True, False),
    "fixed-length": (False, True),
}


def run_one(backend: str, mode: str, checkpoint: str) -> dict:
    """Train STEPS steps with one backend through the stage's code; time the steps after warm-up.

    `hf-model-loss` is the hf backend with the model's own cross-entropy (full logits, as a plain
    transformers loop) instead of TRL's chunked loss kernel.
    """
    from stages.lib import backends
    from stages.lib.params import Params

    if backend == "hf-model-loss":
        backend, backends._trl_loss_kernel_available = "hf", lambda: False

    packing, fixed_length = MODES[mode]
    params = Params.model_validate({
        "model": {"name": checkpoint, "max_seq_length": MAX_LEN},
        "data": {"sources": [{"path": "unused.jsonl", "format": "messages"}]},
        "train": {"backend": backend, "max_steps": STEPS, "per_device_batch_size": BATCH, "learning_rate": 2e-4,
                  "gradient_checkpointing": True, "save_steps": 10_000, "logging_steps": 10, "packing": packing},
    })
    runtime = backends.choose_runtime(params)
    model, tokenizer = backends.load_model(runtime, params)
    import torch
    from transformers import TrainerCallback

    from stages.lib.templates import turn_markers

    rows = chat_rows(tokenizer, fixed_length)
    markers = turn_markers([r["text"] for r in rows])

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == WARMUP_STEPS:
                torch.cuda.synchronize()
                self.start, self.tokens = time.perf_counter(), state.num_input_tokens_seen

        def on_train_end(self, args, state, control, **kwargs):
            torch.cuda.synchronize()
            self.seconds = time.perf_counter() - self.start
            self.tokens = state.num_input_tokens_seen - self.tokens

    timer = Timer()
    trainer = backends.build_trainer(runtime, params, model, tokenizer, rows, [], "/tmp/bench-out", [timer], markers)
    torch.cuda.reset_peak_memory_stats()
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    return {
        "backend": runtime.backend,
        "loss": loss_name(runtime.backend),
        "mode": mode,
        "device": runtime.device,
        "precision": runtime.precision,
        "optim": runtime.optim,
        "timed_steps": STEPS - WARMUP_STEPS,
        "non_padding_tokens": timer.tokens,
        "seconds": round(timer.seconds, 2),
        "tokens_per_s": round(timer.tokens / timer.seconds, 1),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "losses": losses,
    }


def loss_name(backend: str) -> str:
    from stages.lib import backends

    if backend == "unsloth":
        return "Unsloth's patched SFTTrainer"
    return "TRL chunked kernel" if backends._trl_loss_kernel_available() else "model cross-entropy"


def previous_modes(results_file: Path) -> dict:
    """Modes measured by an earlier call with every current backend, so runs of one mode at a time add up."""
    if not results_file.is_file():
        return {}
    modes = json.loads(results_file.read_text())["modes"]
    return {mode: r for mode, r in modes.items() if set(r["runs"]) == set(BACKENDS)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated: " + ", ".join(MODES))
    parser.add_argument("--backend", help="run one backend in this process (used internally)")
    parser.add_argument("--checkpoint", default="/tmp/qwen3-4b-shape")
    args = parser.parse_args()
    if args.backend:
        print("RESULT " + json.dumps(run_one(args.backend, args.modes, args.checkpoint)))
        return
    if not Path(args.checkpoint, "config.json").exists():
        build_checkpoint(Path(args.checkpoint))
    results_file = RESULTS / "train_backends.json"
    report = {
        "model": "Qwen3-4B shape, random weights, bf16, LoRA r=16 on all 7 projections",
        "data": f"{ROWS} chats, batch {BATCH}, max {MAX_LEN} tokens, response-only labels, gradient checkpointing",
        "modes": previous_modes(results_file),
    }
    for mode in args.modes.split(","):
        runs = {}
        for backend in BACKENDS:
            out = subprocess.run([sys.executable, __file__, "--backend", backend, "--modes", mode,
                                  "--checkpoint", args.checkpoint], capture_output=True, text=True)
            print(out.stdout[-3000:], out.stderr[-3000:], sep="\n")
            line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))
            runs[backend] = json.loads(line.removeprefix("RESULT "))
        report["modes"][mode] = {
            "runs": runs,
            "unsloth_vs_hf_tokens_per_s": round(runs["unsloth"]["tokens_per_s"] / runs["hf"]["tokens_per_s"], 2),
            "unsloth_vs_hf_peak_mem": round(runs["unsloth"]["peak_mem_gib"] / runs["hf"]["peak_mem_gib"], 2),
            "unsloth_vs_hf_model_loss_tokens_per_s": round(
                runs["unsloth"]["tokens_per_s"] / runs["hf-model-loss"]["tokens_per_s"], 2),
            "unsloth_vs_hf_model_loss_peak_mem": round(
                runs["unsloth"]["peak_mem_gib"] / runs["hf-model-loss"]["peak_mem_gib"], 2),
        }
    RESULTS.mkdir(parents=True, exist_ok=True)
    results_file.write_text(json.dumps(report, indent=2) + "\n")
    rows = "\n".join(
        f"| {mode} | {r['runs'][b]['device']} | {b} | {r['runs'][b]['tokens_per_s']:,.0f} | {r['runs'][b]['peak_mem_gib']} |"
        for mode, r in report["modes"].items() for b in BACKENDS
    )
    summary = "\n".join(f"- {mode}: unsloth / hf = {r['unsloth_vs_hf_tokens_per_s']}x tokens/s at "
                        f"{r['unsloth_vs_hf_peak_mem']}x peak memory; unsloth / hf-model-loss = "
                        f"{r['unsloth_vs_hf_model_loss_tokens_per_s']}x at {r['unsloth_vs_hf_model_loss_peak_mem']}x"
                        for mode, r in report["modes"].items())
    (RESULTS / "train_backends.md").write_text(
        f"# Training backends\n\n{report['model']}; {report['data']}; {STEPS - WARMUP_STEPS} timed steps after "
        f"{WARMUP_STEPS} warm-up steps. padded: chats of 64..{MAX_LEN} tokens in padded batches; packed: the same "
        f"with `train.packing: true`; fixed-length: every chat about {MAX_LEN} tokens. hf: the hf backend as "
        f"it trains (TRL's chunked loss kernel); hf-model-loss: the same with the model's own cross-entropy "
        f"over full logits, as a plain transformers loop computes it.\n\n"
        f"| mode | device | backend | non-padding tokens/s | peak GiB |\n|---|---|---|---|---|\n{rows}\n\n{summary}\n"
    )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
