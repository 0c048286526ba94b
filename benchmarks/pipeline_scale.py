"""The whole DAG at real size: `dvc repro` of every stage on a random Qwen3-4B-shape checkpoint, measured.

In a scratch copy of this checkout (git + DVC, the project's .dvc/config and its cache types), with params
for a short run at the checkpoint's size (a few hundred rows, a few dozen steps, f16 + q8_0 GGUF export),
one `dvc repro` runs the DAG as a user does, each stage's command wrapped by benchmarks/stage_probe.py. Per
stage: wall time of the stage command, peak host RSS (and the anonymous part of it), peak GPU memory, bytes
written; DVC's own time after it (its command's end to the next command's start: hashing and committing its
outs); and once DVC committed it, the disk the outs take and the disk outs and DVC cache take together (hard
links counted once). DVC's own time in all is `dvc repro`'s wall time minus the stage commands; against it, how
long md5 (DVC's hash) of all the outs takes on one core of the host. Then a no-op `dvc repro`. `--export-8b` adds the export
alone on a Qwen3-8B-shape checkpoint (f16 and q8_0): its peak host RSS against its largest tensor.
Writes benchmarks/results/pipeline_scale.{json,md}.

    python benchmarks/pipeline_scale.py                    # on a CUDA host: Qwen3-4B shape
    python benchmarks/pipeline_scale.py --export-8b        # and the export alone at Qwen3-8B shape
    python benchmarks/pipeline_scale.py --export-8b --no-dag   # the export alone, added to the DAG's results
    python benchmarks/pipeline_scale.py --checkpoint builtin:tiny-qwen3 --steps 4   # a smoke test, any machine
"""

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from harness import RESULTS, ensure_checkpoint, write_results

ROOT = Path(__file__).resolve().parent.parent
OUTS = ("data/prepared", "models", "metrics", "dvclive")
QWEN3_8B_SHAPE = dict(hidden_size=4096, num_hidden_layers=36, intermediate_size=12288, num_attention_heads=32,
                      num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=False,
                      max_position_embeddings=40960, rope_theta=1000000.0)


def scratch_project(checkpoint: str, steps: int) -> Path:
    """A git + DVC copy of this checkout's tracked files with params for a short real-size run, and every stage
    command wrapped by stage_probe.py."""
    where = Path(tempfile.mkdtemp(prefix="slothline-scale-", dir=os.environ.get("SCALE_DIR")))
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (where / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, where / name)
    shutil.copy2(Path(__file__).parent / "stage_probe.py", where / "benchmarks" / "stage_probe.py")
    for name in ("dvc.lock", "metrics", "dvclive"):  # a first run: nothing of the committed run
        path = where / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    pipeline = (where / "dvc.yaml").read_text()
    (where / "dvc.yaml").write_text(pipeline.replace("cmd: python -m stages.", "cmd: python benchmarks/stage_probe.py stages."))
    params = yaml.safe_load((where / "params.yaml").read_text())
    params["model"].update(name=checkpoint, max_seq_length=1024)
    params["data"]["total"] = 400
    params["train"].update(epochs=1, max_steps=steps, per_device_batch_size=4, save_steps=max(steps // 3, 1),
                           eval_steps=max(steps // 3, 1), learning_rate=2e-4)
    params["evaluate"].update(max_samples=32, max_new_tokens=64)
    params["export"].update(formats=["gguf"], gguf_quantization=["f16", "q8_0"])
    (where / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for command in (["git", "init", "-q"], ["git", "add", "-A"],
                    ["git", "-c", "user.name=scale", "-c", "user.email=scale@localhost", "commit", "-qm", "scale"]):
        subprocess.run(command, cwd=where, check=True)
    return where


def disk_kib(project: Path, *paths: str) -> int:
    """KiB on disk of `paths` together: a file hard-linked in several of them counts once."""
    present = [p for p in paths if (project / p).exists()]
    if not present:
        return 0
    done = subprocess.run(["du", "-skc", *present], cwd=project, capture_output=True, text=True, check=True)
    return int(done.stdout.splitlines()[-1].split()[0])


def dvc(project: Path, *args: str) -> float:
    """Run `dvc *args` in the project; its wall time in seconds."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"dvc {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def probe_records(probes: Path) -> list[dict]:
    """The lines stage_probe.py wrote so far: a stage's {"stage", "started_at"} as it starts, its record as it ends."""
    return [json.loads(line) for line in probes.read_text().splitlines()] if probes.exists() else []


def committed_disk(project: Path) -> tuple[int, int]:
    """KiB the outs take, and the outs and DVC cache together."""
    return disk_kib(project, *OUTS), disk_kib(project, *OUTS, ".dvc/cache")


def watch(project: Path, probes: Path, disk: dict, stop: threading.Event, progress) -> None:
    """While `dvc repro` runs: when a stage's command starts, DVC has committed the stage before it, so record
    disk[that stage] = committed_disk(); as stages end, progress(their records)."""
    reported = 0
    while not stop.wait(0.2):
        records = probe_records(probes)
        started = [r["stage"] for r in records if "seconds" not in r]
        for before in started[:-1]:
            if before not in disk:
                disk[before] = committed_disk(project)
        ended = [r for r in records if "seconds" in r]
        if len(ended) > reported:
            reported = len(ended)
            progress(ended)


def run_dag(checkpoint: str, steps: int, progress) -> dict:
    """The DAG as a user runs it, one `dvc repro`; `progress(partial)` is called as stages end, so a run cut short
    keeps what it measured. DVC's own time after a stage is the gap between its command's end and the next
    command's start (or the end of `dvc repro`): hashing and committing its outs, then checking the next stage."""
    project = scratch_project(checkpoint, steps)
    probes = project / "stage_probe.jsonl"
    os.environ["STAGE_PROBE_LOG"] = str(probes)
    disk, stop = {}, threading.Event()
    partial = lambda ended: progress({"checkpoint": checkpoint, "train_steps": steps, "incomplete": True,
                                      "stages": stage_table(ended, disk, None)})
    watcher = threading.Thread(target=watch, args=(project, probes, disk, stop, partial), daemon=True)
    watcher.start()
    started_at = time.time()
    total = dvc(project, "repro")  # a failing stage fails it, with DVC's output
    ended_at = time.time()
    stop.set()
    watcher.join()
    records = [r for r in probe_records(probes) if "seconds" in r]
    disk[records[-1]["stage"]] = committed_disk(project)
    stages = stage_table(records, disk, ended_at)
    noop = dvc(project, "repro")
    own = total - sum(r["seconds"] for r in records)
    last = stages[records[-1]["stage"]]
    cache_type = subprocess.run([sys.executable, "-m", "dvc", "config", "cache.type"], cwd=project,
                                capture_output=True, text=True).stdout.strip()
    md5_s_per_gib = md5_seconds_per_gib(max((f for f in (project / "models").rglob("*") if f.is_file()),
                                            key=lambda f: f.stat().st_size))
    result = {"checkpoint": checkpoint, "train_steps": steps, "cache_type": cache_type, "stages": stages,
              "dag_s": round(total, 1), "dvc_start_s": round(records[0]["started_at"] - started_at, 2),
              "dvc_own_s": round(own, 1), "dvc_own_fraction": round(own / total, 3), "noop_repro_s": round(noop, 2),
              "md5_s_per_gib": round(md5_s_per_gib, 2), "md5_floor_s": round(md5_s_per_gib * last["outs_gib"], 1),
              "disk_outs_and_cache_over_outs": round(last["outs_and_cache_gib"] / max(last["outs_gib"], 1e-9), 3),
              "eval": json.loads((project / "metrics/eval.json").read_text()).get("settings"),
              "export": json.loads((project / "metrics/export.json").read_text())}
    shutil.rmtree(project)
    return result


def md5_seconds_per_gib(path: Path) -> float:
    """Seconds per GiB that md5 takes on one core of this host (hashlib over 1 MiB reads, as DVC hashes outs), on
    a file just written (in page cache, as DVC finds its outs)."""
    digest, start = hashlib.md5(), time.perf_counter()
    with open(path, "rb") as f:
        while chunk := f.read(2**20):
            digest.update(chunk)
    return (time.perf_counter() - start) / (path.stat().st_size / 2**30)


def stage_table(records: list[dict], disk: dict, ended_at: float | None) -> dict:
    """Per stage: its probe record, DVC's own seconds after it, and the disk after DVC committed it (where known)."""
    stages = {}
    for record, after in zip(records, [*(r["started_at"] for r in records[1:]), ended_at]):
        outs, with_cache = disk.get(record["stage"], (None, None))
        stages[record["stage"]] = {
            **{k: v for k, v in record.items() if k not in ("stage", "started_at", "ended_at")},
            "dvc_own_s": None if after is None else round(after - record["ended_at"], 2),
            "outs_gib": None if outs is None else round(outs / 2**20, 3),
            "outs_and_cache_gib": None if with_cache is None else round(with_cache / 2**20, 3)}
    return stages


def export_alone(checkpoint_dir: Path) -> dict:
    """The GGUF writer alone on a checkpoint (each quantization in a fresh process): peak host RSS and time."""
    from safetensors import safe_open

    largest = 0
    for shard in checkpoint_dir.glob("*.safetensors"):
        with safe_open(shard, "pt") as f:
            largest = max([largest, *(2 * math.prod(f.get_slice(n).get_shape()) for n in f.keys())])
    # peak RSS as VmHWM: getrusage's ru_maxrss of a started process includes its parent's RSS (Linux carries it
    # over the exec), here the 8B checkpoint this process built
    code = ("import json, sys, time; from pathlib import Path; from slothline.export.gguf import write_gguf;"
            "from benchmarks.stage_probe import status_kib;"
            "start = time.perf_counter(); write_gguf(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]);"
            "print(json.dumps({'seconds': round(time.perf_counter() - start, 1),"
            " 'peak_rss_gib': round(status_kib('VmHWM') / 2**20, 2)}))")
    runs = {}
    for quantization in ("f16", "q8_0"):
        out = checkpoint_dir.parent / f"export-{quantization}.gguf"
        done = subprocess.run([sys.executable, "-c", code, str(checkpoint_dir), str(out), quantization], cwd=ROOT,
                              capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"export {quantization} failed:\n{done.stderr[-3000:]}")
        runs[quantization] = {**json.loads(done.stdout.splitlines()[-1]), "gguf_gib": round(out.stat().st_size / 2**30, 2)}
        out.unlink()
    checkpoint = sum(f.stat().st_size for f in checkpoint_dir.glob("*.safetensors"))
    return {"checkpoint_gib": round(checkpoint / 2**30, 2), "largest_tensor_gib": round(largest / 2**30, 3),
            "target_gib": round(1.5 + 3 * largest / 2**30, 2), "runs": runs}


def build_8b(out_dir: Path, shape: dict = QWEN3_8B_SHAPE) -> None:
    """A random Qwen3-8B-shape checkpoint in bf16, in 5 GB shards as save_pretrained names them, with the
    builtin tokenizer. Written tensor by tensor on the CPU (a shard in memory at a time, not the model), so it
    builds on a host with less memory than the model and leaves the GPU to whatever runs beside it."""
    import torch
    from safetensors.torch import save_file
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from slothline.builtin import build_byte_tokenizer

    tokenizer = build_byte_tokenizer()
    config = Qwen3Config(**shape, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         dtype="bfloat16")
    with torch.device("meta"):
        shapes = {name: tensor.shape for name, tensor in Qwen3ForCausalLM(config).state_dict().items()}
    shards, shard, size = [], {}, 0
    for name, tensor_shape in shapes.items():
        if shard and size + 2 * math.prod(tensor_shape) > 5e9:
            shards.append(shard)
            shard, size = {}, 0
        shard[name], size = tensor_shape, size + 2 * math.prod(tensor_shape)
    shards.append(shard)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    weight_map = {}
    for index, names in enumerate(shards, 1):
        file = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        save_file({name: (torch.randn(names[name]) * 0.02).to(torch.bfloat16) for name in names}, out_dir / file,
                  metadata={"format": "pt"})
        weight_map |= dict.fromkeys(names, file)
    total = sum(2 * math.prod(tensor_shape) for tensor_shape in shapes.values())
    (out_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                      "weight_map": weight_map}, indent=2))
    config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def markdown(report: dict) -> str:
    if "dag" not in report:
        return export_markdown(report)
    dag = report["dag"]
    table = ("| stage | command s | DVC's own s after it | peak RSS GiB | of it anonymous GiB | peak GPU GiB | written GiB | outs GiB | "
             "outs + cache GiB |\n|---|---|---|---|---|---|---|---|---|\n"
             + "\n".join(f"| {name} | {s['seconds']} | {s['dvc_own_s']} | {s['peak_rss_gib']} | "
                         f"{s.get('peak_anon_rss_gib', 'not measured')} | {s['peak_gpu_gib']} | "
                         f"{s['written_gib']} | {s['outs_gib']} | {s['outs_and_cache_gib']} |"
                         for name, s in dag["stages"].items()))
    if dag.get("incomplete"):
        return (f"# The DAG at real size (cut short after {list(dag['stages'])[-1]})\n\n{dag['checkpoint']}, "
                f"{dag['train_steps']} train steps, on {report['device']}.\n\n{table}\n" + export_markdown(report))
    text = (f"# The DAG at real size\n\n{dag['checkpoint']}, {dag['train_steps']} train steps, cache.type "
            f"{dag['cache_type']}, on {report['device']}.\n\n{table}\n\n"
            f"- DAG {dag['dag_s']} s (one `dvc repro`), of which DVC's own {dag['dvc_own_s']} s "
            f"({dag['dvc_own_fraction']:.1%}; {dag['dvc_start_s']} s of it before the first stage)\n"
            f"- md5 of every out byte on one core of this host ({dag['md5_s_per_gib']} s/GiB): "
            f"{dag['md5_floor_s']} s (DVC hashes several files of an out at once, one file on one core)\n"
            f"- no-op `dvc repro`: {dag['noop_repro_s']} s\n"
            f"- outs + DVC cache over outs: {dag['disk_outs_and_cache_over_outs']}\n")
    return text + export_markdown(report)


def export_markdown(report: dict) -> str:
    text = ""
    if "export_8b" in report:
        e = report["export_8b"]
        text += (f"\n## Export alone, Qwen3-8B shape ({e['checkpoint_gib']} GiB, largest tensor "
                 f"{e['largest_tensor_gib']} GiB; target peak {e['target_gib']} GiB), on {e['device']}\n\n"
                 + "\n".join(f"- {q}: {r['seconds']} s, peak RSS {r['peak_rss_gib']} GiB, file {r['gguf_gib']} GiB"
                             for q, r in e["runs"].items()) + "\n")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="/tmp/qwen3-4b-shape")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--export-8b", action="store_true")
    parser.add_argument("--no-dag", action="store_true", help="skip the DAG (keeps its earlier result)")
    args = parser.parse_args()
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    earlier = RESULTS / "pipeline_scale.json"
    report = json.loads(earlier.read_text()) if earlier.is_file() else {}  # each part replaces its own result
    measured = {"device": device, "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if not args.no_dag:
        if not args.checkpoint.startswith("builtin:"):
            from train_backends import build_checkpoint

            ensure_checkpoint(args.checkpoint, build_checkpoint)
        partial = lambda dag: write_results("pipeline_scale", report | {"device": device, "dag": {**measured, **dag}},
                                            markdown(report | {"device": device, "dag": dag}))
        report |= {"device": device, "dag": {**measured, **run_dag(args.checkpoint, args.steps, partial)}}
        write_results("pipeline_scale", report, markdown(report))
    if args.export_8b:
        checkpoint = Path("/tmp/qwen3-8b-shape")
        if not (checkpoint / "config.json").exists():
            build_8b(checkpoint)
        report["export_8b"] = {**measured, **export_alone(checkpoint)}
        write_results("pipeline_scale", report, markdown(report))


if __name__ == "__main__":
    main()
