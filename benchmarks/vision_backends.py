"""Vision training throughput and memory of the `unsloth` and `hf` backends on one GPU.

Builds a randomly initialised checkpoint of Qwen3-VL-2B's shape (a random model trains exactly as fast
as the real one) with the builtin byte-level tokenizer and a Qwen3-VL processor, draws 448x448 pictures
with short questions and answers, then trains each backend in a fresh process (Unsloth patches
transformers globally) with the train stage's own code: runtime.resolve, backends.load_for_training and
the vision kind's build_trainer (UnslothVisionDataCollator + FastVisionModel on unsloth; transformers'
AutoModelForImageTextToText + PEFT + the AnswerCollator on hf; TRL's SFTTrainer on both).

Qwen3-VL-2B's shape (its published config.json): text model hidden 2048, 28 layers, 16 heads, 8 KV heads,
head_dim 128, MLP 6144, vocabulary 151936, tied embeddings, mrope_section [24, 20, 20]; vision tower
depth 24, hidden 1024, MLP 4096, 16 heads, patch 16, merge 2, out_hidden_size 2048,
num_position_embeddings 2304, deepstack layers [5, 11, 17].

Every run: LoRA r=16 on the language and vision towers' attention and MLP layers, batch 8, gradient
checkpointing, answer-only labels, each picture described in 120 to 250 tokens; `unsloth` and `hf` in
bf16 (the like-for-like pair the target compares), `unsloth-4bit` on a 4-bit base (QLoRA, as Unsloth's
Qwen3-VL notebook loads the model). A 448x448 picture is 28x28 patches, 196 image tokens.
Counts non-padding tokens (image tokens included) per second over the steps after warm-up (Unsloth
compiles on its first steps) and the peak GPU memory; writes benchmarks/results/vision_backends.{json,md}.

    python benchmarks/vision_backends.py                 # both backends, then the report (about 6 minutes)
    python benchmarks/vision_backends.py --backends hf   # one of them, added to the runs already measured
    python benchmarks/vision_backends.py --backend hf    # one run in this process (used internally)
"""

import argparse
import json
import random
import time
from pathlib import Path

from harness import RESULTS, ensure_checkpoint, measure_in_child, print_result, train_timed, write_results

QWEN3_VL_2B_TEXT = dict(
    hidden_size=2048, num_hidden_layers=28, intermediate_size=6144, num_attention_heads=16, num_key_value_heads=8,
    head_dim=128, vocab_size=151936, max_position_embeddings=262144,
    rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20],
                     "mrope_interleaved": True},
)
QWEN3_VL_2B_VISION = dict(
    depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, patch_size=16, spatial_merge_size=2,
    temporal_patch_size=2, out_hidden_size=2048, num_position_embeddings=2304, deepstack_visual_indexes=[5, 11, 17],
)
IMAGE_SIZE, ROWS, BATCH, STEPS, WARMUP_STEPS = 448, 128, 8, 16, 6
BACKENDS = ("unsloth", "hf", "unsloth-4bit")  # unsloth-4bit: QLoRA, as Unsloth's Qwen3-VL notebook loads it
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                  "qkv", "proj", "linear_fc1", "linear_fc2"]


def build_checkpoint(out_dir: Path) -> None:
    """Random Qwen3-VL-2B-shape weights in bf16, the builtin tokenizer with Qwen's vision tokens, and a
    processor whose patches match the vision tower."""
    import torch
    from transformers import (Qwen2VLImageProcessor, Qwen3VLConfig, Qwen3VLForConditionalGeneration,
                              Qwen3VLProcessor, Qwen3VLVideoProcessor)

    from slothline.builtin import FILES_DIR, QWEN_VISION_TOKENS, build_byte_tokenizer

    template = (FILES_DIR / "qwen3_vl_chat_template.jinja").read_text()
    tokenizer = build_byte_tokenizer(QWEN_VISION_TOKENS, template)
    token_id = tokenizer.convert_tokens_to_ids
    config = Qwen3VLConfig(
        text_config={**QWEN3_VL_2B_TEXT, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id},
        vision_config=QWEN3_VL_2B_VISION, image_token_id=token_id("<|image_pad|>"),
        video_token_id=token_id("<|video_pad|>"), vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"), tie_word_embeddings=True,
    )
    patches = dict(patch_size=16, merge_size=2, temporal_patch_size=2)
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(**patches, min_pixels=256 * 256, max_pixels=1024 * 1024,
                                              image_mean=[0.5] * 3, image_std=[0.5] * 3),
        tokenizer=tokenizer, video_processor=Qwen3VLVideoProcessor(**patches), chat_template=template,
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen3VLForConditionalGeneration(config).to(torch.bfloat16)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)


def picture_rows(processor, folder: Path) -> list[dict]:
    """Prepared rows (canonical messages plus the rendered text) about 448x448 pictures of coloured boxes."""
    from PIL import Image, ImageDraw

    rng = random.Random(0)
    colours = ["red", "green", "blue", "yellow", "purple", "orange"]
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(ROWS):
        picture = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), "white")
        pen = ImageDraw.Draw(picture)
        boxes = []
        for _ in range(rng.randint(6, 12)):
            colour, x, y = rng.choice(colours), rng.randrange(0, IMAGE_SIZE - 64), rng.randrange(0, IMAGE_SIZE - 64)
            width, height = rng.randint(16, 64), rng.randint(16, 64)
            pen.rectangle((x, y, x + width, y + height), fill=colour)
            boxes.append(f"a {colour} box at ({x}, {y}), {width} by {height} pixels")
        path = folder / f"{i:03d}.png"
        picture.save(path)
        answer = f"There are {len(boxes)} boxes: " + "; ".join(boxes) + "."  # a described picture, as OCR answers
        messages = [{"role": "user", "content": [{"type": "image", "image": str(path)},
                                                 {"type": "text", "text": "Describe the boxes in this picture."}]},
                    {"role": "assistant", "content": answer}]
        rows.append({"messages": messages, "text": processor.apply_chat_template(messages)})
    return rows


def run_one(backend: str, checkpoint: str) -> dict:
    """Train STEPS steps with the train stage's code in this process; time the steps after warm-up."""
    from slothline import backends, training
    from slothline.kinds import vision
    from slothline.runtime import probe, resolve

    params = vision.Params.model_validate({
        "kind": "vision",
        "model": {"name": checkpoint, "max_seq_length": 2048, "load_in_4bit": backend == "unsloth-4bit"},
        "data": {"sources": [{"path": "unused.jsonl", "format": "vqa"}]},
        "lora": {"r": 16, "alpha": 16, "target_modules": TARGET_MODULES},
        "train": {"backend": backend.removesuffix("-4bit"), "max_steps": STEPS, "per_device_batch_size": BATCH, "learning_rate": 2e-4,
                  "gradient_checkpointing": True, "save_steps": 10_000, "logging_steps": 1, "warmup_steps": 2},
    })
    runtime = resolve(params, probe())
    backend_module = backends.get(runtime)  # first: Unsloth patches transformers, TRL and PEFT
    model, processor = backends.load_for_training(vision, runtime, params)
    rows = picture_rows(processor, Path(checkpoint) / "pictures")
    trainer = vision.build_trainer(backend_module, runtime, params, model, processor, rows, [], "/tmp/vision-bench-out", [])
    training.prepare_trainer(trainer, model, backend_module, runtime, params)
    import torch

    started = time.perf_counter()
    tokens, seconds = train_timed(trainer, WARMUP_STEPS)
    return {
        "backend": backend,
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "collator": type(trainer.data_collator).__name__,
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "timed_steps": STEPS - WARMUP_STEPS,
        "non_padding_tokens": tokens,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(tokens / seconds, 1),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "whole_run_s": round(time.perf_counter() - started, 1),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "losses": [log["loss"] for log in trainer.state.log_history if "loss" in log],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated: " + ", ".join(BACKENDS))
    parser.add_argument("--backend", choices=BACKENDS, help="run one backend in this process (used internally)")
    parser.add_argument("--checkpoint", default="/tmp/qwen3-vl-2b-shape")
    args = parser.parse_args()
    if args.backend:
        print_result(run_one(args.backend, args.checkpoint))
        return
    ensure_checkpoint(args.checkpoint, build_checkpoint)
    results_file = RESULTS / "vision_backends.json"
    runs = json.loads(results_file.read_text())["runs"] if results_file.is_file() else {}
    for backend in args.backends.split(","):
        runs[backend] = measure_in_child([__file__, "--backend", backend, "--checkpoint", args.checkpoint], backend)
    report = {
        "model": "Qwen3-VL-2B shape, random weights, bf16, LoRA r=16 on both towers' attention and MLP layers",
        "data": f"{ROWS} rows of one {IMAGE_SIZE}x{IMAGE_SIZE} picture and its description (6 to 12 boxes, about "
                f"120 to 250 answer tokens), batch {BATCH}, gradient checkpointing, answer-only labels",
        "runs": {b: runs[b] for b in BACKENDS if b in runs},
    }
    for run in ("unsloth", "unsloth-4bit"):
        if run in runs and "hf" in runs:
            key = run.replace("-", "_") + "_vs_hf"
            report[f"{key}_tokens_per_s"] = round(runs[run]["tokens_per_s"] / runs["hf"]["tokens_per_s"], 2)
            report[f"{key}_peak_mem"] = round(runs[run]["peak_mem_gib"] / runs["hf"]["peak_mem_gib"], 2)
    write_results("vision_backends", report, markdown(report))


def markdown(report: dict) -> str:
    rows = "\n".join(f"| {run['device']} | {b} ({run['collator']}) | {run['tokens_per_s']:,.0f} | {run['peak_mem_gib']} |"
                     for b, run in report["runs"].items())
    summary = "".join(
        f"- {run} / hf = {report[key + '_tokens_per_s']}x tokens/s at {report[key + '_peak_mem']}x peak memory\n"
        for run, key in (("unsloth", "unsloth_vs_hf"), ("unsloth-4bit", "unsloth_4bit_vs_hf")) if key + "_peak_mem" in report)
    summary += "\nTarget: unsloth at least 1.5x the tokens/s of hf at most 0.6x its peak memory.\n"
    return (f"# Vision training backends\n\n{report['model']}; {report['data']}; {STEPS - WARMUP_STEPS} timed steps "
            f"after {WARMUP_STEPS} warm-up steps.\n\n| device | run | non-padding tokens/s | peak GiB |\n"
            f"|---|---|---|---|\n{rows}\n\n{summary}")


if __name__ == "__main__":
    main()
