"""The pull-request comment (slothline.comment): metric and param diffs against a base revision, charts, and
answers side by side."""

import json
import re
import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT

pytestmark = pytest.mark.e2e


def run(project, *command) -> str:
    done = subprocess.run(command, cwd=project, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), **__import__("os").environ})
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def commit(project, rank: int, exact_match: float, answers: list[str]) -> None:
    """One run's params, metrics and samples, committed."""
    (project / "params.yaml").write_text(yaml.safe_dump({"lora": {"r": rank, "alpha": 16}}))
    (project / "metrics/eval.json").write_text(json.dumps({"tuned": {"exact_match": exact_match, "loss": 0.5}}))
    (project / "metrics/samples.json").write_text(json.dumps([
        {"id": f"q{i}", "prompt": f"Question {i}?", "reference": f"Answer {i}.", "tuned": answer}
        for i, answer in enumerate(answers)]))
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "-qm", f"r={rank}")


def test_the_comment_shows_what_changed_against_the_base(tmp_path):
    project = tmp_path / "project"
    (project / "metrics").mkdir(parents=True)
    (project / "dvc.yaml").write_text(yaml.safe_dump({
        "stages": {"train": {"cmd": "true", "params": ["lora"], "metrics": [{"metrics/eval.json": {"cache": False}}]}}}))
    for command in (["git", "init", "-q"], ["git", "config", "user.email", "ci@example.com"],
                    ["git", "config", "user.name", "CI"], ["dvc", "init", "-q"]):
        run(project, *command)
    commit(project, 16, 50.0, ["Answer 0.", "Wrong.", "Answer 2."])
    run(project, "git", "tag", "base")
    commit(project, 32, 66.7, ["Answer 0.", "Answer 1.", "Answer 2."])

    text = re.sub(" +", " ", run(project, sys.executable, "-m", "slothline.comment", "--base", "base", "--samples", "2"))
    assert text.startswith("## Slothline: this change against `base`")
    assert "| metrics/eval.json | tuned.exact_match | 50.0 | 66.7 | 16.7 |" in text  # DVC's table, spaces squeezed
    assert "| params.yaml | lora.r | 16 | 32 |" in text and "lora.alpha" not in text  # changed params only
    assert "![Base vs tuned](metrics/eval.png)" in text and "![Training loss](metrics/loss.png)" in text
    assert "1 of 3 answers changed." in text
    same = re.sub(" +", " ", run(project, sys.executable, "-m", "slothline.comment", "--base", "HEAD"))
    assert "No metric changed." in same and "No param changed." in same and "0 of 3 answers changed." in same
    answers = text.split("### Answers")[1]
    assert answers.index("| Question 1? | Answer 1. | Wrong. | Answer 1. |") < answers.index("| Question 0?")
    assert "Question 2?" not in answers  # two samples asked for
