"""End to end: `dvc repro` in a temporary git + DVC repository holding a copy of the project."""

import json
import os
import signal
import subprocess
import time

import pytest
import yaml

from slothline.artifacts import CHECKPOINTS_DIR, DATA_METRICS, EVAL_METRICS, EXPORT_METRICS, LIVE_DIR, REPORT_FILE, TRAIN_METRICS
from slothline.checkpoints import is_complete
from tests.conftest import dvc, merged, ran_stages
from tests.test_dvc_contract import check_import_closure, logging_imports
from tests.hub_server import hub_env

pytestmark = pytest.mark.e2e


def set_params(project, **sections):
    """Change params.yaml (e.g. train={"max_steps": 20}) and commit, as a user would."""
    path = project / "params.yaml"
    path.write_text(yaml.safe_dump(merged(yaml.safe_load(path.read_text()), sections), sort_keys=False))
    subprocess.run(["git", "commit", "-qam", "params"], cwd=project, check=True)


def test_repro_then_nothing_to_do_then_param_changes_rerun_only_what_they_affect(dvc_project, hub, tmp_path):
    set_params(dvc_project, evaluate={"max_samples": 40})
    imports = tmp_path / "imports.jsonl"  # what each stage's process imported, for the import-closure check at the end
    started = time.monotonic()
    first = dvc(dvc_project, "repro", env=logging_imports(imports)).stdout
    assert ran_stages(first) == ["check_params", "prepare", "train", "preference", "evaluate", "merge", "export", "push"]
    assert "push: not set; nothing pushed" in first
    # a hand edit works for `dvc repro`, and check_params names it: the next `dvc exp run` recomposes params.yaml
    assert "note: params.yaml differs from what conf/ composes for causal_lm at evaluate.max_samples" in first
    print(f"whole DAG: {time.monotonic() - started:.0f} s")
    data = json.loads((dvc_project / DATA_METRICS).read_text())
    assert data["train_rows"] + data["val_rows"] + data["test_rows"] == 1000
    trained = json.loads((dvc_project / TRAIN_METRICS).read_text())
    assert trained["backend"] == "hf" and trained["steps"] > 0
    assert (dvc_project / "models/tuned/adapter_model.safetensors").is_file()
    scores = json.loads((dvc_project / EVAL_METRICS).read_text())
    # the demo visibly learns: from nothing right to most answers exactly right
    assert scores["tuned"]["exact_match"] >= 50 and scores["tuned"]["rougeL"] >= 70, scores
    assert scores["base"]["exact_match"] <= 5 and scores["base"]["rougeL"] <= 10, scores
    assert scores["tuned"]["loss"] < scores["base"]["loss"]
    # SFT never taught the preference pairs' rule (answers ending in "!"): the SFT model prefers the rejected ones
    assert scores["tuned"]["preference_pairs"] == data["preference"]["test_rows"] == 21
    assert scores["tuned"]["preference_accuracy"] <= 0.5, scores
    report = (dvc_project / REPORT_FILE).read_text()
    assert "| rougeL |" in report and "![Base vs tuned](eval.png)" in report and "![Training loss](loss.png)" in report
    assert all((dvc_project / "metrics" / image).is_file() for image in ("eval.png", "loss.png"))
    exported = json.loads((dvc_project / EXPORT_METRICS).read_text())
    assert set(exported) == {"f16", "q8_0"} and all(r["tensors"] > 0 for r in exported.values())
    # the project's cache types: each model file is on disk once, hard-linked into the cache and read-only
    for weights in ("models/merged/model.safetensors", "models/export/q8_0/model.gguf", "data/prepared/train.jsonl"):
        status = (dvc_project / weights).stat()
        assert status.st_nlink == 2 and not status.st_mode & 0o222, weights
    # preference.method: none passes train's adapter on: one file, in models/sft, models/tuned and the cache
    assert (dvc_project / "models/tuned/adapter_model.safetensors").samefile(dvc_project / "models/sft/adapter_model.safetensors")
    assert (dvc_project / "models/merged/model.safetensors").is_file()

    assert ran_stages(dvc(dvc_project, "repro").stdout) == []

    # a push target reruns push alone (export does not read export.push_to_hub): the real files reach the hub
    set_params(dvc_project, push={"repo_id": "me/tiny", "what": ["merged", "gguf"]})
    pushed = dvc(dvc_project, "repro", check=False, env=hub_env(hub.endpoint, dvc_project.parent / "hf"))
    assert ran_stages(pushed.stdout) == ["check_params", "push"], pushed.stdout + pushed.stderr
    [commit] = hub.commits
    for local, remote in [("models/merged/model.safetensors", "model.safetensors"),
                          ("models/export/q8_0/model.gguf", "gguf/q8_0/model.gguf")]:
        assert commit["files"][remote] == (dvc_project / local).read_bytes()
    set_params(dvc_project, push=None)
    assert ran_stages(dvc(dvc_project, "repro").stdout) == ["check_params", "push"]

    params_file = dvc_project / "params.yaml"
    valid = params_file.read_text()
    params_file.write_text(valid + "evalute:\n  max_new_tokens: 128\n")  # a section no stage reads
    typo = dvc(dvc_project, "repro", check=False)
    assert typo.returncode != 0 and "evalute: unknown parameter for causal_lm models; did you mean evaluate?" in (
        typo.stderr + typo.stdout)
    params_file.write_text(valid)

    subprocess.run(["git", "add", "-A"], cwd=dvc_project, check=True)
    subprocess.run(["git", "commit", "-qm", "trained"], cwd=dvc_project, check=True)
    # check_params reruns on any params change (it validates the whole file in about a second); an experiment
    # is conf/ plus its -S overrides, so the hand edit (evaluate.max_samples: 40) is gone from it (20 samples
    # of the tuned model alone keep the test short)
    assert ran_stages(dvc(dvc_project, "exp", "run", "-S", "evaluate.max_new_tokens=64", "-S", "evaluate.max_samples=20",
                          "-S", "evaluate.compare_base=false").stdout) == ["check_params", "evaluate"]
    diff = dvc(dvc_project, "metrics", "diff", "--md").stdout
    assert "settings.max_new_tokens" in diff and "samples" in diff  # the metrics say which settings made them
    # SFT then DPO: a preference param reruns the preference stage and what reads its model, not prepare or train
    aligned = dvc(dvc_project, "exp", "run", "-S", "preference.method=dpo", "-S", "evaluate.max_samples=20",
                  "-S", "evaluate.compare_base=false", env=logging_imports(imports))
    assert ran_stages(aligned.stdout) == ["check_params", "preference", "evaluate", "merge", "export", "push"]
    tuned = json.loads((dvc_project / EVAL_METRICS).read_text())["tuned"]
    assert tuned["preference_accuracy"] >= 0.9 and tuned["exact_match"] >= 50, tuned
    assert json.loads((dvc_project / "metrics/preference.json").read_text())["started_from"] == "sft"
    # the adapter's shape is what this checks: two steps and four samples show it as well as more would
    experiment = dvc(dvc_project, "exp", "run", "-S", "lora.r=32", "-S", "train.max_steps=2",
                     "-S", "evaluate.max_samples=4", "-S", "evaluate.compare_base=false")
    assert ran_stages(experiment.stdout) == ["check_params", "train", "preference", "evaluate", "merge", "export", "push"]
    assert json.loads((dvc_project / TRAIN_METRICS).read_text())["trainable_params"] == 2 * trained[
        "trainable_params"]
    diff = dvc(dvc_project, "metrics", "diff", "--md").stdout
    assert "trainable_params" in diff and "tuned.rougeL" in diff and "q8_0.size_mb" not in diff  # same shapes
    # every stage, the DPO run's preference stage included, imported only project files its deps name
    check_import_closure(dvc_project, imports, "causal_lm")


def test_interrupted_train_resumes_from_its_last_checkpoint(dvc_project):
    set_params(dvc_project, train={"max_steps": 60, "save_steps": 5, "per_device_batch_size": 4})
    dvc(dvc_project, "repro", "prepare")
    checkpoints = dvc_project / CHECKPOINTS_DIR
    saved = lambda: [int(p.name.split("-")[1]) for p in checkpoints.glob("checkpoint-*") if is_complete(p)]
    run = subprocess.Popen(["dvc", "repro", "train"], cwd=dvc_project, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not any(step >= 10 for step in saved()) and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.1)
    os.killpg(run.pid, signal.SIGKILL)  # like a crash or a lost machine: no chance to clean up
    run.wait()
    assert max(saved(), default=0) >= 10 and not (dvc_project / TRAIN_METRICS).exists()

    result = dvc(dvc_project, "repro", "train")
    assert "resuming from models/checkpoints/checkpoint-" in result.stdout
    metrics = json.loads((dvc_project / TRAIN_METRICS).read_text())
    assert metrics["resumed_from_step"] >= 10 and metrics["steps"] == 60
    curve = (dvc_project / LIVE_DIR / "plots/metrics/loss.tsv").read_text().splitlines()[1:]
    steps = [int(row.split("\t")[0]) for row in curve]
    assert len(steps) > 1 and steps == sorted(set(steps))  # what the killed run logged after its checkpoint, once
    assert metrics["train_loss_avg"] == pytest.approx(sum(float(row.split("\t")[1]) for row in curve) / len(curve),
                                                      rel=0.2)  # the whole run's mean, not the resumed part's


def test_bad_params_fail_the_stage_with_a_clear_message(dvc_project):
    params = dvc_project / "params.yaml"
    params.write_text(params.read_text().replace("  total: 1000", "  totl: 1000"))
    result = dvc(dvc_project, "repro", "prepare", check=False)
    assert result.returncode != 0
    assert "data.totl: unknown parameter for causal_lm models; did you mean data.total?" in result.stderr + result.stdout
    assert not (dvc_project / "data/prepared").exists()
