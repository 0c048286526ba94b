"""Generation speed of evaluate's paths on one GPU, against today's and the memory-bandwidth floor.

A randomly initialised checkpoint of Qwen3-4B's shape (bf16) with a random LoRA adapter (r=16 on all 7
projections, B not zero, so the adapter changes every weight it touches) answers 128 chat prompts of 100-400
tokens with 128 new tokens each, greedily (random weights almost never produce a stop token, so every row
runs to the end). Every path generates through evaluate's own `generate()`, each in a child process of its own,
one after the other (`unsloth` needs one: Unsloth patches transformers' Qwen3 classes for the whole process):

- `before`: what evaluate did before: the PEFT adapter unmerged, a dynamic cache, 16 rows per batch, sdpa;
- `merged`: the adapter merged in place, a dynamic cache, evaluate's rows per batch (its token budget);
- `static-sdpa`: merged, transformers' static cache with compiled decode steps (CUDA graphs) and the norms and
  MLPs compiled (`generation.compile_norms_and_mlps`), every batch one shape, transformers' sdpa (which copies
  keys and values for each query head whenever a mask is given);
- `evaluate`: what evaluate does now (`generation.plan`, with `evaluate.kv_cache: static`): `static-sdpa` with the
  decode steps through the grouped attention (backends.attention: FlexAttention over the key blocks that hold keys
  to attend, in the compiled steps) and the stop flag read a step late (`generation.stop_read_a_step_late`;
  the other paths read it after every step), the base pass (adapter disabled) first as in evaluate (timed:
  `base_pass_s`, where a compiled path compiles first);
- `unsloth`: the unsloth backend's path before (FastLanguageModel, the adapter, for_inference, 16 rows).

Tokens/s counts every row's NEW_TOKENS (a batch runs until its last row ends, and random weights
practically never stop early). A compiled path is timed twice: the first call includes compiling (what one evaluate run pays once per
model), the second is the steady speed. Each path reports generated tokens/s and the fraction of the
memory-bandwidth floor at its batch (each decode step must read every weight once: weight bytes / the
GPU's bandwidth), against the floor that also counts the KV cache each step reads, and against the roofline of
the whole call: each batch's prefill at the GPU's peak bf16 FLOP/s (2 FLOPs per weight per real prompt token,
no padding) plus each decode step reading every weight and the keys and values of the tokens each row really
holds at that step. `--vision` runs the same on a Qwen3-VL-2B-shape checkpoint with one 448x448 picture per
prompt (rows by the token budget, each picture counted as the processor expands it): `before`, `evaluate` and
`evaluate-dynamic`, evaluate's path on a dynamic cache (what it did for pictures before their decode steps were
compiled too). Writes benchmarks/results/generate_speed.{json,md}.

    python benchmarks/generate_speed.py                 # text, every path (the vision model's earlier result kept)
    python benchmarks/generate_speed.py --vision        # both models
    python benchmarks/generate_speed.py --vision-only   # the vision model again, the text model's earlier result kept
    python benchmarks/generate_speed.py --path evaluate # one path here (used internally)
    python benchmarks/generate_speed.py --path evaluate --checkpoint /tmp/qwen3-4b-shape --rows 16  # at 16 rows a batch
"""

import argparse
import contextlib
import json
import random
import time
from dataclasses import replace
from pathlib import Path
from unittest import mock

from harness import RESULTS, ensure_checkpoint, measure_in_child, print_result, write_results

PROMPTS, NEW_TOKENS, SHORTEST, LONGEST = 128, 128, 100, 400
BANDWIDTH_TB_S = {"H100": 3.35, "H200": 4.8}  # HBM3 (SXM) and HBM3e
PEAK_BF16_TFLOPS = {"H100": 989, "H200": 989}  # dense tensor-core bf16, SXM
TEXT_PATHS = ("before", "merged", "static-sdpa", "evaluate", "unsloth")
VISION_PATHS = ("before", "evaluate-dynamic", "evaluate")
WORDS = "the of and a to in is you that it he was for on are as with his they at be this from have or by".split()


def build_adapter(model):
    """A random LoRA adapter on all 7 projections whose B matrices are not zero."""
    import torch
    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, target_modules=targets))
    for name, weight in peft_model.named_parameters():
        if "lora_B" in name:
            weight.data.normal_(0, 0.02)
    return peft_model.eval()


def text_prompts(tokenizer) -> list[str]:
    """PROMPTS chat prompts of SHORTEST..LONGEST tokens."""
    rng = random.Random(0)
    prompts = []
    for _ in range(PROMPTS):
        target, words = rng.randint(SHORTEST, LONGEST), []
        while len(tokenizer(" ".join(words))["input_ids"]) < target - 12:
            words += rng.choices(WORDS, k=8)
        messages = [{"role": "user", "content": " ".join(words)}]
        prompts.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                     enable_thinking=False))
    return prompts


def settings(rows):
    """evaluate's settings for this workload, the static cache pinned: for one batch a pass `kv_cache: auto`
    takes the dynamic cache, whose compile-free first call wins there (see generation.STATIC_CACHE_FROM_STEPS);
    this measures the steady speed of the static one, which longer evaluations get."""
    from slothline.kinds._generative.params import GenerationEvaluate

    return GenerationEvaluate(batch_size=rows, max_new_tokens=NEW_TOKENS, seed=0, kv_cache="static")


def timed_generate(model, processor, prompts, how, images=None) -> tuple[list[str], float]:
    import torch

    from slothline.kinds._generative.generation import generate

    sync = torch.cuda.synchronize if torch.cuda.is_available() else lambda: None
    sync()
    start = time.perf_counter()
    answers = generate(model, processor, prompts, settings(how.rows), images=images, how=how)
    sync()
    return answers, time.perf_counter() - start


def chip_limit(table: dict) -> float | None:
    """This GPU's entry of BANDWIDTH_TB_S or PEAK_BF16_TFLOPS (None for another chip or the CPU)."""
    import torch

    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return next((value for chip, value in table.items() if chip in name), None)


def weight_bytes(model) -> int:
    """The bytes of every weight: what each decode step reads once."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def floor_tokens_per_s(model, rows: int, kv_tokens_per_row: float = 0.0) -> float:
    """rows / (bytes a decode step must read / bandwidth): every weight once, and with `kv_tokens_per_row` the
    keys and values of that many cached tokens of each row."""
    from slothline.kinds._generative.generation import kv_bytes_per_token

    bandwidth = chip_limit(BANDWIDTH_TB_S)
    kv_bytes = rows * kv_tokens_per_row * kv_bytes_per_token(model)
    return rows / ((weight_bytes(model) + kv_bytes) / (bandwidth * 1e12)) if bandwidth else float("nan")


def roofline_tokens_per_s(model, lengths: list[int], rows: int) -> float:
    """Generated tokens / the least time the GPU can take for them: per batch (longest prompts first), a prefill of
    2 FLOPs per weight per real prompt token at peak bf16 FLOP/s (embeddings left out: a lookup, and logits of the
    last token only; a vision tower counted as if it ran per token), then NEW_TOKENS - 1 decode steps, each reading
    every weight and the keys and values of each row's prompt and the tokens it has made so far."""
    from slothline.kinds._generative.generation import kv_bytes_per_token

    bandwidth, peak = chip_limit(BANDWIDTH_TB_S), chip_limit(PEAK_BF16_TFLOPS)
    if not bandwidth:
        return float("nan")
    heads = {id(m.weight): m.weight.numel() for m in (model.get_input_embeddings(), model.get_output_embeddings())}
    weights = sum(p.numel() for p in model.parameters()) - sum(heads.values())
    step_bytes, token_bytes = weight_bytes(model), kv_bytes_per_token(model)
    ordered = sorted(lengths, reverse=True)
    seconds = 0.0
    for batch in (ordered[i:i + rows] for i in range(0, len(ordered), rows)):
        seconds += 2 * weights * sum(batch) / (peak * 1e12)
        kv_tokens = sum(batch) * (NEW_TOKENS - 1) + len(batch) * NEW_TOKENS * (NEW_TOKENS - 1) / 2
        seconds += ((NEW_TOKENS - 1) * step_bytes + kv_tokens * token_bytes) / (bandwidth * 1e12)
    return len(lengths) * NEW_TOKENS / seconds


def run_path(path: str, checkpoint: str, vision: bool, rows: int | None = None) -> dict:
    """Generate with one path in this process; time it (twice where it compiles). `rows`: evaluate's rows per
    batch in place of its token budget's."""
    import torch

    from slothline.backends import attention
    from slothline.kinds._generative import generation
    from slothline.kinds._generative.generation import Plan, plan, prompt_lengths

    if path == "unsloth":
        from unsloth import FastLanguageModel  # first: it patches transformers

        model, processor = FastLanguageModel.from_pretrained(checkpoint, max_seq_length=1024, load_in_4bit=False)
    else:
        import transformers

        auto = transformers.AutoModelForImageTextToText if vision else transformers.AutoModelForCausalLM
        on_gpu = torch.cuda.is_available()  # the CPU: a smoke test of the script with a tiny model
        model = auto.from_pretrained(checkpoint, dtype=torch.bfloat16 if on_gpu else torch.float32,
                                     device_map={"": 0} if on_gpu else None)
        processor = (transformers.AutoProcessor if vision else transformers.AutoTokenizer).from_pretrained(checkpoint)
    model = build_adapter(model)
    if path == "unsloth":
        FastLanguageModel.for_inference(model)
    tokenizer = getattr(processor, "tokenizer", processor)
    prompts, images = (vision_prompts(processor) if vision else (text_prompts(tokenizer), None))
    prompts = prompts if path not in ("before", "unsloth") or vision else prompts[:32]  # the slow paths: 2 batches
    images = images and images[: len(prompts)]
    lengths = prompt_lengths(model, processor, prompts, images=images)
    evaluate_plan = plan(model, lengths, settings("auto"))
    evaluate_plan = replace(evaluate_plan, rows=rows) if rows else evaluate_plan
    longest = max(lengths) + NEW_TOKENS
    how = {"before": Plan(16, "dynamic", longest, merged=False), "unsloth": Plan(16, "dynamic", longest, merged=False),
           "merged": Plan(evaluate_plan.rows, "dynamic", longest, merged=True),
           "static-sdpa": Plan(evaluate_plan.rows, "static", longest, merged=True),
           "evaluate": evaluate_plan, "evaluate-dynamic": replace(evaluate_plan, cache="dynamic")}[path]
    if path.startswith("evaluate"):
        model.set_attn_implementation(attention.register_grouped_attention())
        with model.disable_adapter():  # evaluate's base pass comes first: its own compiled graph
            base_pass = timed_generate(model, processor, prompts, replace(how, merged=False), images)[1]
    elif path != "unsloth":
        model.set_attn_implementation("sdpa")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    # the paths before evaluate's read the stop flag back after every step, as transformers does on CUDA
    with contextlib.nullcontext() if path.startswith("evaluate") else \
            mock.patch.object(generation, "stop_read_a_step_late", contextlib.nullcontext):
        answers, first = timed_generate(model, processor, prompts, how, images)
        seconds = timed_generate(model, processor, prompts, how, images)[1] if how.cache == "static" else first
    floor = floor_tokens_per_s(model, how.rows)
    # a static cache is read whole at each step; a dynamic one holds a batch's longest prompt and the tokens so far
    batches = [sorted(lengths, reverse=True)[i] for i in range(0, len(lengths), how.rows)]
    cached = how.cache_length if how.cache == "static" else sum(batches) / len(batches) + NEW_TOKENS / 2
    floor_kv = floor_tokens_per_s(model, how.rows, cached)
    roofline = roofline_tokens_per_s(model, lengths, how.rows)
    return {
        "path": path, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "rows_per_batch": how.rows, "kv_cache": how.cache,
        "adapter_merged": how.merged, "prompts": len(prompts), "new_tokens": NEW_TOKENS,
        "first_call_s": round(first, 2), "seconds": round(seconds, 2),
        **({"base_pass_s": round(base_pass, 2)} if path.startswith("evaluate") else {}),
        "tokens_per_s": round(len(prompts) * NEW_TOKENS / seconds, 1),
        "first_call_tokens_per_s": round(len(prompts) * NEW_TOKENS / first, 1),
        "floor_tokens_per_s": round(floor, 1), "fraction_of_floor": round(len(prompts) * NEW_TOKENS / seconds / floor, 3),
        "floor_with_kv_tokens_per_s": round(floor_kv, 1),
        "fraction_of_floor_with_kv": round(len(prompts) * NEW_TOKENS / seconds / floor_kv, 3),
        "roofline_tokens_per_s": round(roofline, 1),
        "fraction_of_roofline": round(len(prompts) * NEW_TOKENS / seconds / roofline, 3),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
        "answers": answers[:32],
    }


def vision_prompts(processor) -> tuple[list[str], list[list]]:
    """PROMPTS questions about one 448x448 picture each."""
    from PIL import Image, ImageDraw

    rng = random.Random(0)
    prompts, images = [], []
    for _ in range(PROMPTS):
        picture = Image.new("RGB", (448, 448), "white")
        for _ in range(8):
            x, y = rng.randrange(0, 384), rng.randrange(0, 384)
            ImageDraw.Draw(picture).rectangle((x, y, x + 64, y + 64), fill=rng.choice(["red", "blue", "green"]))
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the boxes."}]}]
        prompts.append(processor.apply_chat_template(messages, add_generation_prompt=True))
        images.append([picture])
    return prompts, images


def agreement(runs: dict, path: str, against: str = "before") -> float | None:
    """The share of `path`'s answers (of the prompts both ran) equal to `against`'s."""
    if against not in runs or path not in runs:
        return None
    pairs = list(zip(runs[against]["answers"], runs[path]["answers"]))
    return round(sum(a == b for a, b in pairs) / len(pairs), 3)


def markdown(report: dict) -> str:
    lines = []
    for model_name, runs in report["models"].items():
        lines.append(f"\n## {model_name}\n\n| path | device | rows/batch | cache | merged | first call tok/s | tok/s | "
                     f"floor tok/s | of floor | with KV: floor, of it | roofline, of it | peak GiB |\n"
                     "|---|---|---|---|---|---|---|---|---|---|---|---|")
        for path, run in runs["runs"].items():
            lines.append(f"| {path} | {run['device']} | {run['rows_per_batch']} | {run['kv_cache']} | "
                         f"{run['adapter_merged']} | {run['first_call_tokens_per_s']:,.0f} | {run['tokens_per_s']:,.0f} | "
                         f"{run['floor_tokens_per_s']:,.0f} | {run['fraction_of_floor']:.0%} | "
                         + (f"{run['floor_with_kv_tokens_per_s']:,.0f}, {run['fraction_of_floor_with_kv']:.0%}"
                            if "floor_with_kv_tokens_per_s" in run else "") + " | "
                         + (f"{run['roofline_tokens_per_s']:,.0f}, {run['fraction_of_roofline']:.0%}"
                            if "roofline_tokens_per_s" in run else "") + f" | {run['peak_mem_gib']} |")
        lines.append("\n" + "\n".join(f"- {key}: {value}" for key, value in runs.items() if key != "runs"))
    return f"# Generation speed\n\n{report['workload']}\n" + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", choices=sorted(set(TEXT_PATHS + VISION_PATHS)), help="run one path in this process (used internally)")
    parser.add_argument("--vision", action="store_true")
    parser.add_argument("--vision-only", action="store_true", help="the vision model alone (the text model's earlier "
                                                                    "result kept)")
    parser.add_argument("--checkpoint")
    parser.add_argument("--rows", type=int, help="with --path: evaluate's rows per batch (default: its token budget's)")
    args = parser.parse_args()
    if args.path:
        print_result(run_path(args.path, args.checkpoint, args.vision, args.rows))
        return
    import train_backends
    import vision_backends

    earlier = RESULTS / "generate_speed.json"  # each model measured now replaces its entry; the others are kept
    report = json.loads(earlier.read_text()) if earlier.is_file() else {"models": {}}
    report["workload"] = (f"{PROMPTS} prompts of {SHORTEST}-{LONGEST} tokens, {NEW_TOKENS} new tokens each, greedy, "
                          "random bf16 weights with a random LoRA adapter (r=16, all 7 projections); `before` and "
                          "`unsloth` answer the first 32 prompts (two batches of 16)")
    shapes = [] if args.vision_only else [("Qwen3-4B shape", Path("/tmp/qwen3-4b-shape"), train_backends.build_checkpoint,
                                           TEXT_PATHS, False)]
    if args.vision or args.vision_only:
        shapes.append(("Qwen3-VL-2B shape, one 448x448 picture per prompt", Path("/tmp/qwen3-vl-2b-shape"),
                       vision_backends.build_checkpoint, VISION_PATHS, True))
    for name, checkpoint, build, paths, vision in shapes:
        ensure_checkpoint(checkpoint, build)
        runs = {path: measure_in_child([__file__, "--path", path, "--checkpoint", str(checkpoint)]
                                       + ["--vision"] * vision, f"{path} ({name})", keep_going=True) for path in paths}
        failed = [path for path, run in runs.items() if run is None]
        runs = {path: run for path, run in runs.items() if run is not None}
        compared = [path for path in runs if path != "before" and "before" in runs]
        summary = {f"{path}_vs_before_tokens_per_s": round(runs[path]["tokens_per_s"] / runs["before"]["tokens_per_s"], 2)
                   for path in compared}
        summary |= {f"{path}_answers_equal_to_before": agreement(runs, path) for path in compared}
        if {"evaluate", "evaluate-dynamic"} <= runs.keys():  # the static cache against the dynamic one, same plan
            summary |= {"evaluate_vs_evaluate-dynamic_tokens_per_s":
                        round(runs["evaluate"]["tokens_per_s"] / runs["evaluate-dynamic"]["tokens_per_s"], 2),
                        "evaluate_answers_equal_to_evaluate-dynamic": agreement(runs, "evaluate", "evaluate-dynamic")}
        summary |= {"failed": failed} if failed else {}
        report["models"][name] = {"measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runs": runs, **summary}
        write_results("generate_speed", report, markdown(report))  # after each model: a later one may not finish


if __name__ == "__main__":
    main()
