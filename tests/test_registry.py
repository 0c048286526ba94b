"""The model registry: a stage of GTO is assigned only to a model that beats the one there (slothline.registry)."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.e2e


def run(project, *command, check=True) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=project, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), **__import__("os").environ})
    assert not check or done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture
def registry(tmp_path):
    """A git + DVC repository whose dvc.yaml declares the metrics file and the tuned-model artifact."""
    project = tmp_path / "project"
    (project / "metrics").mkdir(parents=True)
    (project / "dvc.yaml").write_text("metrics:\n  - metrics/eval.json\nartifacts:\n  tuned-model:\n"
                                      "    path: models/tuned\n    type: model\n")
    for command in (["git", "init", "-q"], ["git", "config", "user.email", "ci@example.com"],
                    ["git", "config", "user.name", "CI"], ["dvc", "init", "-q"]):
        run(project, *command)
    return project


def commit(project, exact_match: float, loss: float) -> None:
    (project / "metrics/eval.json").write_text(json.dumps({"tuned": {"exact_match": exact_match, "loss": loss}}))
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "-qm", f"exact match {exact_match}")


def promote(project, *options) -> subprocess.CompletedProcess:
    return run(project, sys.executable, "-m", "slothline.registry", "tuned-model", "--stage", "prod", *options,
               check=False)


def test_a_stage_goes_only_to_a_model_that_beats_the_one_there(registry):
    commit(registry, 50, 1.0)
    first = promote(registry, "--metric", "tuned.exact_match")
    assert first.returncode == 0 and "is now in prod" in first.stdout
    prod = run(registry, "git", "rev-list", "-n1", "tuned-model#prod#1").stdout.strip()
    shown = run(registry, "gto", "show", "--plain").stdout
    assert "tuned-model" in shown and "prod" in shown and "v0.0.1" in shown  # the registry lists it

    commit(registry, 40, 0.8)  # worse by exact match, better by loss
    refused = promote(registry, "--metric", "tuned.exact_match")
    assert refused.returncode == 1 and "tuned.exact_match 40.0 against 50.0 of prod" in refused.stdout
    assert "not promoted" in refused.stdout
    assert run(registry, "git", "tag", "--points-at", "HEAD").stdout == ""  # no version, no stage

    by_loss = promote(registry, "--metric", "tuned.loss", "--lower-is-better")
    assert by_loss.returncode == 0 and "tuned.loss 0.8 against 1.0 of prod" in by_loss.stdout
    tags = run(registry, "git", "tag", "--points-at", "HEAD").stdout.split()
    assert any(tag.startswith("tuned-model@v") for tag in tags) and any("#prod" in tag for tag in tags)
    assert run(registry, "git", "rev-parse", "HEAD").stdout.strip() != prod


def test_a_metric_the_file_lacks_is_a_clear_error(registry):
    commit(registry, 50, 1.0)
    done = promote(registry, "--metric", "tuned.rouge")
    assert done.returncode == 2
    assert "--metric: metrics/eval.json at HEAD has no 'tuned.rouge'; use a dotted key of it" in done.stderr
