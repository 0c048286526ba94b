"""End to end: `dvc repro` in a temporary git + DVC repository holding a copy of the project."""

import json
import subprocess

import pytest

pytestmark = pytest.mark.e2e


def dvc(project, *args, check=True):
    result = subprocess.run(["dvc", *args], cwd=project, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def test_repro_prepare_then_nothing_to_do(dvc_project):
    dvc(dvc_project, "repro", "prepare")
    metrics = json.loads((dvc_project / "metrics/data.json").read_text())
    assert metrics["train_rows"] + metrics["val_rows"] + metrics["test_rows"] == 1000
    assert set(metrics["sources"]) == {"alpaca", "sharegpt", "messages", "reasoning"}
    first = (dvc_project / "data/prepared/train.jsonl").read_bytes()

    again = dvc(dvc_project, "repro", "prepare")
    assert "didn't change, skipping" in again.stdout and "Running stage" not in again.stdout
    assert (dvc_project / "data/prepared/train.jsonl").read_bytes() == first


def test_bad_params_fail_the_stage_with_a_clear_message(dvc_project):
    params = dvc_project / "params.yaml"
    params.write_text(params.read_text().replace("  total: 1000", "  totl: 1000"))
    result = dvc(dvc_project, "repro", "prepare", check=False)
    assert result.returncode != 0
    assert "data.totl: unknown parameter; did you mean data.total?" in result.stderr + result.stdout
    assert not (dvc_project / "data/prepared").exists()
