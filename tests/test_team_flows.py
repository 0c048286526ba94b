"""End to end, the team's flows on a temporary git + DVC copy of the project: a second clone restores every stage
from the DVC remote, a sweep queues experiments and side-by-side runs keep their GPU. (Apart from test_pipeline.py
so that the two files run on different test workers.)"""

import json
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import dvc, ran_stages
from tests.test_pipeline import set_params

pytestmark = pytest.mark.e2e


def git(project, *args) -> str:
    return subprocess.run(["git", *args], cwd=project, check=True, capture_output=True, text=True).stdout


def test_a_second_clone_gets_the_models_from_the_remote_without_training(dvc_project, tmp_path):
    """The team flow: one clone trains, commits and pushes to the DVC remote (with the run cache); another
    clone restores every stage's outputs from it, the tuned model and the GGUF files included, and trains
    nothing; promoted to prod in the registry, the tuned model downloads by name and stage."""
    remote = tmp_path / "remote"
    dvc(dvc_project, "remote", "add", "--default", "storage", str(remote))
    set_params(dvc_project, data={"total": 200}, train={"max_steps": 4, "eval_steps": 2},
               evaluate={"max_samples": 8, "max_new_tokens": 8})
    assert "train" in ran_stages(dvc(dvc_project, "repro").stdout)
    git(dvc_project, "add", "-A")
    git(dvc_project, "commit", "-qm", "trained")
    dvc(dvc_project, "push", "--run-cache")
    # the pull-request comment of this change (new params, a trained model) against the project's first commit
    comment = subprocess.run([sys.executable, "-m", "slothline.comment", "--base", "HEAD~2"], cwd=dvc_project,
                             capture_output=True, text=True)
    assert comment.returncode == 0, comment.stderr
    rows = [" ".join(line.split()) for line in comment.stdout.splitlines()]
    assert any(row.startswith("| metrics/eval.json | tuned.exact_match |") for row in rows), comment.stdout
    assert "| params.yaml | train.max_steps | -1 | 4 |" in rows, comment.stdout
    assert "![Base vs tuned](metrics/eval.png)" in rows  # (the first commit has no samples to compare answers with)

    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(dvc_project), str(clone))
    restored = dvc(clone, "repro", "--pull").stdout
    assert ran_stages(restored) == [], restored  # every stage restored, none run
    for path in ("models/tuned/adapter_model.safetensors", "models/merged/model.safetensors",
                 "models/export/q8_0/model.gguf", "data/prepared/train.jsonl"):
        assert (clone / path).read_bytes() == (dvc_project / path).read_bytes(), path
    assert dvc(clone, "status").stdout.strip() == "Data and pipelines are up to date."

    promoted = subprocess.run([sys.executable, "-m", "slothline.registry", "tuned-model", "--stage", "prod",
                               "--metric", "tuned.exact_match"], cwd=dvc_project, capture_output=True, text=True)
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    dvc(tmp_path, "artifacts", "get", str(dvc_project), "tuned-model", "--stage", "prod", "-o", str(tmp_path / "got"))
    assert (tmp_path / "got" / "adapter_model.safetensors").read_bytes() == \
        (dvc_project / "models/tuned/adapter_model.safetensors").read_bytes()


def test_a_sweep_queues_one_experiment_per_value_and_side_by_side_runs_each_keep_their_gpu(dvc_project):
    """README's experiments: `dvc exp run --queue -S lora.r=8,16,32` queues three runs (for `dvc queue start`);
    two `dvc exp run --temp` started side by side, each with its own CUDA_VISIBLE_DEVICES (the way to pin a
    GPU per run: queue workers take no per-run environment), both finish and `dvc exp show` lists them."""
    dvc(dvc_project, "exp", "run", "--queue", "-S", "lora.r=8,16,32")
    status = dvc(dvc_project, "queue", "status").stdout
    assert status.count("Queued") == 3, status
    dvc(dvc_project, "queue", "remove", "--queued")
    started = time.monotonic()  # up to train: the stage a GPU is pinned for
    runs = [subprocess.Popen(["dvc", "exp", "run", "--temp", "-n", f"gpu{gpu}", "-S", f"lora.r={8 * (gpu + 1)}",
                              "-S", "train.max_steps=2", "train"],
                             cwd=dvc_project, env={**os.environ, "CUDA_VISIBLE_DEVICES": str(gpu)},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for gpu in (0, 1)]
    outputs = [run.communicate()[0] for run in runs]
    print(f"two side-by-side runs: {time.monotonic() - started:.0f} s")
    assert all(run.returncode == 0 for run in runs), outputs
    shown = json.loads(dvc(dvc_project, "exp", "show", "--json").stdout)
    ranks = {exp["name"]: exp["data"]["params"]["params.yaml"]["data"]["lora"]["r"]
             for baseline in shown for exp in baseline.get("experiments") or [] for exp in exp["revs"]}
    assert ranks == {"gpu0": 8, "gpu1": 16}
