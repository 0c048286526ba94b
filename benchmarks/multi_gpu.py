"""Training on one GPU and on two (`train.num_gpus: 2`, DDP), per backend, at the same global batch.

Builds the randomly initialised Qwen3-4B-shape checkpoint of benchmarks/train_backends.py (a random
model trains exactly as fast as the real one) and the same variable-length chats (64..2048 tokens),
then runs the train stage itself, `python -m stages.train`, in a scratch project per run: with
`train.num_gpus: 2` the stage starts torchrun, one process per GPU, as `dvc exp run -S
train.num_gpus=2` would. Every run trains GLOBAL_BATCH rows a step (8 on one GPU, 4 on each of two),
bf16, LoRA r=16 on all 7 projections, gradient checkpointing, response-only labels.

Reported from each run's own outputs: global non-padding tokens/s over the steps after warm-up (the
Trainer counts tokens on every process; dvclive logs them and the elapsed time at every step), the
stage's whole-run `train_tokens_per_s`, and `peak_mem_gib` (the largest peak of any GPU). Writes
benchmarks/results/multi_gpu.{json,md}. NVLink multicast stays off (NCCL_NVLS_ENABLE=0, ...).
Needs a host with two CUDA GPUs and the [gpu] extra. Four runs of 30 steps plus the checkpoint build
should take 5 to 8 minutes on two H100/H200s (an estimate from train_backends' timings; not yet run);
where one command may run only 10 minutes, run `--backends unsloth` and `--backends hf` apart.

    python benchmarks/multi_gpu.py                          # unsloth and hf, on 1 and 2 GPUs
    python benchmarks/multi_gpu.py --backends hf --gpus 2   # some runs, added to those measured

One real DVC experiment of the tiny default on two GPUs, from a checkout on the same host:

    dvc exp run -S train.num_gpus=2 && cat metrics/train.json    # world_size 2, global_batch_size 32
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import RESULTS, ensure_checkpoint, write_results
from train_backends import MAX_LEN, build_checkpoint, chat_rows  # the same chats as the single-GPU benchmark

ROOT = Path(__file__).resolve().parents[1]
STEPS, WARMUP_STEPS, GLOBAL_BATCH = 30, 5, 8
BACKENDS, GPU_COUNTS = ("unsloth", "hf"), (1, 2)
NVLINK_MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def scratch_project(directory: Path, checkpoint: str, backend: str, gpus: int) -> None:
    """params.yaml and data/prepared/ of a project whose train stage runs this benchmark's workload."""
    from transformers import AutoTokenizer

    params = {
        "kind": "causal_lm",
        "model": {"name": checkpoint, "max_seq_length": MAX_LEN},
        "data": {"sources": [{"path": "unused.jsonl", "format": "messages"}]},  # prepare does not run
        "train": {"backend": backend, "num_gpus": gpus, "max_steps": STEPS, "per_device_batch_size": GLOBAL_BATCH // gpus,
                  "learning_rate": 2e-4, "warmup_steps": WARMUP_STEPS, "gradient_checkpointing": True,
                  "logging_steps": 1, "save_steps": 10_000},
    }
    (directory / "params.yaml").write_text(json.dumps(params))  # JSON is YAML
    rows = chat_rows(AutoTokenizer.from_pretrained(checkpoint), fixed_length=False)
    prepared = directory / "data/prepared"
    prepared.mkdir(parents=True)
    (prepared / "train.jsonl").write_text("".join(json.dumps({"id": i, **row}) + "\n" for i, row in enumerate(rows)))
    (prepared / "val.jsonl").write_text("")


def logged(directory: Path, name: str) -> dict[int, float]:
    """A dvclive series of the run: step -> the first value logged at that step."""
    series = {}
    for line in (directory / "dvclive/train/plots/metrics" / f"{name}.tsv").read_text().splitlines()[1:]:
        step, value = line.split("\t")[-2:]
        series.setdefault(int(step), float(value))
    return series


def run_one(checkpoint: str, backend: str, gpus: int) -> dict:
    """The train stage in a scratch project; its metrics and its tokens/s after warm-up."""
    with tempfile.TemporaryDirectory(prefix=f"multi-gpu-{backend}-{gpus}-") as scratch:
        directory = Path(scratch)
        scratch_project(directory, checkpoint, backend, gpus)
        env = {**NVLINK_MULTICAST_OFF, **os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        done = subprocess.run([sys.executable, "-m", "stages.train"], cwd=directory, env=env, capture_output=True, text=True)
        print(done.stdout[-2000:], done.stderr[-4000:], sep="\n")
        if done.returncode != 0:
            sys.exit(f"{backend} on {gpus} GPU(s) failed with exit status {done.returncode}; its output is above")
        metrics = json.loads((directory / "metrics/train.json").read_text())
        tokens, elapsed = logged(directory, "num_input_tokens_seen"), logged(directory, "train/runtime")
    last = max(tokens)
    timed_tokens = tokens[last] - tokens[WARMUP_STEPS]
    timed_seconds = elapsed[last] - elapsed[WARMUP_STEPS]
    return {
        "backend": metrics["backend"],
        "gpus": metrics["world_size"],
        "device": metrics["device"],
        "per_gpu_batch": GLOBAL_BATCH // gpus,
        "global_batch_size": metrics["global_batch_size"],
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "timed_steps": last - WARMUP_STEPS,
        "non_padding_tokens": int(timed_tokens),
        "seconds": round(timed_seconds, 2),
        "tokens_per_s": round(timed_tokens / timed_seconds, 1),
        "whole_run_tokens_per_s": metrics["train_tokens_per_s"],
        "peak_mem_gib_per_gpu": metrics["peak_mem_gib"],
        "train_loss": metrics["train_loss"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated: " + ", ".join(BACKENDS))
    parser.add_argument("--gpus", default=",".join(map(str, GPU_COUNTS)), help="comma-separated GPU counts: 1, 2")
    parser.add_argument("--checkpoint", default="/tmp/qwen3-4b-shape")
    args = parser.parse_args()
    for name, value in NVLINK_MULTICAST_OFF.items():
        os.environ.setdefault(name, value)
    import torch

    if torch.cuda.device_count() < max(int(g) for g in args.gpus.split(",")):
        sys.exit(f"this benchmark needs {args.gpus.split(',')[-1]} CUDA GPUs; this host has {torch.cuda.device_count()}")
    ensure_checkpoint(args.checkpoint, build_checkpoint)
    results_file = RESULTS / "multi_gpu.json"
    report = {
        "model": "Qwen3-4B shape, random weights, bf16, LoRA r=16 on all 7 projections",
        "data": f"the chats of train_backends.py (64..{MAX_LEN} tokens, padded batches), global batch {GLOBAL_BATCH}, "
                "response-only labels, gradient checkpointing",
        "runs": json.loads(results_file.read_text())["runs"] if results_file.is_file() else {},
    }
    for backend in args.backends.split(","):
        for gpus in args.gpus.split(","):
            report["runs"].setdefault(backend, {})[gpus] = run_one(args.checkpoint, backend, int(gpus))
            report["runs"][backend] = dict(sorted(report["runs"][backend].items()))
    for runs in report["runs"].values():
        if "1" in runs and "2" in runs:
            runs["2"]["speedup_vs_1_gpu"] = round(runs["2"]["tokens_per_s"] / runs["1"]["tokens_per_s"], 2)
    write_results("multi_gpu", report, markdown(report))


def markdown(report: dict) -> str:
    rows = "\n".join(
        f"| {backend} | {gpus} | {run['device']} | {run['per_gpu_batch']} x {gpus} = {run['global_batch_size']} | "
        f"{run['tokens_per_s']:,.0f} | {run.get('speedup_vs_1_gpu', '')} | {run['whole_run_tokens_per_s']:,.0f} | "
        f"{run['peak_mem_gib_per_gpu']} |"
        for backend, runs in report["runs"].items() for gpus, run in runs.items()
    )
    return (
        f"# One GPU and two (DDP)\n\n{report['model']}; {report['data']}; {STEPS - WARMUP_STEPS} timed steps after "
        f"{WARMUP_STEPS} warm-up steps, through `python -m stages.train` (`train.num_gpus`). Tokens/s: non-padding "
        "tokens of all GPUs together; whole run: the stage's `train_tokens_per_s`, warm-up included; peak GiB: the "
        "largest of the GPUs' peaks.\n\n"
        "| backend | GPUs | device | batch (per GPU x GPUs) | tokens/s after warm-up | speedup | whole-run tokens/s | "
        f"peak GiB per GPU |\n|---|---|---|---|---|---|---|---|\n{rows}\n"
    )


if __name__ == "__main__":
    main()
