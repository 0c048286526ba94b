"""Training throughput and memory of the classifier kind on the `unsloth` and `hf` backends on one GPU.

Builds a randomly initialised checkpoint of ModernBERT-base's shape (MODERNBERT_BASE_SHAPE: 22 layers,
hidden 768, MLP 1152, 12 heads, vocabulary 50368, global attention every third layer and a 128-token
window in the others; a random model trains exactly as fast as the real one) with the builtin WordPiece
tokenizer, then trains a 4-class sequence classifier on rows of exactly 512 tokens, in a fresh process
per run (Unsloth patches transformers globally). Both backends run the train stage's own code
(backends.load_for_training + the classifier kind's build_trainer, transformers' Trainer):

- `unsloth`: Unsloth's FastModel (auto_model=AutoModelForSequenceClassification) and its get_peft_model;
- `hf`: plain transformers + PEFT (AutoModelForSequenceClassification, LoraConfig with task_type SEQ_CLS).

Each backend runs LoRA (r=16 on Wqkv, Wo, Wi, the head in modules_to_save) and full fine-tuning, in
bf16 (fp16 without bf16), same rows, batch and optimizer. Counts tokens per second over the steps after
warm-up and the peak GPU memory, and writes benchmarks/results/classifier_backends.{json,md}.

    python benchmarks/classifier_backends.py                         # every run, then the report
    python benchmarks/classifier_backends.py --methods lora          # LoRA only
    python benchmarks/classifier_backends.py --run unsloth --methods lora   # one run here (used internally)
"""

import argparse
import random
import time
from pathlib import Path

from harness import ensure_checkpoint, measure_in_child, print_result, train_timed, write_results

MODERNBERT_BASE_SHAPE = dict(
    vocab_size=50368, hidden_size=768, intermediate_size=1152, num_hidden_layers=22, num_attention_heads=12,
    max_position_embeddings=8192, local_attention=128, global_attn_every_n_layers=3, classifier_pooling="mean",
)
STEPS, WARMUP_STEPS, BATCH, SEQ_LEN, ROWS, LOGGING_STEPS = 40, 10, 16, 512, 1024, 10
LABELS = ["a", "b", "c", "d"]
RUNS = ("unsloth", "hf")
METHODS = ("lora", "full")


def build_checkpoint(out_dir: Path) -> None:
    """Random ModernBERT-base-shape weights (masked-LM checkpoint, as ModernBERT ships) in bf16, and the
    builtin WordPiece tokenizer (its ids fit in any vocabulary)."""
    import torch
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    from slothline.builtin import build_wordpiece_tokenizer

    tokenizer = build_wordpiece_tokenizer(MODERNBERT_BASE_SHAPE["max_position_embeddings"])
    config = ModernBertConfig(**MODERNBERT_BASE_SHAPE, pad_token_id=tokenizer.pad_token_id,
                              cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id,
                              bos_token_id=None, eos_token_id=None)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = ModernBertForMaskedLM(config).to(torch.bfloat16)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def rows(tokenizer) -> list[dict]:
    """Texts longer than SEQ_LEN tokens (cut to it by the trainer), with labels in label_id order."""
    rng = random.Random(0)
    words = [w for w in tokenizer.get_vocab() if w.isalpha()]
    made = []
    for i in range(ROWS):
        made.append({"text": " ".join(rng.choice(words) for _ in range(SEQ_LEN)), "label": LABELS[i % len(LABELS)],
                     "label_id": i % len(LABELS)})
    assert min(len(tokenizer(r["text"])["input_ids"]) for r in made[:8]) > SEQ_LEN
    return made


def run_one(backend: str, method: str, checkpoint: str) -> dict:
    """Train STEPS steps in this process with the train stage's code; time the steps after warm-up."""
    from slothline import backends, training
    from slothline.kinds import classifier
    from slothline.runtime import probe, resolve

    params = classifier.Params.model_validate({
        "kind": "classifier",
        "model": {"name": checkpoint, "max_seq_length": SEQ_LEN},
        "data": {"sources": [{"path": "unused.jsonl", "format": "classification"}]},
        "lora": {"r": 16, "alpha": 32},
        "train": {"backend": backend, "full_finetuning": method == "full", "max_steps": STEPS,
                  "per_device_batch_size": BATCH, "learning_rate": 5e-5, "warmup_steps": 0,
                  "gradient_checkpointing": False, "save_steps": 10_000, "logging_steps": LOGGING_STEPS},
    })
    runtime = resolve(params, probe())
    assert runtime.backend == backend, runtime
    backend_module = backends.get(runtime)  # first: Unsloth patches transformers, TRL and PEFT
    model, tokenizer = backends.load_for_training(classifier, runtime, params, LABELS)
    trainer = classifier.build_trainer(backend_module, runtime, params, model, tokenizer, rows(tokenizer), [], "/tmp/bench-out", [])
    training.prepare_trainer(trainer, model, backend_module, runtime, params)
    import torch

    tokens, seconds = train_timed(trainer, WARMUP_STEPS)
    args = trainer.args
    return {
        "backend": backend,
        "method": backends.method_of(model),
        "device": torch.cuda.get_device_name(),
        "precision": runtime.precision,
        "optim": runtime.optim,
        "attn_implementation": trainer.model.config._attn_implementation,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "timed_steps": STEPS - WARMUP_STEPS,
        "tokens": tokens,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds, 1),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "losses": [log["loss"] for log in trainer.state.log_history if "loss" in log],
        "bf16": args.bf16,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated: " + ", ".join(METHODS))
    parser.add_argument("--runs", default=",".join(RUNS), help="comma-separated backends: " + ", ".join(RUNS))
    parser.add_argument("--run", choices=RUNS, help="run one backend and method in this process (used internally)")
    parser.add_argument("--checkpoint", default="/tmp/modernbert-base-shape")
    args = parser.parse_args()
    if args.run:
        print_result(run_one(args.run, args.methods, args.checkpoint))
        return
    ensure_checkpoint(args.checkpoint, build_checkpoint)
    report = {
        "model": "ModernBERT-base shape (" + ", ".join(f"{k}={v}" for k, v in MODERNBERT_BASE_SHAPE.items())
                 + "), random weights, bf16, 4 classes",
        "data": f"{ROWS} rows of exactly {SEQ_LEN} tokens, batch {BATCH}, no gradient checkpointing",
        "lora": "r=16, alpha=32 on Wqkv, Wo, Wi; head and classifier in modules_to_save",
        "methods": {},
    }
    for method in args.methods.split(","):
        runs = {}
        for backend in args.runs.split(","):
            runs[backend] = measure_in_child([__file__, "--run", backend, "--methods", method,
                                              "--checkpoint", args.checkpoint], f"{backend} ({method})")
        ratios = {}
        if {"unsloth", "hf"} <= set(runs):
            ratio = lambda measure: round(runs["unsloth"][measure] / runs["hf"][measure], 2)
            ratios = {"unsloth_vs_hf_tokens_per_s": ratio("tokens_per_s"), "unsloth_vs_hf_peak_mem": ratio("peak_mem_gib")}
        report["methods"][method] = {"runs": runs, **ratios}
    write_results("classifier_backends", report, markdown(report))


def markdown(report: dict) -> str:
    rows = "\n".join(
        f"| {method} | {run['device']} | {backend} | {run['trainable_params']:,} | {run['tokens_per_s']:,.0f} | "
        f"{run['peak_mem_gib']} | {run['attn_implementation']} |"
        for method, r in report["methods"].items() for backend, run in r["runs"].items()
    )
    summary = "\n".join(f"- {method}: unsloth / hf = {r['unsloth_vs_hf_tokens_per_s']}x tokens/s at "
                        f"{r['unsloth_vs_hf_peak_mem']}x peak memory"
                        for method, r in report["methods"].items() if "unsloth_vs_hf_tokens_per_s" in r)
    return (
        f"# Classifier training backends\n\n{report['model']}; {report['data']}; LoRA {report['lora']}; "
        f"{STEPS - WARMUP_STEPS} timed steps after {WARMUP_STEPS} warm-up steps. Both runs are the train stage's "
        f"code: unsloth (FastModel) and hf (transformers + PEFT).\n\n"
        f"| method | device | backend | trainable params | tokens/s | peak GiB | attention |\n"
        f"|---|---|---|---|---|---|---|\n{rows}\n\n{summary}\n"
    )


if __name__ == "__main__":
    main()
