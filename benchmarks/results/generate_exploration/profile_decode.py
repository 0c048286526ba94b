"""Where evaluate's generation time goes (Qwen3-4B shape, 128 prompts of 100-400 tokens, 128 new tokens,
the plain model as the merged adapter leaves it, a compiled static cache): the whole call, the prefill alone
(max_new_tokens=1), and a profile of a steady call: top CUDA kernels, GPU busy time, kernels per decode step.
A run names the attention for the decode steps: grouped (evaluate's), sdpa, flex_attention; `@N` sets the rows
per batch; `:stopeachstep` reads whether every row has stopped back from the GPU after each step, as transformers
5.17 does on CUDA (evaluate reads it a step late: generation.stop_read_a_step_late).

    python benchmarks/results/generate_exploration/profile_decode.py                 # grouped with and without the step-late stop read, then flex_attention
    python benchmarks/results/generate_exploration/profile_decode.py --one grouped   # one, in this process
"""
import argparse
import contextlib
import hashlib
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import generate_speed  # noqa: E402


def one(run: str, rows: int | None, checkpoint: str) -> None:
    import torch
    import transformers
    from harness import kernel_time
    from torch.profiler import ProfilerActivity, profile

    from slothline.backends import attention
    from slothline.kinds._generative.generation import generate, plan, prompt_lengths

    attn, *variants = run.split(":")
    if "stopeachstep" in variants:  # transformers' own stop check on CUDA: the flag read back after every step
        from slothline.kinds._generative import generation

        generation.stop_read_a_step_late = contextlib.nullcontext
    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.bfloat16, device_map={"": 0})
    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint)
    model.set_attn_implementation(attention.register_grouped_attention() if attn == "grouped" else attn)
    model.eval()
    prompts = generate_speed.text_prompts(tokenizer)
    lengths = prompt_lengths(model, tokenizer, prompts)
    how = plan(model, lengths, generate_speed.settings("auto"))
    how = replace(how, rows=rows) if rows else how
    new = generate_speed.NEW_TOKENS

    answers = []

    def timed(max_new: int) -> float:
        settings = generate_speed.settings(how.rows).model_copy(update={"max_new_tokens": max_new})
        torch.cuda.synchronize()
        start = time.perf_counter()
        answers[:] = generate(model, tokenizer, prompts, settings, how=how)
        torch.cuda.synchronize()
        return time.perf_counter() - start

    first = timed(new)
    steady = timed(new)
    digest = hashlib.sha256(json.dumps(answers).encode()).hexdigest()[:12]  # the same answers, whatever the run
    prefill = timed(1)
    batches = -(-len(prompts) // how.rows)
    decode_ms = (steady - prefill) * 1000 / batches / (new - 1)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        timed(new)
    busy_s, kernels = kernel_time(prof)
    print(json.dumps({"attn": run, "rows": how.rows, "cache_length": how.cache_length, "first_s": round(first, 2),
                      "steady_s": round(steady, 2), "tokens_per_s": round(len(prompts) * new / steady),
                      "prefill_s": round(prefill, 2), "decode_ms_per_step": round(decode_ms, 2),
                      "profiled_gpu_busy_s": round(busy_s, 2), "kernels": kernels, "answers_sha256": digest}))
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=80))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--one")
    parser.add_argument("--rows", type=int)
    parser.add_argument("--runs", default="grouped:stopeachstep,grouped,flex_attention")
    parser.add_argument("--checkpoint", default="/tmp/qwen3-4b-shape")
    args = parser.parse_args()
    if args.one:
        one(args.one, args.rows, args.checkpoint)
        return
    if not Path(args.checkpoint, "config.json").exists():
        import train_backends

        train_backends.build_checkpoint(Path(args.checkpoint))
    for run in args.runs.split(","):
        attn, _, rows = run.partition("@")
        done = subprocess.run([sys.executable, __file__, "--one", attn, "--checkpoint", args.checkpoint]
                              + (["--rows", rows] if rows else []), capture_output=True, text=True)
        print(f"===== {run} (exit {done.returncode})", done.stdout, done.stderr[-2500:] if done.returncode else "",
              sep="\n", flush=True)


if __name__ == "__main__":
    main()
