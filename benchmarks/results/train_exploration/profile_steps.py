"""Where a training step's time goes, per mode (unsloth backend, Qwen3-4B shape, the train benchmark's rows).

Runs train_backends' Slothline trainer for 12 steps in a child process per (mode, token count) and profiles
steps 9-11: wall time per step, the time the GPU runs kernels (the union of kernel intervals), kernels
launched per step, the top CUDA kernels and CPU ops. `nosync` runs the same with
include_num_input_tokens_seen off (the Trainer's per-step `.item()` on the token count; the runs of 10:29 UTC,
before the train stage stopped reading it every step), `fused` with torch's fused AdamW instead of the 8-bit
one, and `noprof` times 20 steps after 10 without the profiler (tokens/s from the trainer's count; the peak GPU
memory of training).
`syncs` lists where the profiled steps make the CPU wait for the GPU (torch's sync debug mode, with the Python
stack of each wait) and `workers` collates batches in two DataLoader workers. Two switches undo what the train
stage now does against those waits: `blocking` copies batches to the GPU with a wait (accelerate's default) and
`devicelengths` leaves concatenated rows' lengths on the GPU for Unsloth to read back itself
(backends.unsloth.prepare_trainer off). Logs: profile_steps_syncs.log (the waits before those two; its
`cpulengths` run was a first cut of the hook, which gave Unsloth only the longest row from the host, on a host
whose CPU made every mode slower), profile_steps_syncs_hooks.log (the waits left with them) and
profile_steps_host_lengths.log (with and without each, unprofiled, one H100 host). `plaingc` checkpoints
without offloading (use_gradient_checkpointing=True instead of "unsloth"): profile_steps_checkpointing.log, on a
third H100 host whose CPU slowed short steps most (the run's time limit stopped it before fixed-length:plaingc),
and profile_steps_checkpointing_memory.log, on a fourth, with the peak memory.

    python benchmarks/results/train_exploration/profile_steps.py                # every mode below
    python benchmarks/results/train_exploration/profile_steps.py --one unpacked # one, in this process
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import train_backends  # noqa: E402

RUNS = ["fixed-length", "fixed-mean", "unpacked", "fixed-mean:nosync", "unpacked:nosync"]
STEPS, FROM, TO = 12, 8, 11


def one(run: str, checkpoint: str) -> dict:
    import torch
    from harness import kernel_time
    from torch.profiler import ProfilerActivity, profile
    from transformers import TrainerCallback

    mode, *variants = run.split(":")
    if "noprof" in variants:
        return unprofiled(mode, variants, checkpoint)
    train_backends.STEPS = STEPS
    packing, row_tokens, padding_free = train_backends.MODES[mode]
    trainer, _ = train_backends.slothline_trainer("unsloth", packing, row_tokens, padding_free, checkpoint)
    if "nosync" in variants:
        trainer.args.include_num_input_tokens_seen = "no"
    if "syncs" in variants:
        return sync_census(trainer, run)
    out = {}

    class Profile(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == FROM:
                torch.cuda.synchronize()
                self.prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
                self.prof.__enter__()
                self.start = time.perf_counter()
            elif state.global_step == TO:
                torch.cuda.synchronize()
                out["window_s"] = time.perf_counter() - self.start
                self.prof.__exit__(None, None, None)

    callback = Profile()
    trainer.add_callback(callback)
    trainer.train()
    prof = callback.prof
    busy_s, kernels = kernel_time(prof)
    steps = TO - FROM
    out |= {"run": run, "steps": steps, "ms_per_step": round(out["window_s"] * 1000 / steps, 1),
            "gpu_busy_ms_per_step": round(busy_s * 1000 / steps, 1), "kernels_per_step": kernels // steps}
    print(json.dumps(out))
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=70))
    return out


def unprofiled(mode: str, variants: list[str], checkpoint: str) -> dict:
    import torch
    from harness import train_timed

    train_backends.STEPS = 30
    packing, row_tokens, padding_free = train_backends.MODES[mode]
    if "plaingc" in variants:
        checkpointing_without_offloading()
    trainer, _ = train_backends.slothline_trainer("unsloth", packing, row_tokens, padding_free, checkpoint)
    if "fused" in variants:
        trainer.args.optim = "adamw_torch_fused"
    if "workers" in variants:
        trainer.args.dataloader_num_workers = 2
    if "blocking" in variants:
        trainer.accelerator.dataloader_config.non_blocking = False
    if "devicelengths" in variants:
        trainer.__dict__.pop("_prepare_inputs", None)  # the hook backends.unsloth.prepare_trainer put there
    tokens, seconds = train_timed(trainer, 10)
    out = {"window_s": round(seconds, 2), "run": ":".join([mode, *variants]), "steps": 20,
           "ms_per_step": round(seconds * 50, 1), "tokens_per_s": round(tokens / seconds), "optim": str(trainer.args.optim),
           "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
    print(json.dumps(out))
    return out


def checkpointing_without_offloading() -> None:
    """get_peft_model with use_gradient_checkpointing=True (plain checkpointing, the saved layer inputs kept on
    the GPU) where the train stage asks for "unsloth" (the saved inputs offloaded to host memory)."""
    import unsloth

    get_peft_model = unsloth.FastLanguageModel.get_peft_model

    def instead(model, *args, use_gradient_checkpointing="unsloth", **kwargs):
        return get_peft_model(model, *args, use_gradient_checkpointing=True, **kwargs)

    unsloth.FastLanguageModel.get_peft_model = staticmethod(instead)


def sync_census(trainer, run: str) -> dict:
    """Each place that makes the CPU wait for the GPU during steps FROM..TO, by Python stack, with its count."""
    import collections
    import traceback
    import warnings

    import torch
    from transformers import TrainerCallback

    stacks = collections.Counter()
    roots = sorted((str(Path(p).resolve()) + "/" for p in sys.path if p), key=len, reverse=True)

    def where(filename: str) -> str:  # relative to the import root it came from
        return next((filename.removeprefix(root) for root in roots if filename.startswith(root)), filename)

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message):
            frames = [f for f in traceback.extract_stack()[:-1] if "/warnings.py" not in f.filename][-7:]
            stacks["\n".join(f"    {where(f.filename)}:{f.lineno} {f.name}: {(f.line or '').strip()[:90]}"
                              for f in frames)] += 1

    class Census(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == FROM:
                warnings.simplefilter("always")
                warnings.showwarning = record
                torch.cuda.set_sync_debug_mode("warn")
            elif state.global_step == TO:
                torch.cuda.set_sync_debug_mode("default")

    trainer.add_callback(Census())
    trainer.train()
    steps = TO - FROM
    for stack, count in stacks.most_common():
        print(f"{count / steps:g} per step:\n{stack}")
    out = {"window_s": 0, "run": run, "steps": steps, "syncs_per_step": sum(stacks.values()) / steps,
           "places": len(stacks)}
    print(json.dumps(out))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--one")
    parser.add_argument("--runs", default=",".join(RUNS))
    parser.add_argument("--checkpoint", default="/tmp/qwen3-4b-shape")
    args = parser.parse_args()
    if args.one:
        one(args.one, args.checkpoint)
        return
    if not Path(args.checkpoint, "config.json").exists():
        train_backends.build_checkpoint(Path(args.checkpoint))
    summary = []
    for run in args.runs.split(","):
        done = subprocess.run([sys.executable, __file__, "--one", run, "--checkpoint", args.checkpoint],
                              capture_output=True, text=True)
        lines = done.stdout.splitlines()
        print(f"===== {run} (exit {done.returncode})", *[l for l in lines if "it/s]" not in l and "s/it]" not in l],
              done.stderr[-1500:] if done.returncode else "", sep="\n", flush=True)
        summary += [json.loads(l) for l in lines if l.startswith('{"window_s"')]
    print("SUMMARY", *[json.dumps(s) for s in summary], sep="\n")


if __name__ == "__main__":
    main()
