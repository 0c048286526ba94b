"""Several training processes (`train.num_gpus`, DDP): how many the stage starts on this machine, and two
CPU processes (gloo) that train as one process does with the same global batch, write every output once
and resume after a kill. The stage is started under torchrun as on a multi-GPU host; the `gpu` tests run
the same on two GPUs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from slothline import runtime
from slothline.artifacts import CHECKPOINTS_DIR, LIVE_DIR, TRAIN_METRICS, SFT_DIR, Manifest
from slothline.checkpoints import is_complete
from slothline.errors import SlothlineError
from slothline.runtime import Capabilities, Runtime, processes_to_start
from stages import train
from tests.conftest import load, write_params

CPU = Capabilities(cuda=False)
STAGE = [sys.executable, "-m", "stages.train"]  # as DVC runs it
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "stages.train"]


def params(lora=None, **train_params):
    return load(lora=lora or {}, train=train_params)


def gpus(count: int) -> Capabilities:
    return Capabilities(cuda=True, device_name="Fake GPU", bf16=True, gpu_count=count)


def launched(processes: int) -> Capabilities:
    return Capabilities(cuda=False, launched=True, world_size=processes, local_world_size=processes)


@pytest.mark.parametrize(("num_gpus", "caps", "expected"), [
    (1, CPU, 1), ("auto", CPU, 1), ("auto", gpus(1), 1), ("auto", gpus(4), 4), (2, gpus(4), 2), (1, gpus(4), 1),
    ("auto", launched(2), 1), (2, launched(2), 1),  # a launcher started the processes already
])
def test_processes_the_stage_starts(num_gpus, caps, expected):
    assert processes_to_start(params(num_gpus=num_gpus), caps) == expected


@pytest.mark.parametrize(("num_gpus", "caps", "message"), [
    (2, CPU, "train.num_gpus: 2, but this machine has no CUDA GPU; set train.num_gpus: 1 (or auto) to train on "
             "the CPU"),
    (4, gpus(2), "train.num_gpus: 4, but this process sees 2 GPUs (CUDA_VISIBLE_DEVICES may hide some); "
                 "set train.num_gpus to at most 2, or auto"),
    (1, launched(2), "train.num_gpus: 1, but the launcher started 2 processes on this node; set train.num_gpus "
                     "to 2 or auto"),
])
def test_impossible_gpu_counts_are_clear_errors(num_gpus, caps, message):
    with pytest.raises(SlothlineError) as caught:
        processes_to_start(params(num_gpus=num_gpus), caps)
    assert str(caught.value) == message


@pytest.mark.parametrize("value", [0, -1, "all", 1.5, True])
def test_num_gpus_is_a_count_or_auto(value):
    with pytest.raises(ValueError, match="must be a number of GPUs \\(1, 2, ...\\) or auto"):
        params(num_gpus=value)


def test_resume_needs_every_process_whole_rng_state(tmp_path):
    """A kill before a process saved its RNG state, or while it did (a cut-short archive): not resumed from."""
    import torch

    from slothline.checkpoints import resume_point

    (tmp_path / "run.json").write_text(json.dumps({"fingerprint": "same"}))
    for step, ranks in ((4, [0, 1]), (8, [0]), (12, [0, 1])):  # 8: killed before process 1 saved
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
        for rank in ranks:
            torch.save({"python": rank}, tmp_path / f"checkpoint-{step}" / f"rng_state_{rank}.pth")
    cut = tmp_path / "checkpoint-12" / "rng_state_1.pth"  # 12: killed while process 1 saved
    cut.write_bytes(cut.read_bytes()[:100])
    assert resume_point(tmp_path, "same", processes=2) == str(tmp_path / "checkpoint-4")
    assert not (tmp_path / "checkpoint-8").exists() and not (tmp_path / "checkpoint-12").exists()


def ddp_trainer(find_unused=None):
    """A trainer's DDP settings as transformers makes them for a PEFT model: `find_unused` from the
    arguments, else the search."""
    from accelerate.utils import DistributedDataParallelKwargs

    handler = DistributedDataParallelKwargs(find_unused_parameters=True if find_unused is None else find_unused)
    return SimpleNamespace(args=SimpleNamespace(ddp_find_unused_parameters=find_unused),
                           accelerator=SimpleNamespace(ddp_handler=handler))


@pytest.mark.parametrize(("full", "searched"), [(False, False), (True, True)])
def test_ddp_searches_for_unused_weights_only_where_a_step_may_skip_one(full, searched):
    """LoRA on the decoder layers trains every adapter weight each step: DDP's search is skipped. Full fine-tuning
    trains the LM head and embeddings too, which a fused loss may read past autograd: transformers' default
    (search) stays."""
    import torch

    from slothline import backends
    from slothline.backends import hf
    from slothline.kinds import causal_lm
    from slothline.training import skip_unused_weight_search

    setting = params(lora={"target_modules": ["q_proj", "down_proj"]}, num_gpus=2, gradient_checkpointing=True,
                     full_finetuning=full)
    model, _ = backends.load_for_training(causal_lm, runtime.resolve(setting, CPU), setting)
    trainer = ddp_trainer()
    ddp = Runtime("hf", "cpu", "cpu", "float32", "adamw_torch", "sdpa", world_size=2)
    skip_unused_weight_search(trainer, model, hf, ddp, setting)
    assert trainer.accelerator.ddp_handler.find_unused_parameters is searched
    assert trainer.args.ddp_find_unused_parameters is (None if searched else False)

    # Unsloth's backend module (which imports unsloth, so needs CUDA), as far as this decision reads it
    unsloth = SimpleNamespace(TRAINER_CHECKPOINTING=False)
    on_unsloth = Runtime("unsloth", "cuda", "GPU", "bfloat16", "adamw_8bit", "sdpa", world_size=2)
    skip_unused_weight_search(ddp_trainer(), model, unsloth, on_unsloth, setting)  # full fine-tuning: not refused
    # LoRA on a vision tower, which a text-only batch skips: Unsloth's reentrant checkpointing breaks with the
    # search, so it is refused, with the ways out
    tower = SimpleNamespace(named_parameters=lambda: [("model.visual.blocks.0.attn.qkv.lora_A.default.weight",
                                                       torch.nn.Parameter(torch.zeros(1)))])
    lora = params(num_gpus=2, gradient_checkpointing=True)
    with pytest.raises(SlothlineError, match="set train.gradient_checkpointing: false, or train.backend: hf"):
        skip_unused_weight_search(ddp_trainer(), tower, unsloth, on_unsloth, lora)
    skip_unused_weight_search(ddp_trainer(), tower, unsloth, on_unsloth, params(num_gpus=2, gradient_checkpointing=False))
    kept = ddp_trainer(find_unused=True)  # decided in the arguments already: left alone
    skip_unused_weight_search(kept, model, hf, ddp, setting)
    assert kept.accelerator.ddp_handler.find_unused_parameters is True


ENV_PROBE = """
import json, os
names = ["RANK", "WORLD_SIZE", "NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST", "NVSHMEM_DISABLE_NVLS"]
with open(f"env_{os.environ['RANK']}.json", "w") as out:
    json.dump({name: os.environ.get(name) for name in names}, out)
raise SystemExit(int(os.environ.get("EXIT_STATUS", 0)) if os.environ["RANK"] == "1" else 0)
"""


def test_started_processes_keep_nvlink_multicast_off_and_report_a_failure(tmp_path, monkeypatch):
    (tmp_path / "env_probe.py").write_text(ENV_PROBE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("NCCL_NVLS_ENABLE", "1")  # the user's own setting wins
    for name in ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "NVSHMEM_DISABLE_NVLS"):
        monkeypatch.delenv(name, raising=False)
    assert runtime.start_processes(2, "env_probe") == 0
    seen = [json.loads((tmp_path / f"env_{rank}.json").read_text()) for rank in (0, 1)]
    assert [(env["RANK"], env["WORLD_SIZE"]) for env in seen] == [("0", "2"), ("1", "2")]
    assert all(env["NCCL_NVLS_ENABLE"] == "1" and env["TORCH_SYMM_MEM_DISABLE_MULTICAST"] == "1"
               and env["NVSHMEM_DISABLE_NVLS"] == "1" for env in seen)
    monkeypatch.setenv("EXIT_STATUS", "2")
    assert runtime.start_processes(2, "env_probe") == 2


SOURCES = [{"path": "a.jsonl", "format": "alpaca"}]


@pytest.fixture
def prepared(workdir):
    """42 train and 6 val rows prepared in the work directory (processes started there import this checkout's
    stages: the session's PYTHONPATH)."""
    from stages import prepare

    rows = [{"instruction": f"Repeat {a + b}.", "output": f"{a + b} {a + b}"} for a in "abcdefgh" for b in "xyzuvw"]
    workdir.write_jsonl("a.jsonl", rows)
    workdir.write_params(SOURCES, val_fraction=0.125)
    prepare.main()
    return workdir


def set_train(workdir, **values) -> None:
    """The prepared data's params with these `train` settings."""
    write_params(workdir.path, data={"sources": SOURCES, "total": None, "val_fraction": 0.125, "test_fraction": 0.0},
                 train={"learning_rate": 0.005, "logging_steps": 1, "warmup_steps": 5, **values})


def read_outputs(workdir) -> tuple[dict, list[tuple[int, float]]]:
    """metrics/train.json and the (step, loss) rows that dvclive logged."""
    metrics = json.loads((workdir.path / TRAIN_METRICS).read_text())
    rows = (workdir.path / LIVE_DIR / "plots/metrics/loss.tsv").read_text().splitlines()[1:]
    return metrics, [(int(step), float(loss)) for step, loss in (row.split("\t") for row in rows)]


def test_two_processes_train_like_one_with_the_same_global_batch(prepared, tiny_qwen3):
    """5 steps of 8 rows: one process of 8, then two of 4 (DDP over gloo). The two see the same rows at
    every step, so the tokens counted over both processes and each step's loss match the single run; the
    main process alone writes the outputs."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    common = dict(max_steps=5, save_steps=2, eval_steps=5)
    set_train(prepared, per_device_batch_size=8, num_gpus=1, **common)
    train.main()
    single, single_losses = read_outputs(prepared)

    set_train(prepared, per_device_batch_size=4, num_gpus=2, **common)
    assert runtime.start_processes(2, "stages.train") == 0  # what the stage starts for num_gpus: 2 on 2 GPUs
    ddp, ddp_losses = read_outputs(prepared)

    assert (single["world_size"], ddp["world_size"]) == (1, 2)
    assert single["global_batch_size"] == ddp["global_batch_size"] == 8 and ddp["steps"] == 5
    assert ddp["train_tokens"] == single["train_tokens"]  # both processes' rows, gathered
    assert [step for step, _ in ddp_losses] == [1, 2, 3, 4, 5]  # one dvclive writer, one row a step
    for (_, got), (_, expected) in zip(ddp_losses, single_losses, strict=True):
        assert got == pytest.approx(expected, rel=1e-3)
    assert ddp["val_loss"] is not None  # a mean of per-batch means: the batches differ, so the value does too
    models = prepared.path / SFT_DIR.parent
    assert sorted(p.name for p in models.iterdir()) == sorted([SFT_DIR.name, CHECKPOINTS_DIR.name])  # no staging
    assert not list((prepared.path / CHECKPOINTS_DIR).glob("checkpoint-*"))
    base = AutoModelForCausalLM.from_pretrained(tiny_qwen3)
    assert PeftModel.from_pretrained(base, prepared.path / SFT_DIR).peft_config["default"].r == 16
    assert Manifest.read(prepared.path / SFT_DIR).method == "lora"


def child_pids(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_a_killed_ddp_run_resumes_from_its_last_checkpoint(prepared):
    """torchrun started by hand (as on several nodes) with train.num_gpus: auto, killed once a checkpoint of
    both processes is complete: its processes (each in a session of its own) end with it, and the next run
    resumes."""
    set_train(prepared, max_steps=30, per_device_batch_size=2, save_steps=3, eval_steps=100, num_gpus="auto")
    checkpoints = prepared.path / CHECKPOINTS_DIR
    saved = lambda: [int(p.name.split("-")[1]) for p in checkpoints.glob("checkpoint-*") if is_complete(p, 2)]
    run = subprocess.Popen(TORCHRUN, cwd=prepared.path, start_new_session=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not saved() and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.1)
    workers = child_pids(run.pid)
    os.killpg(run.pid, signal.SIGKILL)  # torchrun, as a crash or `kill -9` of `dvc repro` would
    run.wait()
    assert len(workers) == 2 and saved()
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers), "a process outlived its torchrun"
    assert not (prepared.path / TRAIN_METRICS).exists()

    done = subprocess.run(TORCHRUN, cwd=prepared.path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count(f"resuming from {CHECKPOINTS_DIR}/checkpoint-") == 1  # said by the main process
    metrics, _ = read_outputs(prepared)
    assert metrics["resumed_from_step"] >= 3 and metrics["steps"] == 30 and metrics["world_size"] == 2


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["unsloth", "hf"])
def test_two_gpus_train_like_one(prepared, backend):
    """On a host with two GPUs: `train.num_gpus: 2` (the stage starts torchrun itself) against one GPU
    with the same global batch, through `python -m stages.train` as DVC runs it."""
    common = dict(backend=backend, max_steps=5, save_steps=2, eval_steps=5)
    results = []
    for batch, num_gpus in ((8, 1), (4, 2)):
        set_train(prepared, per_device_batch_size=batch, num_gpus=num_gpus, **common)
        done = subprocess.run(STAGE, cwd=prepared.path, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-5000:]
        results.append(read_outputs(prepared))
    (single, single_losses), (ddp, ddp_losses) = results
    assert (single["world_size"], ddp["world_size"], ddp["global_batch_size"]) == (1, 2, 8)
    assert ddp["train_tokens"] == single["train_tokens"] and ddp["backend"] == backend
    for (_, got), (_, expected) in zip(ddp_losses, single_losses, strict=True):
        assert got == pytest.approx(expected, rel=2e-2)  # bf16
