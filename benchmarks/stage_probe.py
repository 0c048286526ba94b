"""Run one stage module as DVC would (`python -m stages.<name>`) and record what it cost: wall time (and when it
started and ended), peak host RSS, peak GPU memory and the bytes the process wrote, appended as JSON lines to
$STAGE_PROBE_LOG: {"stage", "started_at"} as it starts, the whole record as it ends.

Peak RSS counts the pages of memory-mapped files the process touched (safetensors checkpoints are read, and
Unsloth's merge writes its shards, through mmap): page cache the kernel can reclaim. Peak anonymous RSS,
sampled every 0.1 s, is the memory the process itself holds.

    python benchmarks/stage_probe.py stages.train      # what benchmarks/pipeline_scale.py puts in dvc.yaml
"""

import json
import os
import runpy
import sys
import threading
import time


def written_bytes() -> int:
    """Bytes this process has caused to be written to storage so far (/proc/self/io)."""
    with open("/proc/self/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("write_bytes"))


def status_kib(field: str) -> int:
    """A memory field of /proc/self/status, in KiB (VmHWM: peak RSS of this process alone, where getrusage's
    ru_maxrss also counts the RSS of the parent that started it)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def sample_peak(read, peak: list[int], interval: float = 0.1) -> None:
    """Keep peak[0] at the largest value read() returned, in a daemon thread."""
    def loop():
        while True:
            peak[0] = max(peak[0], read())
            time.sleep(interval)

    threading.Thread(target=loop, daemon=True).start()


def main() -> None:
    module = sys.argv[1]
    sys.argv = [module]
    sys.path.insert(0, os.getcwd())
    started_at = time.time()
    log_line({"stage": module.removeprefix("stages."), "started_at": started_at})
    start, written = time.perf_counter(), written_bytes()
    status, anonymous = 0, [0]
    sample_peak(lambda: status_kib("RssAnon"), anonymous)
    try:
        runpy.run_module(module, run_name="__main__")
    except SystemExit as exit_:
        status = exit_.code or 0
    gpu = None
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            gpu = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    record = {"stage": module.removeprefix("stages."), "seconds": round(time.perf_counter() - start, 2),
              "started_at": started_at, "ended_at": time.time(),
              "peak_rss_gib": round(status_kib("VmHWM") / 2**20, 2),
              "peak_anon_rss_gib": round(max(anonymous[0], status_kib("RssAnon")) / 2**20, 2), "peak_gpu_gib": gpu,
              "written_gib": round((written_bytes() - written) / 2**30, 3), "status": status}
    log_line(record)
    sys.exit(status)


def log_line(record: dict) -> None:
    with open(os.environ["STAGE_PROBE_LOG"], "a") as log:
        log.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
