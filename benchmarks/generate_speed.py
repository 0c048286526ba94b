"""Batched generation (evaluate's way) vs one prompt at a time (the common notebook loop).

Same model, same prompts (the test split's), greedy, same max_new_tokens; reports samples/s of each
and their ratio in benchmarks/results/generate_speed_<device>.json.

    python benchmarks/generate_speed.py                       # tiny default model on this machine
    python benchmarks/generate_speed.py --qwen3-4b-shape      # random Qwen3-4B-shape checkpoint (GPU)
"""

import argparse
import json
import time
from pathlib import Path

import torch

from slothline.artifacts import PREPARED_DIR, read_split
from slothline.kinds._generative.generation import generate
from slothline.models import resolve_model

RESULTS = Path("benchmarks/results")
FALLBACK_QUESTIONS = ["Say hello to Anna.", "Reverse the word 'stone'.", "What is 12 + 7?", "What colour is a lemon?"]


def test_prompts(tokenizer, count: int) -> list[str]:
    if (PREPARED_DIR / "test.jsonl").is_file():
        prompts = [row["prompt"] for row in read_split("test")]
    else:
        prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                                 add_generation_prompt=True, enable_thinking=False)
                   for q in FALLBACK_QUESTIONS]
    return [prompts[i % len(prompts)] for i in range(count)]


def one_at_a_time(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    answers = []
    for prompt in prompts:
        inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id)
        answers.append(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
    return answers


def timed(fn, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--qwen3-4b-shape", action="store_true")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.qwen3_4b_shape:
        from train_backends import build_checkpoint

        checkpoint, name = Path("/tmp/qwen3-4b-shape"), "Qwen3-4B shape (random weights)"
        if not (checkpoint / "config.json").exists():
            build_checkpoint(checkpoint)
    else:
        checkpoint, name = resolve_model("builtin:tiny-qwen3"), "builtin:tiny-qwen3"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=dtype).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    prompts = test_prompts(tokenizer, args.samples)
    with torch.inference_mode():
        generate(model, tokenizer, prompts[: args.batch_size], args.batch_size, 4)  # warm-up
        batched = timed(lambda: generate(model, tokenizer, prompts, args.batch_size, args.max_new_tokens), device)
        single = timed(lambda: one_at_a_time(model, tokenizer, prompts, args.max_new_tokens), device)
    result = {
        "model": name,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "samples": len(prompts),
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "batched_samples_per_s": round(len(prompts) / batched, 2),
        "one_at_a_time_samples_per_s": round(len(prompts) / single, 2),
        "speedup": round(single / batched, 2),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "gpu" if device == "cuda" else "cpu"
    (RESULTS / f"generate_speed_{suffix}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
