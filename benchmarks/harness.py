"""What the GPU benchmarks share: one measurement per child process (each backend imports and patches
its own libraries), the steps after warm-up timed with CUDA synchronised, and the results written."""

import json
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def ensure_checkpoint(path, build) -> Path:
    """`path` as a Path, once it holds a checkpoint: `build(path)` writes one unless its config.json is there."""
    path = Path(path)
    if not (path / "config.json").exists():
        build(path)
    return path


def measure_in_child(args: list[str], what: str, keep_going: bool = False) -> dict | None:
    """Run `python *args`, echo the end of its output and its RESULT line whole, and return the dict it printed
    after `RESULT `. A child that prints none stops the benchmark, or with `keep_going` gives None."""
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, check=False)
    lines = out.stdout.splitlines()
    line = next((line for line in lines if line.startswith("RESULT ")), None)
    print("\n".join(x for x in lines if x is not line)[-3000:], out.stderr[-3000:], line or "", sep="\n", flush=True)
    if line is None:
        message = f"{what} failed with exit status {out.returncode}; its output is above"
        if not keep_going:
            sys.exit(message)
        print(message, flush=True)
        return None
    return json.loads(line.removeprefix("RESULT "))


def print_result(result: dict) -> None:
    """The child's side of measure_in_child."""
    print("RESULT " + json.dumps(result))


def train_timed(trainer, warmup_steps: int) -> tuple[int, float]:
    """`trainer.train()` with the peak-memory counter reset first; the input tokens (the trainer's
    `num_input_tokens_seen`) and seconds of the steps after `warmup_steps`, which must be a logging step (the
    train stage reads the token count only where it logs: training.count_tokens_on_device). It imports
    transformers when called, after the backend has loaded (Unsloth patches transformers first)."""
    import torch
    from transformers import TrainerCallback

    assert warmup_steps % trainer.args.logging_steps == 0, "the token count is read at logging steps only"

    class StepTimer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == warmup_steps:
                torch.cuda.synchronize()
                self.start, self.tokens = time.perf_counter(), state.num_input_tokens_seen

        def on_train_end(self, args, state, control, **kwargs):
            torch.cuda.synchronize()
            self.seconds = time.perf_counter() - self.start
            self.tokens = state.num_input_tokens_seen - self.tokens

    timer = StepTimer()
    trainer.add_callback(timer)
    torch.cuda.reset_peak_memory_stats()
    trainer.train()
    return timer.tokens, timer.seconds


def kernel_time(prof) -> tuple[float, int]:
    """Of a finished torch.profiler profile: the seconds in which the GPU ran at least one kernel (the union of the
    kernels' intervals), and how many kernels ran."""
    from torch.autograd import DeviceType

    kernels = sorted((e.time_range.start, e.time_range.end) for e in prof.events() if e.device_type == DeviceType.CUDA)
    busy_us, end = 0.0, -1.0
    for start, stop in kernels:
        if stop > end:
            busy_us += stop - max(start, end)
            end = stop
    return busy_us / 1e6, len(kernels)


def write_results(name: str, report: dict, markdown: str) -> None:
    """benchmarks/results/`name`.json and .md, and the report on stdout."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown)
    print(json.dumps(report, indent=2))
