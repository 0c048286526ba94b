"""Where evaluate's generation time goes (Qwen3-4B shape, 128 prompts of 100-400 tokens, 128 new tokens,
the plain model as the merged adapter leaves it, a compiled static cache): the whole call, the prefill alone
(max_new_tokens=1), and a profile of a steady call: top CUDA kernels, GPU busy time, kernels per decode step.
A run names the attention for the decode steps: grouped (evaluate's), sdpa, flex_attention; `@N` sets the rows
per batch; `:stopeachstep` reads whether every row has stopped back from the GPU after each step, as transformers
5.17 does on CUDA (evaluate reads it a step late: generation.stop_read_a_step_late). grouped's compiled decode steps
attend through FlexAttention over the key blocks that hold keys to attend (attention.flex_decode); `:sdpadecode`
gives them grouped SDPA instead (attention.grouped_sdpa, cuDNN on an H100: evaluate's decode attention before),
`:flexdense` FlexAttention over every key (the mask as a score modification); `:eagerprefill` leaves the norms and
MLPs uncompiled (evaluate compiles them: generation.compile_norms_and_mlps), so the prefill's elementwise kernels
run eagerly as before; `:maxautotune` compiles the decode steps with inductor's max-autotune mode (its matrix
product templates benchmarked for each shape, CUDA graphs kept) where transformers asks for reduce-overhead.
`graph_launches` counts CUDA graph launches in the profiled call. Each run compiles with
empty compile caches.

    python benchmarks/results/generate_exploration/profile_decode.py                 # evaluate before, then each change
    python benchmarks/results/generate_exploration/profile_decode.py --one grouped   # one, in this process
"""
import argparse
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
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
    from slothline.kinds._generative import generation
    from slothline.kinds._generative.generation import generate, plan, prompt_lengths

    attn, *variants = run.split(":")
    if "stopeachstep" in variants:  # transformers' own stop check on CUDA: the flag read back after every step
        generation.stop_read_a_step_late = contextlib.nullcontext
    if "eagerprefill" in variants:  # the norms and MLPs uncompiled: the prefill's elementwise kernels eager
        generation.compile_norms_and_mlps = lambda model: None
    if "sdpadecode" in variants:
        attention.flex_decode = attention.grouped_sdpa
    if "flexdense" in variants:
        attention.flex_decode = dense_flex
    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.bfloat16, device_map={"": 0})
    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint)
    if "maxautotune" in variants:
        model.generation_config.compile_config = transformers.CompileConfig(mode="max-autotune")
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
    launches = sum(event.count for event in prof.key_averages() if event.key == "cudaGraphLaunch")
    print(json.dumps({"attn": run, "rows": how.rows, "cache_length": how.cache_length, "first_s": round(first, 2),
                      "steady_s": round(steady, 2), "tokens_per_s": round(len(prompts) * new / steady),
                      "prefill_s": round(prefill, 2), "decode_ms_per_step": round(decode_ms, 2),
                      "profiled_gpu_busy_s": round(busy_s, 2), "kernels": kernels, "graph_launches": launches,
                      "answers_sha256": digest}))
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=80))


def dense_flex(query, key, value, attention_mask, scaling):
    """FlexAttention over every key of the cache, the mask applied as a score modification."""
    import torch
    from torch.nn.attention.flex_attention import flex_attention

    attend = attention_mask[:, 0, -1, :]

    def masked(score, b, h, q, k):
        return torch.where(attend[b, k], score, -float("inf"))

    return flex_attention(query, key, value, score_mod=masked, scale=scaling,
                          enable_gqa=key.shape[1] != query.shape[1]).transpose(1, 2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--one")
    parser.add_argument("--rows", type=int)
    parser.add_argument("--runs", default="grouped:sdpadecode:eagerprefill,grouped:eagerprefill,grouped")
    parser.add_argument("--checkpoint", default="/tmp/qwen3-4b-shape")
    args = parser.parse_args()
    if args.one:
        one(args.one, args.rows, args.checkpoint)
        return
    import harness
    import train_backends

    harness.ensure_checkpoint(args.checkpoint, train_backends.build_checkpoint)
    for run in args.runs.split(","):
        attn, _, rows = run.partition("@")
        with tempfile.TemporaryDirectory() as cold:  # every run compiles from nothing: first_s compares
            env = os.environ | {"TORCHINDUCTOR_CACHE_DIR": f"{cold}/inductor", "TRITON_CACHE_DIR": f"{cold}/triton"}
            done = subprocess.run([sys.executable, __file__, "--one", attn, "--checkpoint", args.checkpoint]
                                  + (["--rows", rows] if rows else []), capture_output=True, text=True, env=env)
        print(f"===== {run} (exit {done.returncode})", done.stdout, done.stderr[-2500:] if done.returncode else "",
              sep="\n", flush=True)


if __name__ == "__main__":
    main()
